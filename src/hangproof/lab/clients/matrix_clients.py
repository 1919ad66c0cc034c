"""The fault matrix's kombu and aio-pika clients: small consumers and a one-shot publisher.

Each consumer is what a user typically writes, stock or with the guard, and
records every message it processes in the same ledger as the Celery cells
(a :class:`~hangproof.lab.clients.accounting.Ledger` directory), so published /
executed / lost are measured the same way. Messages are Celery's (protocol 2, JSON body ``[args, kwargs,
embed]``), published by the matrix's producer with ``send_task``; the key is
``args[0]``.

- ``kombu``: ``kombu.Connection(url)`` with its defaults (connect_timeout 5 s,
  no heartbeat), ``ensure_connection`` and a ``drain_events(timeout=1)`` loop (guard:
  every ``watchdog_interval``, and the transport's ``silence_limit``)
  with ``heartbeat_check()``; on a connection error it logs, releases and goes
  round again.
- ``kombu+guard``: the same loop on ``transport="hangproof.kombu:Transport"``
  with the policy's heartbeat and transport options.
- ``aio-pika``: ``aio_pika.connect_robust(url)`` and a queue iterator.
- ``aio-pika+guard``: :func:`hangproof.aio.connect_robust` and the guard's
  consumer, :func:`hangproof.aio.consume` (ack after the handler; a failed
  ack on a channel the broker closed does not end it).

A message whose args carry a second number (``hangproof.sleep_then_record(key,
seconds)``, the consumer-timeout fault's slow task) makes every consumer work
that long before it records and acks (:func:`message_seconds`).

Over TLS (``--cafile CA``, the URL ``amqps://``): kombu gets ``ssl={"ca_certs":
CA, "cert_reqs": CERT_REQUIRED}``, aio-pika the CA as aiormq's ``cafile`` query.

Log lines carry Celery's timestamp format, so the matrix reads detection the
same way for every profile::

    python -m hangproof.lab.clients.matrix_clients consume kombu URL QUEUE LEDGER --guard --stall 4
    python -m hangproof.lab.clients.matrix_clients publish aio-pika URL QUEUE KEY
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hangproof.failure import Policy
from hangproof.lab.clients.accounting import Ledger

KINDS = ("kombu", "aio-pika")
#: A consumer stops by itself after this long (the matrix stops it by pid first).
MAX_SECONDS = 3600.0
#: drain_events() wakes this often to run heartbeat_check() (kombu's own
#: ConsumerMixin uses 1 s too).
DRAIN_TIMEOUT = 1.0
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"

log = logging.getLogger("consumer")


def message_key(body: Any) -> str:
    """The task key of a Celery protocol-2 body (``[args, kwargs, embed]``).

    >>> message_key([["k1"], {}, {}]), message_key(b'[["k2"], {}, {}]')
    ('k1', 'k2')
    """
    if isinstance(body, bytes | str):
        body = json.loads(body)
    return str(body[0][0])


def message_seconds(body: Any) -> float:
    """How long a message asks its consumer to work: ``args[1]`` when given, else 0.

    The slow variant of ``hangproof.record`` (``hangproof.sleep_then_record(key,
    seconds)``, the consumer-timeout fault's task).

    >>> message_seconds([["k1"], {}, {}]), message_seconds(b'[["k2", 2.5], {}, {}]')
    (0.0, 2.5)
    """
    if isinstance(body, bytes | str):
        body = json.loads(body)
    args = body[0]
    return float(args[1]) if len(args) > 1 and isinstance(args[1], int | float) else 0.0


#: The CA that verifies the broker's TLS certificate (``--cafile``); None: plain.
CAFILE: str | None = None


def _kombu_ssl() -> dict[str, Any] | bool:
    import ssl

    return {"ca_certs": CAFILE, "cert_reqs": ssl.CERT_REQUIRED} if CAFILE else False


def kombu_connection(url: str, guarded: bool, stall: float) -> Any:
    """``kombu.Connection`` as the profile builds it (defaults, or the guard transport)."""
    from kombu import Connection

    if not guarded:
        return Connection(url, ssl=_kombu_ssl())
    from hangproof.celery import _guard_url, transport_options

    policy = Policy(stall_timeout=stall)
    # kombu's Connection.switch() re-parses a failover alternate and takes its
    # transport from the URL scheme, dropping transport= (measured: the 2nd
    # alternate of "amqp://a;amqp://b" is stock py-amqp); the guard's scheme
    # keeps the guard transport on every alternate, as harden() does for Celery.
    if ";" in url:
        url = ";".join(_guard_url(u) for u in url.split(";"))
    return Connection(
        url,
        ssl=_kombu_ssl(),
        transport="hangproof.kombu:Transport",
        heartbeat=policy.heartbeat,
        connect_timeout=policy.handshake_deadline,
        # kombu alone has no Celery watchdog: the guard transport's own
        # link-silence check (heartbeat_check() every watchdog_interval below).
        transport_options={**transport_options(policy), "silence_limit": policy.silence_limit},
    )


def _kombu_queue(name: str) -> Any:
    from kombu import Exchange, Queue

    # As Celery declares a queue named by send_task(queue=...).
    return Queue(name, Exchange(name, "direct"), routing_key=name)


def kombu_consume(url: str, queue: str, ledger_dir: str, guarded: bool, stall: float) -> None:
    """Consume ``queue`` until stopped (at most :data:`MAX_SECONDS`)."""
    ledger = Ledger(Path(ledger_dir))

    conn = kombu_connection(url, guarded, stall)
    # Guarded: heartbeat_check() at least every watchdog_interval, so the
    # transport's silence_limit is noticed within stall_timeout.
    drain_timeout = (
        min(DRAIN_TIMEOUT, Policy(stall_timeout=stall).watchdog_interval or DRAIN_TIMEOUT)
        if guarded
        else DRAIN_TIMEOUT
    )

    def on_message(body: Any, message: Any) -> None:
        time.sleep(message_seconds(body))  # a slow task blocks the loop, as a user's would
        ledger.record_executed(message_key(body))
        message.ack()

    deadline = time.monotonic() + MAX_SECONDS
    for _ in range(100_000):  # reconnect rounds, each bounded by the deadline
        if time.monotonic() > deadline:
            return
        try:
            conn.ensure_connection(
                errback=lambda exc, interval: log.warning(
                    "Cannot connect to amqp: %r; retrying in %.1f s", exc, interval
                ),
                max_retries=1000,
            )
            log.info("connected to %s", conn.as_uri())
            with conn.Consumer(_kombu_queue(queue), callbacks=[on_message], prefetch_count=1):
                log.info("consumer ready.")
                while time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=drain_timeout)
                    except TimeoutError:
                        conn.heartbeat_check()
        except conn.connection_errors + conn.channel_errors as exc:
            log.warning("consumer: Connection lost: %r", exc)
            conn.collect()  # drop the dead socket without waiting on it


def kombu_publish(
    url: str,
    queue: str,
    key: str,
    guarded: bool,
    stall: float,
    returned: list[float] | None = None,
) -> None:
    """Publish one Celery-shaped message with kombu's retry (3 retries).

    Guarded: the guard's producer (``hangproof.kombu.GuardProducer``):
    mandatory, and one ``publish_timeout`` over all the retries. ``returned``
    gets the moment publish returned or raised (before the connection's close).
    """
    with kombu_connection(url, guarded, stall) as conn:
        if guarded:
            from hangproof.kombu import GuardProducer

            producer = GuardProducer(conn)
        else:
            producer = conn.Producer()
        try:
            producer.publish(
                [[key], {}, {}],
                exchange=queue,
                routing_key=queue,
                serializer="json",
                declare=[_kombu_queue(queue)],
                retry=True,
                retry_policy={"max_retries": 3},
            )
        finally:
            if returned is not None:
                returned.append(time.monotonic())


def import_client(kind: str, guarded: bool) -> None:
    """Import the publish probe's client modules, so its clock times the publish only."""
    import importlib

    if kind == "kombu":
        names = ["kombu", *(["hangproof.celery", "hangproof.kombu"] if guarded else [])]
    else:
        names = ["aio_pika", *(["hangproof.aio"] if guarded else [])]
    for name in names:
        importlib.import_module(name)


async def _aio_connect(url: str, guarded: bool, stall: float) -> Any:
    if CAFILE:
        url = f"{url}?cafile={CAFILE}"
    if guarded:
        from hangproof.aio import connect_robust

        return await connect_robust(url, Policy(stall_timeout=stall))
    import aio_pika

    return await aio_pika.connect_robust(url)


async def _log_broker_cancels(channel: Any) -> None:
    """Log the broker's basic.cancel (queue deleted) on the channel's current link.

    aio-pika recovers from it silently (aio-pika 10.2.1 requests a recovery);
    the log line is how the matrix sees when the client noticed.
    """
    with contextlib.suppress(Exception):
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            lambda frame: log.warning("consumer: Consumer cancelled by the broker: %s", frame)
        )


async def aio_consume(url: str, queue: str, ledger_dir: str, guarded: bool, stall: float) -> None:
    """Consume ``queue`` with a robust connection until stopped (at most :data:`MAX_SECONDS`)."""
    ledger = Ledger(Path(ledger_dir))
    async with asyncio.timeout(MAX_SECONDS):
        connection = await _aio_connect(url, guarded, stall)
        connection.close_callbacks.add(
            lambda _sender, exc=None: log.warning("consumer: Connection lost: %r", exc)
        )
        connection.reconnect_callbacks.add(lambda *_: log.warning("consumer: reconnected"))
        log.info("connected to %s", url)
        channel = await connection.channel()
        channel.close_callbacks.add(
            lambda _sender, exc=None: log.warning("consumer: Channel closed: %r", exc)
        )
        await _log_broker_cancels(channel)
        channel.reopen_callbacks.add(lambda *_: asyncio.ensure_future(_log_broker_cancels(channel)))
        await channel.set_qos(prefetch_count=1)
        exchange = await channel.declare_exchange(queue, "direct", durable=True)
        amqp_queue = await channel.declare_queue(queue, durable=True)
        await amqp_queue.bind(exchange, routing_key=queue)
        if guarded:
            # The guard's consumer: its acks survive a channel or link the
            # broker closed (hangproof.aio.consume).
            from hangproof.aio import consume

            async def handle(message: Any) -> None:
                await asyncio.sleep(message_seconds(message.body))
                ledger.record_executed(message_key(message.body))

            await consume(amqp_queue, handle)
            log.info("consumer ready.")
            await asyncio.Event().wait()  # until stopped (bounded by MAX_SECONDS)
        async with amqp_queue.iterator() as messages:
            log.info("consumer ready.")
            async for message in messages:
                async with message.process():
                    await asyncio.sleep(message_seconds(message.body))
                    ledger.record_executed(message_key(message.body))


async def aio_publish(url: str, queue: str, key: str, guarded: bool, stall: float) -> None:
    """Publish one Celery-shaped message on a fresh connection."""
    import aio_pika

    message = aio_pika.Message(
        json.dumps([[key], {}, {}]).encode(), content_type="application/json"
    )
    if guarded:
        # The guard's one-shot publish: connect, confirm and close within
        # publish_timeout as a whole, refused at once while the broker blocks
        # publishers (connection.blocked).
        from hangproof.aio import publish_once

        if CAFILE:
            url = f"{url}?cafile={CAFILE}"
        await publish_once(url, message, queue, Policy(stall_timeout=stall), exchange=queue)
        return
    connection = await _aio_connect(url, guarded, stall)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(queue, "direct", durable=True)
        await exchange.publish(message, routing_key=queue)
    finally:
        await connection.close()


#: Set by the memory-alarm and disk-alarm faults (their ``configure()``): the
#: cell's consumer log, where a guarded publish's ``hangproof.guard`` lines go
#: too, so the matrix reads the guard's notice of the alarm as the detection.
EVENT_LOG_ENV = "HANGPROOF_EVENT_LOG"
EVENT_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def log_guard_events_to_cell(guarded: bool) -> None:
    """Send a guarded publish's ``hangproof.guard`` log lines to :data:`EVENT_LOG_ENV`'s file.

    Nothing for a stock client (it has no guard to notice anything) or when
    the fault did not set the variable. The Celery profiles' one-shot publish
    (the matrix's ``send_task`` probe) calls it too.
    """
    path = os.environ.get(EVENT_LOG_ENV)
    if not guarded or not path:
        return
    handler = logging.FileHandler(path)  # append mode; the consumer's log is O_APPEND too
    # Celery's worker format: the guard's lines already start "hangproof.guard:".
    handler.setFormatter(logging.Formatter(EVENT_LOG_FORMAT))
    guard = logging.getLogger("hangproof.guard")
    guard.addHandler(handler)
    guard.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """``consume KIND URL QUEUE LEDGER`` or ``publish KIND URL QUEUE KEY`` (``--guard``)."""
    parser = argparse.ArgumentParser(prog="matrix_clients")
    parser.add_argument("cmd", choices=("consume", "publish"))
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("arg", help="ledger directory (consume) or message key (publish)")
    parser.add_argument("--guard", action="store_true")
    parser.add_argument("--stall", type=float, default=15.0)
    parser.add_argument("--cafile", default=None, help="TLS: the CA of the broker's certificate")
    args = parser.parse_args(argv)
    global CAFILE
    CAFILE = args.cafile
    if args.cmd == "consume":
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout)
        if args.kind == "kombu":
            kombu_consume(args.url, args.queue, args.arg, args.guard, args.stall)
        else:
            asyncio.run(aio_consume(args.url, args.queue, args.arg, args.guard, args.stall))
        return 0
    log_guard_events_to_cell(args.guard)
    import_client(args.kind, args.guard)  # imports (celery, ~1-2 s loaded) are not the publish
    started = time.monotonic()
    # When the call returned: for aio-pika, before asyncio.run() joins the
    # default executor, which waits for a resolver thread stuck on an
    # unreachable DNS server (dns-stall) long after the call itself ended.
    returned: list[float] = []

    async def aio_call() -> None:
        try:
            await aio_publish(args.url, args.queue, args.arg, args.guard, args.stall)
        finally:
            returned.append(time.monotonic())

    try:
        if args.kind == "kombu":
            kombu_publish(args.url, args.queue, args.arg, args.guard, args.stall, returned)
        else:
            asyncio.run(aio_call())
    except Exception as exc:
        took = (returned[0] if returned else time.monotonic()) - started
        print(f"error {took:.1f}s {type(exc).__name__}: {exc}"[:200])
        return 1
    print(f"ok {(returned[0] if returned else time.monotonic()) - started:.1f}s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
