"""Teardown on a possibly dead connection never blocks (issue 8, item 2), against a local fake broker.

The fake broker completes the handshake, opens channels and confirms
consumers, then, when ``silent``, never answers Channel.Close,
Connection.Close or Basic.Cancel: what a client sees behind a middle box
that dropped the flow. Stock py-amqp waits ``read_timeout`` for each of
them; the guard gives all of a connection's teardown ``teardown_timeout``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import amqp
import pytest
from fake_amqp import client_frames, serving
from kombu import Connection
from pamqp import commands, frame

from hangproof.guard import transport as guard_transport
from hangproof.guard.transport import GuardConnection, TeardownTimeout

SLACK = 1.0  # scheduling slack on a loaded 2-core box
TEARDOWN = 0.5


@contextlib.contextmanager
def fake_broker(*, silent: bool) -> Iterator[tuple[str, list[str]]]:
    """(host, the method names it received); answers closes only when not ``silent``."""
    stop = threading.Event()
    received: list[str] = []

    def send(conn: socket.socket, channel: int, method: object) -> None:
        conn.sendall(frame.marshal(method, channel))

    def session(conn: socket.socket, born: float) -> None:
        conn.settimeout(5)
        conn.recv(8)  # the protocol header
        conn.settimeout(0.1)
        send(conn, 0, commands.Connection.Start(server_properties={}, mechanisms="PLAIN"))
        for channel, name, value in client_frames(conn, stop, born):
            received.append(name)
            answers = {
                "Connection.StartOk": commands.Connection.Tune(0, 131072, 0),
                "Connection.Open": commands.Connection.OpenOk(),
                "Channel.Open": commands.Channel.OpenOk(),
            }
            if not silent:
                answers["Channel.Close"] = commands.Channel.CloseOk()
                answers["Connection.Close"] = commands.Connection.CloseOk()
            if name == "Basic.Consume":
                send(conn, channel, commands.Basic.ConsumeOk(value.consumer_tag or "ctag"))
            elif name in answers:
                send(conn, channel, answers[name])
        conn.close()

    with serving(session, stop) as port:
        yield f"127.0.0.1:{port}", received


def _timed(call: object) -> float:
    started = time.monotonic()
    call()  # type: ignore[operator]
    return time.monotonic() - started


def test_stock_pyamqp_waits_read_timeout_for_channel_close_ok() -> None:
    """The hazard: each Close-Ok wait costs read_timeout on a dead flow."""
    with fake_broker(silent=True) as (host, _):
        conn = amqp.Connection(host=host, read_timeout=2.0, connect_timeout=5)
        conn.connect()
        try:
            channel = conn.channel()
            started = time.monotonic()
            with pytest.raises(OSError):
                channel.close()
            assert time.monotonic() - started >= 2.0 - 0.1
        finally:
            conn.collect()


def test_kombu_release_on_a_silent_broker_takes_teardown_timeout_in_all() -> None:
    """Channel close + connection close (kombu's release) share one teardown_timeout."""
    with fake_broker(silent=True) as (host, received):
        conn = Connection(
            f"amqp://guest:guest@{host}//",
            transport="hangproof.kombu:Transport",
            transport_options={"teardown_timeout": TEARDOWN, "read_timeout": 10},
        )
        conn.default_channel  # noqa: B018  # connects and opens the default channel
        amqp_conn = conn.connection
        elapsed = _timed(conn.release)
    assert elapsed < TEARDOWN + SLACK, elapsed
    assert "Channel.Close" in received  # it did try, gracefully
    assert amqp_conn.abandoned and amqp_conn._transport is None


def test_connection_older_than_a_path_fault_is_abandoned_without_a_close_frame() -> None:
    with fake_broker(silent=True) as (host, received):
        conn = GuardConnection(host=host, teardown_timeout=5.0, read_timeout=10)
        conn.connect()
        channel = conn.channel()
        guard_transport.note_path_fault("test: heartbeats missed")
        assert conn.may_be_dead()
        elapsed = _timed(channel.close) + _timed(conn.close)
        time.sleep(0.2)  # let the fake read whatever was sent
    assert elapsed < 0.5, elapsed
    assert "Channel.Close" not in received and "Connection.Close" not in received, received
    assert conn._transport is None


def test_connection_made_after_the_fault_closes_gracefully() -> None:
    guard_transport.note_path_fault("test: an earlier fault")
    with fake_broker(silent=False) as (host, received):
        conn = GuardConnection(host=host, teardown_timeout=TEARDOWN)
        conn.connect()
        assert not conn.may_be_dead()
        channel = conn.channel()
        channel.close()
        conn.close()
    assert "Channel.Close" in received and "Connection.Close" in received, received
    assert not conn.abandoned


def test_basic_cancel_without_cancel_ok_is_bounded_and_abandons() -> None:
    """kombu#670: basic_cancel hangs forever waiting for Cancel-Ok."""
    with fake_broker(silent=True) as (host, _):
        conn = GuardConnection(host=host, teardown_timeout=TEARDOWN, read_timeout=10)
        conn.connect()
        channel = conn.channel()
        tag = channel.basic_consume("q", consumer_tag="c1", callback=lambda m: None)
        started = time.monotonic()
        with pytest.raises(TeardownTimeout):
            channel.basic_cancel(tag)
        elapsed = time.monotonic() - started
    assert TEARDOWN - 0.1 <= elapsed < TEARDOWN + SLACK, elapsed
    assert conn.abandoned and conn._transport is None


def test_teardown_leaves_the_per_frame_path_stock() -> None:
    """The bounded drain is installed only while tearing down."""
    with fake_broker(silent=False) as (host, _):
        conn = GuardConnection(host=host, teardown_timeout=TEARDOWN)
        conn.connect()
        try:
            assert "drain_events" not in conn.__dict__
            with conn.teardown_bound(swallow=True, closing=False):
                assert "drain_events" in conn.__dict__
            assert "drain_events" not in conn.__dict__
            assert conn.sock.gettimeout() is None  # py-amqp's blocking mode, restored
        finally:
            conn.close()


def test_guard_state_marks_older_connections_on_link_faults_only() -> None:
    """A link fault makes older connections abandon on close; ResourceLocked does not."""
    from hangproof.failure import Policy
    from hangproof.guard.runtime import GuardState
    from hangproof.guard.watchdog import Detection

    state = GuardState(Policy(stall_timeout=3))
    older = GuardConnection(host="127.0.0.1:1")
    older.connected_at = time.monotonic()
    time.sleep(0.01)
    state.on_connection_error(OSError("405"), Detection.RESOURCE_LOCKED)
    assert not older.may_be_dead()
    state.on_connection_error(OSError("missed"), Detection.HEARTBEAT_MISSED)
    assert older.may_be_dead()
    newer = GuardConnection(host="127.0.0.1:1")
    time.sleep(0.01)
    newer.connected_at = time.monotonic()
    assert not newer.may_be_dead()
