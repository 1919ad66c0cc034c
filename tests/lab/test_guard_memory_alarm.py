"""memory-alarm: RabbitMQ blocks publishers; a guarded publish fails clearly and in time.

A real RabbitNode on loopback. ``set_vm_memory_high_watermark 0.0000001``
raises the memory alarm (restored to 0.4 in a finalizer). Measured here, not
assumed:

- stock kombu, no confirms: ``publish`` returns "ok" at once, the message is
  not queued (held by the broker's flow control until the alarm clears);
- stock kombu with ``confirm_publish=True``: ``publish`` blocks until the
  alarm clears (forever, for a web request);
- stock aio-pika ``exchange.publish``: waits until the alarm clears;
- guarded kombu (``hangproof.kombu:Transport``), guarded Celery
  (``harden``) and ``hangproof.aio.publish``: raise ``BrokerBlocked`` within
  ``publish_timeout`` (the first on a fresh connection as soon as the
  broker's connection.blocked arrives, later ones at once, without I/O);
- a guarded worker stays healthy while publishers are blocked;
- after the alarm clears, guarded publishing works again and the task runs.

Processes are started and stopped by pid; every wait is bounded. Every client
dials the broker's TLS listener with ``HANGPROOF_LAB_TLS=1`` (guard_workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from guard_workers import LAB_TLS, aio_url, broker, health, kombu_connection, start_worker
from kombu import Exchange, Producer, Queue

from hangproof.celery import harden
from hangproof.failure import Policy
from hangproof.guard.transport import BrokerBlocked, PublishError
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import processes

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

STALL = 3.0
POLICY = Policy(stall_timeout=STALL)
PUBLISH_TIMEOUT = float(POLICY.publish_timeout or 0)
SLACK = 2.0  # scheduling slack on a loaded 2-core box
ALARM_WATERMARK = "0.0000001"
NORMAL_WATERMARK = "0.4"  # what RabbitNode configures


def alarm_active(node: RabbitNode) -> bool:
    return "memory" in node.ctl("eval", "rabbit_alarm:get_alarms().", timeout=30)


def wait_alarm(node: RabbitNode, active: bool, limit: float = 30) -> None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if alarm_active(node) == active:
            return
        time.sleep(0.25)
    raise AssertionError(f"memory alarm still {'off' if active else 'on'} after {limit} s")


@pytest.fixture
def memory_alarm(rabbit: RabbitNode) -> Iterator[RabbitNode]:
    rabbit.ctl("set_vm_memory_high_watermark", ALARM_WATERMARK, timeout=30)
    try:
        wait_alarm(rabbit, True)
        yield rabbit
    finally:
        rabbit.ctl("set_vm_memory_high_watermark", NORMAL_WATERMARK, timeout=30)


def queue_depth(node: RabbitNode, name: str) -> int:
    for line in node.ctl("list_queues", "name", "messages", timeout=30).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return int(parts[1])
    return -1


def wait_for(predicate, limit: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {limit} s")


def timed_publish(
    producer: Producer, queue: Queue, body: str
) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        producer.publish(
            body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
        )
    except Exception as exc:  # measured: which error, after how long
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


async def aio_under_alarm(url: str) -> dict[str, str]:
    """Stock aio-pika publish vs hangproof.aio.publish on a blocked broker (measured)."""
    import aio_pika

    from hangproof.aio import connect_robust, publish

    out: dict[str, str] = {}
    stock = await aio_pika.connect_robust(url)
    guarded = await connect_robust(url, POLICY)
    try:
        stock_channel = await stock.channel()
        started = time.monotonic()
        pending = asyncio.ensure_future(
            stock_channel.default_exchange.publish(aio_pika.Message(b"x"), "aio-stock")
        )
        done, _ = await asyncio.wait({pending}, timeout=PUBLISH_TIMEOUT + SLACK)
        out["stock aio-pika publish"] = (
            f"returned {pending.result()!r} after {time.monotonic() - started:.2f} s"
            if done and not pending.exception()
            else f"still waiting after {time.monotonic() - started:.1f} s"
            if not done
            else f"{pending.exception()!r}"
        )
        stock_hangs = not done
        pending.cancel()

        channel = await guarded.channel()
        for label in ("guarded aio-pika, fresh", "guarded aio-pika, again"):
            started = time.monotonic()
            with pytest.raises(PublishError) as raised:
                await publish(channel, aio_pika.Message(b"x"), "aio-guard", POLICY)
            elapsed = time.monotonic() - started
            out[label] = f"{raised.value!r} after {elapsed:.3f} s"
            assert elapsed < PUBLISH_TIMEOUT + SLACK
        # The first publish taught aiormq that the connection is blocked.
        assert isinstance(raised.value, BrokerBlocked) and elapsed < 0.5, out
        assert stock_hangs, out
    finally:
        for connection in (stock, guarded):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await connection.close()
    return out


def test_memory_alarm_guarded_publish_fails_clearly(
    rabbit: RabbitNode, memory_alarm: RabbitNode, tmp_path: Path
) -> None:
    report: dict[str, str] = {}
    pid, port, ledger, log = start_worker(rabbit, tmp_path, "memq", stall=STALL, concurrency=2)
    stock_plain = kombu_connection(rabbit)
    stock_confirm = kombu_connection(rabbit, transport_options={"confirm_publish": True})
    guarded = kombu_connection(
        rabbit,
        transport="hangproof.kombu:Transport",
        transport_options={"publish_timeout": PUBLISH_TIMEOUT},
    )
    stock_confirm_result: dict[str, float | BaseException | None] = {}
    try:
        wait_for(lambda: health(port)[0] == 200, 60, "worker healthy")
        exchange = Exchange("", type="direct")

        # -- stock kombu, no confirms: "ok" at once, nothing queued -----------
        q_plain = Queue("stock-plain", exchange=exchange, routing_key="stock-plain")
        elapsed, error = timed_publish(Producer(stock_plain.channel()), q_plain, "x")
        report["stock kombu (no confirms)"] = f"returned ok after {elapsed:.2f} s"
        assert error is None and elapsed < 1.0
        time.sleep(1)
        assert queue_depth(rabbit, "stock-plain") == 0  # not queued: the "ok" was not true

        # -- stock kombu with confirms: blocks (measured for publish_timeout + slack)
        q_confirm = Queue("stock-confirm", exchange=exchange, routing_key="stock-confirm")
        stock_confirm.connect()
        stock_producer = Producer(stock_confirm.channel())

        def stock_publish() -> None:
            stock_confirm_result["elapsed"], stock_confirm_result["error"] = timed_publish(
                stock_producer, q_confirm, "x"
            )

        stock_thread = threading.Thread(target=stock_publish, daemon=True)
        stock_started = time.monotonic()
        stock_thread.start()

        # -- guarded kombu -----------------------------------------------------
        q_guard = Queue("guard-kombu", exchange=exchange, routing_key="guard-kombu")
        guard_producer = Producer(guarded.channel())
        first, first_error = timed_publish(guard_producer, q_guard, "first")
        again, again_error = timed_publish(guard_producer, q_guard, "again")
        report["guarded kombu, fresh connection"] = f"{first_error!r} after {first:.2f} s"
        report["guarded kombu, blocked connection"] = f"{again_error!r} after {again:.3f} s"
        assert isinstance(first_error, BrokerBlocked), first_error
        assert first < PUBLISH_TIMEOUT + SLACK
        assert isinstance(again_error, BrokerBlocked), again_error
        assert again < 0.5
        assert "low on memory" in str(again_error) and "refused after 0.0 s" in str(again_error)

        # -- guarded Celery ----------------------------------------------------
        url, ssl_options = broker(rabbit)
        app = Celery("memalarm", broker=url, set_as_current=False)
        app.conf.broker_use_ssl = ssl_options
        harden(app, POLICY)
        for label in ("guarded celery, fresh connection", "guarded celery, blocked connection"):
            started = time.monotonic()
            with pytest.raises(PublishError) as raised:
                app.send_task("hangproof.record", args=("during",), queue="memq")
            elapsed = time.monotonic() - started
            report[label] = f"{raised.value!r} after {elapsed:.3f} s"
            assert isinstance(raised.value, BrokerBlocked)
            assert elapsed < PUBLISH_TIMEOUT + SLACK

        # -- aio-pika: stock publish (confirms, no timeout) vs hangproof.aio.publish
        report.update(asyncio.run(aio_under_alarm(aio_url(rabbit))))

        # -- a consumer is not unhealthy because publishers are blocked --------
        code, body = health(port)
        report["guarded worker /healthz during alarm"] = f"{code} blocked={body.get('blocked')}"
        assert code == 200

        # The stock confirmed publish is still waiting, well past the guard's bound.
        time.sleep(max(0.0, PUBLISH_TIMEOUT + SLACK - (time.monotonic() - stock_started)))
        if LAB_TLS and not stock_thread.is_alive():
            # Over TLS stock py-amqp leaves connect_timeout (kombu's 5 s) on the
            # SSL socket, so the wait for the confirm ends in a read timeout:
            # not a hang, but later than the guard's bound and no clear error.
            elapsed = stock_confirm_result["elapsed"]
            assert isinstance(stock_confirm_result["error"], TimeoutError), stock_confirm_result
            assert isinstance(elapsed, float) and elapsed > PUBLISH_TIMEOUT + SLACK
            report["stock kombu (confirm_publish)"] = f"TimeoutError after {elapsed:.1f} s"
        else:
            assert stock_thread.is_alive(), stock_confirm_result
            report["stock kombu (confirm_publish)"] = (
                f"still blocked after {time.monotonic() - stock_started:.1f} s"
            )
    finally:
        rabbit.ctl("set_vm_memory_high_watermark", NORMAL_WATERMARK, timeout=30)

    try:
        wait_alarm(rabbit, False)
        healed = time.monotonic()
        # -- after the alarm: guarded publishing works again, the task runs ----
        ok, ok_error = timed_publish(guard_producer, q_guard, "after")
        report["guarded kombu after heal"] = f"{ok_error!r} after {ok:.3f} s"
        assert ok_error is None and ok < PUBLISH_TIMEOUT
        app.send_task("hangproof.record", args=("after",), queue="memq")
        ran = wait_for(lambda: ledger.has_run("after"), 30, "task ran")
        report["guarded celery task after heal"] = f"executed {ran:.1f} s after send"
        stock_thread.join(30)
        report["stock kombu (confirm_publish) returned"] = (
            f"{time.monotonic() - stock_started:.1f} s after publish "
            f"({time.monotonic() - healed:.1f} s after heal)"
        )
        assert not stock_thread.is_alive()
        # What happened to the messages that were sent before connection.blocked
        # arrived (the error says "may still queue it when the alarm clears").
        time.sleep(1)
        report["queued after heal (stock-plain, guard-kombu)"] = (
            f"{queue_depth(rabbit, 'stock-plain')}, {queue_depth(rabbit, 'guard-kombu')}"
        )
        assert queue_depth(rabbit, "stock-plain") == 1
    finally:
        for connection in (stock_plain, stock_confirm, guarded):
            connection.release()
        processes.stop_pid(pid)
        print(json.dumps(report, indent=1))
        print(log.read_text()[-2000:] if log.exists() else "")
