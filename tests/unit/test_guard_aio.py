"""hangproof.aio.connect_robust: a handshake deadline aio-pika lacks."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
from pathlib import Path

import pytest

from hangproof.aio import connect_robust
from hangproof.failure import Backoff, Policy

# The fake peer lives next door; tests/unit is not a package.
_spec = importlib.util.spec_from_file_location(
    "_guard_transport_peer", Path(__file__).with_name("test_guard_transport.py")
)
assert _spec and _spec.loader
_peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_peer)
dripping_peer = _peer.dripping_peer


def _fails_within_deadline(url: str, policy: Policy) -> float:
    """Run connect_robust to failure; return the elapsed time, check nothing leaks."""

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises((TimeoutError, OSError, ConnectionError)):
            await connect_robust(url, policy)
        elapsed = time.monotonic() - started
        # No reconnect task of a failed attempt may outlive it: aio-pika's
        # swallows cancellation, so a leaked one would hang asyncio.run().
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert not others, others
        return elapsed

    return asyncio.run(main())


@pytest.mark.timeout(15)
def test_connect_robust_gives_up_on_a_silent_listener() -> None:
    """The incident's port-holder: TCP accepted, the AMQP header never answered."""
    policy = Policy(stall_timeout=3, handshake_deadline=1.0, backoff=Backoff(max_retries=1))
    with dripping_peer(send_start=False) as host:
        elapsed = _fails_within_deadline(f"amqp://guest:guest@{host}/", policy)
    # two attempts of 1.0 s plus one backoff of 0.5 s, plus generous slack
    assert elapsed < 2 * 1.0 + 0.5 + 1.5


@pytest.mark.timeout(15)
def test_connect_robust_gives_up_on_a_listener_that_never_accepts() -> None:
    """kube-proxy's NodePort holder: the kernel completes TCP, nobody ever accepts."""
    policy = Policy(stall_timeout=3, handshake_deadline=1.0, backoff=Backoff(max_retries=1))
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        host, port = listener.getsockname()
        elapsed = _fails_within_deadline(f"amqp://guest:guest@{host}:{port}/", policy)
    finally:
        listener.close()
    assert elapsed < 2 * 1.0 + 0.5 + 1.5


def test_aiormq_still_has_the_frame_clock() -> None:
    """Fails when aiormq renames the private frame clock the watchdog reads."""
    import aiormq.connection

    source = open(aiormq.connection.__file__).read()
    assert "self.__last_frame_time = self.loop.time()" in source


class _FakeExchange:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[tuple[str, object]] = []

    async def publish(self, message: object, routing_key: str, *, timeout: float) -> str:
        self.calls.append((routing_key, timeout))
        await asyncio.sleep(self.delay)  # a broker that never confirms
        return "ack"


class _FakeChannel:
    """Shaped like aio-pika's channel -> RobustConnection -> aiormq Connection."""

    def __init__(self, delay: float, blocked: bool) -> None:
        self.default_exchange = _FakeExchange(delay)
        unblocked = asyncio.Event()
        if not blocked:
            unblocked.set()
        amqp = type("Amqp", (), {"_Connection__connection_unblocked": unblocked})()
        transport = type("T", (), {"connection": amqp})()
        self.connection = type("C", (), {"transport": transport})()


def test_aio_publish_refuses_while_blocked_and_bounds_the_confirm() -> None:
    from hangproof.aio import publish
    from hangproof.guard.transport import BrokerBlocked, PublishTimeout

    policy = Policy(stall_timeout=3, publish_timeout=0.5)

    async def main() -> None:
        blocked = _FakeChannel(delay=0, blocked=True)
        with pytest.raises(BrokerBlocked, match=r"publish refused after 0\.0 s"):
            await publish(blocked, object(), "q", policy)
        assert blocked.default_exchange.calls == []  # nothing written

        silent = _FakeChannel(delay=30, blocked=False)
        started = time.monotonic()
        with pytest.raises(PublishTimeout):
            await publish(silent, object(), "q", policy)
        assert time.monotonic() - started < 0.5 + 1.0
        assert silent.default_exchange.calls == [("q", 0.5)]

        ok = _FakeChannel(delay=0, blocked=False)
        assert await publish(ok, object(), "q", policy) == "ack"

    asyncio.run(main())
