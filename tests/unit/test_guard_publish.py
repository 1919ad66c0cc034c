"""Guarded publishes: BrokerBlocked at once while blocked, PublishTimeout within the bound.

The fake broker completes the handshake, opens a channel, accepts
Confirm.Select, then never confirms and only sends heartbeats, as a broker
under flow control does. py-amqp's per-read ``confirm_timeout`` is reset by
every heartbeat; the guard's total deadline is not.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import amqp
import pytest
from amqp import spec
from amqp.serialization import dumps
from pamqp import commands, frame, heartbeat

from hangproof.failure import Policy
from hangproof.guard import transport
from hangproof.guard.runtime import GuardState
from hangproof.guard.transport import BrokerBlocked, GuardChannel, GuardConnection, PublishTimeout

SLACK = 1.0


def test_policy_publish_timeout_defaults_to_handshake_deadline() -> None:
    assert Policy(stall_timeout=15).publish_timeout == 7.5
    assert Policy(stall_timeout=15, publish_timeout=2).publish_timeout == 2
    with pytest.raises(ValueError):
        Policy(publish_timeout=0)


def test_blocked_frame_reason_is_recorded_and_cleared() -> None:
    events: list[tuple[str, str]] = []
    listener = lambda event, reason, _id: events.append((event, reason))  # noqa: E731
    transport.blocked_listeners.append(listener)
    try:
        conn = GuardConnection(host="127.0.0.1:1")
        payload = b"\x00\x0a\x00\x3c" + dumps("s", ["low on memory"])  # class 10, method 60
        conn.dispatch_method(spec.Connection.Blocked, payload, None)
        assert conn.blocked_reason == "low on memory"
        conn.dispatch_method(spec.Connection.Unblocked, b"", None)
        assert conn.blocked_reason is None
    finally:
        transport.blocked_listeners.remove(listener)
    assert events == [("blocked", "low on memory"), ("unblocked", "low on memory")]


def test_publish_while_blocked_fails_at_once_without_io() -> None:
    conn = GuardConnection(host="127.0.0.1:1")  # never connected: no socket at all
    conn.channels = {}
    channel = GuardChannel(conn, channel_id=1)
    conn.blocked_reason = "low on memory"
    for publish in (channel.basic_publish_confirm, GuardChannel.basic_publish.__get__(channel)):
        started = time.monotonic()
        with pytest.raises(BrokerBlocked) as raised:
            publish(amqp.Message("x"), "", "q")
        assert time.monotonic() - started < 0.1
        assert str(raised.value) == (
            "broker blocked publishing: low on memory (connection.blocked); "
            "publish refused after 0.0 s"
        )
    assert conn._transport is None


def test_consumer_connection_can_opt_out_of_refusal() -> None:
    conn = GuardConnection(host="127.0.0.1:1", refuse_when_blocked=False)
    conn.channels = {}
    channel = GuardChannel(conn, channel_id=1)
    conn.blocked_reason = "low on memory"
    channel._hp_refuse_if_blocked(time.monotonic())  # no raise


def test_guard_state_reports_blocked_but_stays_healthy() -> None:
    state = GuardState(Policy(stall_timeout=3))
    state.on_connected(object())
    state.on_blocked_event("blocked", "low on memory", 1)
    health = state.health()
    assert health["blocked"]["reason"] == "low on memory"
    assert state.check().healthy
    samples = {s.name: s.value for m in state.registry.collect() for s in m.samples}
    assert samples["hangproof_broker_blocked"] == 1.0
    assert samples["hangproof_broker_blocked_events_total"] == 1.0
    state.on_blocked_event("unblocked", "low on memory", 1)
    assert state.health()["blocked"] is None


@contextlib.contextmanager
def unconfirming_broker() -> Iterator[str]:
    """Handshake, channel, Confirm.Select-Ok; then only heartbeats, never Basic.Ack."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def send(conn: socket.socket, channel: int, method: object) -> None:
        conn.sendall(frame.marshal(method, channel))

    def serve() -> None:
        born = time.monotonic()
        conn = None
        while conn is None and not stop.is_set() and time.monotonic() - born < 30:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
        if conn is None:
            return
        conn.settimeout(5)
        conn.recv(8)  # the protocol header
        conn.settimeout(0.1)  # then a heartbeat every 0.1 s of client silence
        buf = b""
        send(conn, 0, commands.Connection.Start(server_properties={}, mechanisms="PLAIN"))
        while not stop.is_set() and time.monotonic() - born < 30:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                send(conn, 0, heartbeat.Heartbeat())  # keep per-read timeouts alive
                continue
            except OSError:
                break
            if not data:
                break
            buf += data
            while buf:
                try:
                    used, channel, value = frame.unmarshal(buf)
                except Exception:
                    break  # incomplete frame
                buf = buf[used:]
                name = getattr(value, "name", "")
                if name == "Connection.StartOk":
                    send(conn, 0, commands.Connection.Tune(0, 131072, 0))
                elif name == "Connection.Open":
                    send(conn, 0, commands.Connection.OpenOk())
                elif name == "Channel.Open":
                    send(conn, channel, commands.Channel.OpenOk())
                elif name == "Confirm.Select":
                    send(conn, channel, commands.Confirm.SelectOk())
                # Basic.Publish and its content: never confirmed.
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_publish_without_confirm_times_out_despite_heartbeats() -> None:
    with unconfirming_broker() as host:
        conn = GuardConnection(host=host, publish_timeout=1.0, handshake_deadline=5.0)
        conn.connect()
        try:
            channel = conn.channel()
            started = time.monotonic()
            with pytest.raises(PublishTimeout, match="no publisher confirm"):
                # py-amqp's own confirm_timeout (per read) would never fire here.
                channel.basic_publish(amqp.Message("x"), "", "q", confirm_timeout=5)
            elapsed = time.monotonic() - started
        finally:
            conn.collect()
    assert 1.0 <= elapsed < 1.0 + SLACK, elapsed


def test_a_revived_channel_leaves_confirm_mode_on_every_py_amqp() -> None:
    # py-amqp 5.2.0-5.4.1 reopen a channel the broker closed without clearing
    # _confirm_selected (5.4.2 clears it); the guard clears it on all of them,
    # and its delivery-tag ledger with it (the broker restarts tags at 1).
    conn = GuardConnection(host="127.0.0.1:1")
    conn.channels = {}
    channel = GuardChannel(conn, channel_id=1)
    reopened: list[bool] = []
    channel.open = lambda: reopened.append(True)  # type: ignore[method-assign]
    channel._confirm_selected = True
    channel._hp_next_tag = channel._hp_acked_upto = 7
    channel._do_revive()
    assert reopened == [True]
    assert channel._confirm_selected is False
    assert (channel._hp_next_tag, channel._hp_acked_upto) == (0, 0)
