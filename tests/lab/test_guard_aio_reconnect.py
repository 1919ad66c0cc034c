"""aio watchdog across reconnects: two broker freezes in a row, each noticed within stall_timeout.

A real RabbitMQ on loopback (the ``rabbit`` fixture). The broker's Erlang VM
is frozen with SIGSTOP (its kernel still ACKs, so TCP stays up and only the
frames stop: the broker-freeze fault), then resumed with SIGCONT, twice.
``hangproof.aio.connect_robust`` must notice *each* freeze within
``stall_timeout`` and be back (a publish is confirmed and read back) after
each resume.

aiormq's own check would fire only after 3 x (heartbeat + 1) = 12 s here, so
a detection within ``stall_timeout`` (6 s) is the guard's watchdog. Before
the fix it was cancelled by the first lost link (aio-pika runs
``close_callbacks`` on every link it loses), so the second freeze went
unnoticed for 12 s.

Every wait is bounded; SIGCONT runs in ``finally``. About 40 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from guard_workers import aio_url

from hangproof.failure import Policy
from hangproof.lab.components.rabbitmq import RabbitNode

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

STALL = 6.0
POLICY = Policy(stall_timeout=STALL)
#: The watchdog acts at silence_limit (4.8 s) of silence, looked at every
#: 0.6 s: within STALL by design. A loaded 2-core box may add a scheduler
#: delay, no more.
SLACK = 1.0
#: aio-pika retries every reconnect_interval (5 s) with attempts bounded by
#: handshake_deadline (3 s) while the broker is frozen.
RESUME_BOUND = 30.0


async def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.1)
    return condition()


async def _round_trip(channel, queue_name: str, body: bytes) -> bool:
    """Publish with a confirm (bounded), then read the message back (bounded)."""
    import aio_pika

    from hangproof.aio import publish

    await publish(channel, aio_pika.Message(body), queue_name, POLICY)
    queue = await channel.get_queue(queue_name)
    for _ in range(20):
        message = await queue.get(no_ack=True, fail=False, timeout=POLICY.publish_timeout)
        if message is not None:
            return message.body == body
        await asyncio.sleep(0.1)
    return False


async def _two_freezes(rabbit: RabbitNode) -> list[dict[str, float]]:
    from hangproof.aio import connect_robust

    beam = rabbit.beam_pid()
    assert beam is not None
    connection = await connect_robust(aio_url(rabbit), POLICY)  # amqps:// with HANGPROOF_LAB_TLS=1
    rounds: list[dict[str, float]] = []
    try:
        channel = await connection.channel()
        await channel.declare_queue("aio-reconnect", durable=False)
        assert await _round_trip(channel, "aio-reconnect", b"before")
        for number in (1, 2):
            seen = len(connection.hangproof_events)
            frozen_at = time.monotonic()
            os.kill(beam, signal.SIGSTOP)
            try:
                detected = await _wait_for(
                    lambda seen=seen: any(
                        e["kind"] == "stall-detected"
                        for e in list(connection.hangproof_events)[seen:]
                    ),
                    STALL + 10,
                )
                detect = next(
                    (
                        e["monotonic"] - frozen_at
                        for e in list(connection.hangproof_events)[seen:]
                        if e["kind"] == "stall-detected"
                    ),
                    float("inf"),
                )
            finally:
                os.kill(beam, signal.SIGCONT)
            resumed_at = time.monotonic()
            back = await _wait_for(
                lambda seen=seen: any(
                    e["kind"] == "reconnected" for e in list(connection.hangproof_events)[seen:]
                ),
                RESUME_BOUND,
            )
            ok = back and await _round_trip(channel, "aio-reconnect", f"after {number}".encode())
            rounds.append(
                {
                    "freeze": number,
                    "detected": detected,
                    "detect_seconds": round(detect, 2),
                    "resume_seconds": round(time.monotonic() - resumed_at, 2),
                    "round_trip_ok": ok,
                }
            )
    finally:
        os.kill(beam, signal.SIGCONT)
        await asyncio.wait_for(connection.close(), timeout=10)
    return rounds


def test_aio_watchdog_notices_two_freezes_in_a_row(rabbit: RabbitNode) -> None:
    rounds = asyncio.run(_two_freezes(rabbit))
    print("aio two freezes:", rounds)
    assert len(rounds) == 2
    for measured in rounds:
        assert measured["detected"], measured
        assert measured["detect_seconds"] <= STALL + SLACK, measured
        assert measured["round_trip_ok"], measured
