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


class _FakeExchange:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[tuple[str, object]] = []

    async def publish(self, message: object, routing_key: str, *, timeout: float) -> str:
        self.calls.append((routing_key, timeout))
        await asyncio.sleep(self.delay)  # a broker that never confirms
        return "ack"


def _real_channel(blocked: bool) -> object:
    """A real aio-pika RobustChannel on a real (unconnected) guarded connection.

    Only aio-pika's public ``transport`` slot is filled in by hand (with a
    real aiormq Connection): the private names ``publish`` reads (the
    channel's ``_connection``, aiormq's blocked Event) are the real
    libraries' own, so a rename upstream fails here and in
    ``upstream.check``, not in a fake that has the old name.
    """
    import types

    import aio_pika
    import aiormq
    from aio_pika.connection import make_url

    from hangproof.aio import GuardedRobustConnection
    from hangproof.guard import upstream

    connection = GuardedRobustConnection(make_url("amqp://guest:guest@127.0.0.1:1/"))
    link = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")
    if not blocked:  # aiormq sets it when its reader starts, clears it on connection.blocked
        getattr(link, upstream._AIORMQ_UNBLOCKED).set()
    connection.transport = types.SimpleNamespace(connection=link)
    return aio_pika.RobustChannel(connection)


def test_aio_publish_refuses_while_blocked_and_bounds_the_confirm() -> None:
    from hangproof.aio import publish
    from hangproof.guard.errors import BrokerBlocked, PublishTimeout

    policy = Policy(stall_timeout=3, publish_timeout=0.5)

    async def main() -> None:
        exchange = _FakeExchange(delay=0)
        with pytest.raises(BrokerBlocked, match=r"publish refused after 0\.0 s"):
            await publish(_real_channel(blocked=True), object(), "q", policy, exchange=exchange)
        assert exchange.calls == []  # nothing written

        silent = _FakeExchange(delay=30)
        started = time.monotonic()
        with pytest.raises(PublishTimeout):
            await publish(_real_channel(blocked=False), object(), "q", policy, exchange=silent)
        assert time.monotonic() - started < 0.5 + 1.0
        assert silent.calls == [("q", 0.5)]

        ok = _FakeExchange(delay=0)
        channel = _real_channel(blocked=False)
        assert await publish(channel, object(), "q", policy, exchange=ok) == "ack"

    asyncio.run(main())


@pytest.mark.timeout(15)
def test_connect_robust_is_bounded_by_default() -> None:
    """No ``max_retries``: the first connect still gives up after ``recover_timeout``."""
    policy = Policy(stall_timeout=3, handshake_deadline=0.5, recover_timeout=2.0)
    with dripping_peer(send_start=False) as host:
        elapsed = _fails_within_deadline(f"amqp://guest:guest@{host}/", policy)
    assert 2.0 - 0.6 <= elapsed < 2.0 + 1.5


@pytest.mark.timeout(15)
def test_connect_robust_give_up_after_none_keeps_retrying() -> None:
    """``give_up_after=None`` is stock aio-pika's "forever": still retrying at 3 s."""
    policy = Policy(stall_timeout=3, handshake_deadline=0.5, recover_timeout=1.0)

    async def main() -> bool:
        with dripping_peer(send_start=False) as host:
            task = asyncio.ensure_future(
                connect_robust(f"amqp://guest:guest@{host}/", policy, give_up_after=None)
            )
            await asyncio.sleep(3.0)
            still_trying = not task.done()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return still_trying

    assert asyncio.run(main())


def test_aio_publish_refuses_a_confirm_that_routed_nowhere() -> None:
    """The queue-deleted fault: aio-pika returns the basic.return as if it were a success."""
    import aiormq.abc
    from aiormq.abc import spec
    from pamqp.header import ContentHeader

    from hangproof.aio import publish
    from hangproof.guard.errors import PublishUnroutable

    returned = aiormq.abc.DeliveredMessage(
        delivery=spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="q"),
        header=ContentHeader(),
        body=b"[]",
        channel=None,  # type: ignore[arg-type]
    )

    class ReturningExchange(_FakeExchange):
        async def publish(self, message: object, routing_key: str, *, timeout: float) -> object:
            self.calls.append((routing_key, timeout))
            return returned

    async def main() -> None:
        exchange = ReturningExchange(delay=0)
        with pytest.raises(PublishUnroutable, match="to no queue"):
            await publish(
                _real_channel(blocked=False),
                object(),
                "q",
                Policy(stall_timeout=3),
                exchange=exchange,
            )
        assert exchange.calls == [("q", 1.5)]

    asyncio.run(main())
