"""hangproof.aio.publish_once: connect + publish + close bounded by publish_timeout as a whole.

The fault matrix measured the guarded aio-pika publisher "ok after 39 s"
under a blackhole (publish_timeout 7.5 s): the one-shot publisher's
connect_robust retried for recover_timeout (60 s) before its bounded publish
even began. Against local fakes (no root, no network): a listener that never
answers the AMQP header, a closed port, and a broker that completes the
handshake but then never confirms, confirms, or blocks the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
from fake_amqp import client_frames, serving
from pamqp import commands, frame

from hangproof.aio import publish_once
from hangproof.failure import Policy
from hangproof.guard.errors import BrokerBlocked, PublishTimeout

# The silent listener lives next door; tests/unit is not a package.
_spec = importlib.util.spec_from_file_location(
    "_guard_transport_peer", Path(__file__).with_name("test_guard_transport.py")
)
assert _spec and _spec.loader
_peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_peer)
dripping_peer = _peer.dripping_peer

SLACK = 1.0  # scheduling slack on a loaded 2-core box
LIMIT = 1.5
POLICY = Policy(stall_timeout=4, publish_timeout=LIMIT)


#: What RabbitMQ announces; aiormq reads it (publisher confirms, connection.blocked).
SERVER = {
    "product": "fake",
    "capabilities": {
        "publisher_confirms": True,
        "basic.nack": True,
        "connection.blocked": True,
        "consumer_cancel_notify": True,
        "exchange_exchange_bindings": True,
        "authentication_failure_close": True,
        "per_consumer_qos": True,
    },
}


@contextlib.contextmanager
def fake_broker(mode: str) -> Iterator[tuple[str, list[str]]]:
    """A broker that handshakes, opens channels, selects confirms, declares exchanges.

    On Basic.Publish: ``silent`` never confirms (and never answers
    Connection.Close), ``confirm`` acks it, ``blocked`` sends
    Connection.Blocked instead (a memory alarm).
    """
    stop = threading.Event()
    received: list[str] = []

    def session(conn: socket.socket, born: float) -> None:
        def send(channel: int, method: object) -> None:
            conn.sendall(frame.marshal(method, channel))

        conn.settimeout(5)
        conn.recv(8)  # the protocol header
        conn.settimeout(0.1)
        send(0, commands.Connection.Start(server_properties=SERVER, mechanisms="PLAIN"))
        answers = {
            "Connection.StartOk": commands.Connection.Tune(0, 131072, 0),
            "Connection.Open": commands.Connection.OpenOk(),
            "Channel.Open": commands.Channel.OpenOk(),
            "Confirm.Select": commands.Confirm.SelectOk(),
            "Basic.Qos": commands.Basic.QosOk(),
            "Exchange.Declare": commands.Exchange.DeclareOk(),
            "Channel.Close": commands.Channel.CloseOk(),
        }
        if mode != "silent":
            answers["Connection.Close"] = commands.Connection.CloseOk()
        for channel, name, _value in client_frames(conn, stop, born):
            received.append(name)
            if name == "Basic.Publish" and mode == "confirm":
                send(channel, commands.Basic.Ack(delivery_tag=1))
            elif name == "Basic.Publish" and mode == "blocked":
                send(0, commands.Connection.Blocked(reason="low on memory"))
            elif name in answers:
                send(channel, answers[name])
        conn.close()

    with serving(session, stop) as port:
        yield f"127.0.0.1:{port}", received


def _publish(url: str) -> tuple[float, object]:
    """Run publish_once; (elapsed, result or the exception it raised)."""

    async def main() -> tuple[float, object]:
        started = time.monotonic()
        try:
            result: object = await publish_once(
                url, aio_pika.Message(b'[["k"], {}, {}]'), "q", POLICY, exchange="q"
            )
        except Exception as exc:
            result = exc
        return time.monotonic() - started, result

    return asyncio.run(main())


@pytest.mark.timeout(20)
def test_publish_once_gives_up_on_a_listener_that_never_answers_within_publish_timeout() -> None:
    """The blackhole / frozen broker at connect: error within publish_timeout, not recover_timeout."""
    with dripping_peer(send_start=False) as host:
        elapsed, result = _publish(f"amqp://guest:guest@{host}/")
    assert isinstance(result, PublishTimeout), result
    assert "not sent" in str(result)
    assert elapsed < LIMIT + SLACK


@pytest.mark.timeout(20)
def test_publish_once_against_a_closed_port_ends_within_publish_timeout() -> None:
    """A killed broker: connection refused, retried with backoff, given up within the budget."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    elapsed, result = _publish(f"amqp://guest:guest@127.0.0.1:{port}/")
    assert isinstance(result, PublishTimeout), result
    assert elapsed < LIMIT + SLACK


@pytest.mark.timeout(20)
def test_publish_once_without_a_confirm_ends_within_publish_timeout_close_included() -> None:
    """Connected, but no confirm and no Close-Ok: the whole call still ends in time."""
    with fake_broker("silent") as (host, received):
        elapsed, result = _publish(f"amqp://guest:guest@{host}/")
    assert isinstance(result, PublishTimeout), result
    assert "Basic.Publish" in received  # it did get as far as the publish
    assert elapsed < LIMIT + SLACK


@pytest.mark.timeout(20)
def test_publish_once_returns_the_confirm_and_closes() -> None:
    with fake_broker("confirm") as (host, received):
        elapsed, result = _publish(f"amqp://guest:guest@{host}/")
    assert not isinstance(result, Exception), result
    assert received.count("Basic.Publish") == 1
    assert "Connection.Close" in received
    assert elapsed < LIMIT + SLACK


@pytest.mark.timeout(20)
def test_publish_once_under_an_alarm_raises_broker_blocked_and_logs_the_notice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """connection.blocked after the publish: BrokerBlocked at once, and the guard's log line."""
    with caplog.at_level(logging.WARNING, logger="hangproof.guard"):
        with fake_broker("blocked") as (host, _):
            elapsed, result = _publish(f"amqp://guest:guest@{host}/")
    assert isinstance(result, BrokerBlocked), result
    assert elapsed < LIMIT + SLACK
    assert any("hangproof.guard: broker-blocked" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(20)
def test_publish_once_error_says_the_time_it_actually_took() -> None:
    """Given up before the limit (the next backoff step would pass it): the error names the
    elapsed time, not the limit (issue 10: "within 7.5 s" when it returned at 4.4 s)."""
    import re

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    policy = Policy(stall_timeout=4, publish_timeout=6.0)

    async def main() -> tuple[float, object]:
        started = time.monotonic()
        try:
            await publish_once(f"amqp://guest:guest@127.0.0.1:{port}/", aio_pika.Message(b"x"),
                               "q", policy)  # fmt: skip
        except Exception as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, None

    elapsed, result = asyncio.run(main())
    assert isinstance(result, PublishTimeout), result
    said = re.search(r"after (\d+\.\d) s", str(result))
    assert said, str(result)
    assert abs(float(said.group(1)) - elapsed) < 0.5, (str(result), elapsed)
    assert "publish_timeout 6.0 s" in str(result)
