"""hangproof.aio.consume: acks that survive a channel the broker closed (celery#6760, aio-pika#612).

Measured in the lab (fault-matrix consumer-timeout and client-freeze, aio-pika
10.2.1): the usual ``async with message.process()`` consumer exits when its
ack raises ``ChannelInvalidStateError`` (406 consumer_timeout closed the
channel) or ``ConnectionError`` (the guard closed a link the broker had
dropped). Here a fake message raises those from ack(); no broker, no root.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiormq.exceptions
import pytest

from hangproof.aio import consume, settle


class FakeMessage:
    def __init__(self, ack_error: BaseException | None = None) -> None:
        self.ack_error = ack_error
        self.delivery_tag = 7
        self.acked = 0
        self.requeued = 0

    async def ack(self) -> None:
        if self.ack_error is not None:
            raise self.ack_error
        self.acked += 1

    async def nack(self, requeue: bool = True) -> None:
        if self.ack_error is not None:
            raise self.ack_error
        assert requeue
        self.requeued += 1


class FakeQueue:
    def __init__(self) -> None:
        self.callback: Any = None
        self.kwargs: dict[str, Any] = {}

    async def consume(self, callback: Any, **kwargs: Any) -> str:
        self.callback, self.kwargs = callback, kwargs
        return "ctag1"


def _deliver(message: FakeMessage, handler: Any) -> FakeQueue:
    queue = FakeQueue()

    async def main() -> None:
        assert await consume(queue, handler, timeout=5) == "ctag1"
        await queue.callback(message)

    asyncio.run(main())
    return queue


async def _ok(message: Any) -> None:
    return None


@pytest.mark.parametrize(
    "error",
    [
        aiormq.exceptions.ChannelInvalidStateError(),  # 406: the message's channel is gone
        aiormq.exceptions.ChannelPreconditionFailed("406 PRECONDITION_FAILED"),
        ConnectionError("no frame from the broker for 10.0 s"),  # the link was closed
    ],
)
def test_a_failed_ack_on_a_gone_channel_does_not_end_the_consumer(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    message = FakeMessage(ack_error=error)
    with caplog.at_level(logging.WARNING, logger="hangproof.guard"):
        _deliver(message, _ok)  # would raise out of the callback without the guard
    assert "hangproof.guard: ack-lost" in caplog.text
    assert message.acked == 0


def test_ack_after_the_handler_and_requeue_when_it_fails() -> None:
    message = FakeMessage()
    queue = _deliver(message, _ok)
    assert (message.acked, message.requeued) == (1, 0)
    assert queue.kwargs == {"timeout": 5}

    async def boom(message: Any) -> None:
        raise ValueError("handler bug")

    failed = FakeMessage()
    _deliver(failed, boom)
    assert (failed.acked, failed.requeued) == (0, 1)


def test_settle_reports_whether_the_ack_reached_the_channel() -> None:
    assert asyncio.run(settle(FakeMessage(), ok=True)) is True
    gone = FakeMessage(ack_error=aiormq.exceptions.ChannelInvalidStateError())
    assert asyncio.run(settle(gone, ok=True)) is False


def test_other_ack_errors_are_not_swallowed() -> None:
    with pytest.raises(TypeError):
        asyncio.run(settle(FakeMessage(ack_error=TypeError("bug")), ok=True))


def test_no_ack_is_refused() -> None:
    with pytest.raises(ValueError, match="no_ack"):
        asyncio.run(consume(FakeQueue(), _ok, no_ack=True))
