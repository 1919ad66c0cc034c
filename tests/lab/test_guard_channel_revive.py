"""A channel the broker closed keeps publishing with confirms, on every supported py-amqp.

When the broker closes a channel with an error (a publish to an exchange
that does not exist: 404 NOT_FOUND), py-amqp reopens it (``_do_revive``).
py-amqp 5.2.0-5.4.1 reopen it without clearing ``_confirm_selected`` (py-amqp#285), so the
new channel is not in confirm mode while py-amqp thinks it is: every later
confirmed publish waits for a Basic.Ack that never comes. The guard bounds
the wait, so without the guard's reset each such publish would be a false
``PublishTimeout`` for a message the broker did queue (and a retry a
duplicate). Measured here on a real RabbitMQ on loopback; the compat matrix
(scripts/compat.py) runs the matching unit test on the oldest py-amqp.
"""

from __future__ import annotations

import time

import amqp
import pytest
from amqp.exceptions import NotFound

from hangproof.guard.transport import GuardConnection
from hangproof.lab.components.rabbitmq import RabbitNode

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

PUBLISH_TIMEOUT = 3.0


def test_confirmed_publish_after_a_channel_error_is_confirmed(rabbit: RabbitNode) -> None:
    conn = GuardConnection(
        host=f"{rabbit.host}:{rabbit.amqp_port}", publish_timeout=PUBLISH_TIMEOUT
    )
    conn.connect()
    try:
        channel = conn.channel()
        channel.queue_declare("revive-q", durable=False, auto_delete=False)
        channel.basic_publish_confirm(amqp.Message("before"), "", "revive-q")
        with pytest.raises(NotFound):
            # The broker closes the channel (404); py-amqp revives it.
            channel.basic_publish_confirm(amqp.Message("lost"), "no-such-exchange", "x")
        started = time.monotonic()
        channel.basic_publish_confirm(amqp.Message("after"), "", "revive-q")
        assert time.monotonic() - started < PUBLISH_TIMEOUT
        _, count, _ = channel.queue_declare("revive-q", passive=True)
        assert count == 2  # "before" and "after", both confirmed and queued
    finally:
        conn.collect()
