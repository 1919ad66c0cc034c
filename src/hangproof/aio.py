"""``hangproof.aio.connect_robust``: aio-pika's robust connection with a handshake deadline.

aio-pika 10.2.1 / aiormq 7.2.4 have no deadline on the AMQP handshake: against
the incident's port-holder, ``connect_robust`` waits forever (INCIDENT.md).
This wrapper:

- passes ``timeout=policy.handshake_deadline`` to aio-pika, which keeps it for
  every *reconnect* too (RobustConnection stores the connect timeout and
  aio-pika wraps aiormq's whole connect in ``asyncio.wait_for``);
- also bounds the first connect with ``asyncio.timeout`` over everything,
  retrying with the policy's backoff; a failed attempt's connection is
  closed, so its background reconnect task cannot outlive the call;
- gives up on the *first* connection after ``give_up_after`` seconds in all
  (default ``policy.recover_timeout``, 4 x stall_timeout = 60 s), raising
  ``TimeoutError``: bounded by default. ``give_up_after=None`` retries
  forever, as ``aio_pika.connect_robust`` does;
- runs a heartbeat-silence watchdog for the connection's whole life, across
  reconnects: if no frame arrives from the broker for ``stall_timeout``, the
  current link is closed so the robust reconnect begins; each detection and
  reconnect is kept in ``connection.hangproof_events``.

Needs aio-pika (and its aiormq), not kombu or Celery. Private aiormq and
aio-pika names are read through :mod:`hangproof.guard.upstream` and checked
when :func:`connect_robust` or :func:`publish` first runs: an aiormq that
renamed them raises ``UpstreamChanged`` instead of a watchdog that goes quiet.

Consuming: :func:`consume` starts a consumer whose acks survive the broker
closing the channel under a running task (``406 PRECONDITION_FAILED``,
``consumer_timeout``: celery#6760, aio-pika#612) or the link going away (a
frozen process the broker dropped for missed heartbeats: celery#4980,
py-amqp#396). The usual ``async with message.process()`` inside ``async for``
raises ``ChannelInvalidStateError`` / ``ConnectionError`` from the ack in
that case and ends the consumer (measured: the process exits); aio-pika's
robust channel would have restored the consumer by itself.

Publishing: aio-pika channels use publisher confirms by default, but aiormq
waits *forever* for connection.unblocked before it writes a publish, and for
the confirm unless given a timeout. :func:`publish` bounds both by
``policy.publish_timeout`` and raises ``BrokerBlocked`` at once while the
broker blocks the connection (a memory or disk alarm), logging
``hangproof.guard: broker-blocked`` (the guard's notice of the alarm).
:func:`publish_once` bounds a publish that must connect first (connect,
channel, confirm, close) by the same ``publish_timeout`` as a whole.

    >>> import asyncio
    >>> from hangproof.aio import connect_robust
    >>> async def main():
    ...     connection = await connect_robust("amqp://guest:guest@127.0.0.1/")
    ...     async with connection:
    ...         channel = await connection.channel()
    >>> asyncio.run(main())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aio_pika.connection import make_url
from aio_pika.robust_connection import RobustConnection

from hangproof.failure import Policy
from hangproof.guard import upstream
from hangproof.guard.errors import BrokerBlocked, PublishTimeout, PublishUnroutable

if TYPE_CHECKING:
    from hangproof.guard.aio_health import HealthServer

logger = logging.getLogger("hangproof.guard")

__all__ = [
    "GuardedRobustConnection",
    "connect_robust",
    "consume",
    "publish",
    "publish_once",
    "serve_health",
]

#: Events kept per connection (``hangproof_events``); bounded in memory.
MAX_EVENTS = 200


class GuardedRobustConnection(RobustConnection):
    """aio-pika RobustConnection carrying the guard's policy and its watchdog.

    ``hangproof_events`` lists what the watchdog saw, oldest first: dicts with
    ``kind`` (``stall-detected``, ``reconnected``), ``at`` (wall clock),
    ``monotonic`` and details. The watchdog lives until :meth:`close`.
    """

    hangproof_policy: Policy = Policy()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hangproof_events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.hangproof_watchdog: asyncio.Task[None] | None = None

    def hangproof_event(self, kind: str, **detail: Any) -> None:
        """Record (and log) one watchdog event."""
        self.hangproof_events.append(
            {"kind": kind, "at": time.time(), "monotonic": time.monotonic(), **detail}
        )
        logger.warning("hangproof.guard: %s %s", kind, detail)

    async def close(self, *args: Any, **kwargs: Any) -> None:
        # The watchdog must outlive every reconnect (aio-pika runs
        # close_callbacks on each lost link), so it stops here, on the
        # user's close only.
        watchdog, self.hangproof_watchdog = self.hangproof_watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        await super().close(*args, **kwargs)


def _current_link(connection: RobustConnection) -> Any:
    """The aiormq connection aio-pika uses now, or None while it reconnects."""
    transport = connection.transport  # aio-pika: None between two links
    return None if transport is None else transport.connection


async def _silence_watchdog(connection: GuardedRobustConnection, policy: Policy) -> None:
    """Close a link that has been silent for ``stall_timeout``, on every link in turn.

    Runs until the connection is closed by its user (cancelled in
    :meth:`GuardedRobustConnection.close`), across any number of reconnects.
    """
    interval = float(policy.watchdog_interval or 1.0)
    loop = asyncio.get_running_loop()
    closing: set[asyncio.Task[Any]] = set()
    while not connection.is_closed:
        await asyncio.sleep(interval)
        try:
            link = _current_link(connection)
            if link is None or link.is_closed:
                continue  # reconnecting: aio-pika bounds each attempt by the deadline
            age = loop.time() - upstream.aiormq_last_frame_time(link)
            # silence_limit leaves room for this loop's own period: detection
            # happens within stall_timeout, not one interval after it.
            if age <= policy.silence_limit:
                continue
            connection.hangproof_event(
                "stall-detected", detection="link-silent", silent_seconds=round(age, 3)
            )
            # Closing a link whose broker is frozen sends Close and waits for
            # Close-Ok (aiormq bounds that by ~2 s). It runs as its own task,
            # never cancelled half-way: a cancelled close could leave the
            # link neither open nor closed, and aio-pika would not reconnect.
            task = loop.create_task(
                link.close(ConnectionError(f"no frame from the broker for {age:.1f} s"))
            )
            closing.add(task)
            task.add_done_callback(closing.discard)
            await asyncio.wait({task}, timeout=float(policy.handshake_deadline or 7.5))
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad round must not end the watchdog
            logger.exception("hangproof.guard: aio watchdog round failed")


#: make_url()'s keywords; aio_pika.connect_robust passes the rest to both.
_URL_KEYS = ("host", "port", "login", "password", "virtualhost", "ssl", "ssl_options")
#: Keywords only the connection class takes.
_CLASS_KEYS = ("loop", "ssl_context", "client_properties")


async def _connect_once(
    url: str,
    connection_class: type[GuardedRobustConnection],
    deadline: float,
    kwargs: dict,
    *,
    bound: float | None = None,
) -> GuardedRobustConnection:
    """One first-connect attempt that cannot outlive ``deadline``.

    ``aio_pika.connect_robust`` hides the connection it builds, so a timeout
    around it leaks the connection's reconnect task: that task keeps dialling
    every ``reconnect_interval`` and swallows the CancelledError of
    ``asyncio.run``'s shutdown (aio-pika 10.2.1 ``__connection_factory``),
    which then never returns. Built here as aio-pika builds it, the
    connection is closed (reconnect task cancelled and awaited) whenever the
    attempt fails, times out or is cancelled.
    """
    url_kwargs = {k: kwargs[k] for k in _URL_KEYS if k in kwargs}
    class_kwargs = {k: kwargs[k] for k in _CLASS_KEYS if k in kwargs}
    rest = {k: v for k, v in kwargs.items() if k not in _URL_KEYS and k not in _CLASS_KEYS}
    connection = connection_class(make_url(url, **url_kwargs, **rest), **class_kwargs, **rest)
    try:
        async with asyncio.timeout(deadline if bound is None else min(deadline, bound)):
            # aio-pika also bounds aiormq's connect by ``timeout`` and keeps
            # it for every later reconnect.
            await connection.connect(timeout=deadline)
    except BaseException:
        await _close_quietly(connection, deadline)
        raise
    return connection


async def _close_quietly(connection: RobustConnection, deadline: float) -> None:
    """Close a connection whose first connect failed; bounded, never raises."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(deadline):
            await connection.close()


#: ``give_up_after``'s default: the policy's ``recover_timeout``.
RECOVER_TIMEOUT: Any = object()


async def connect_robust(
    url: str,
    policy: Policy | None = None,
    *,
    give_up_after: float | None = RECOVER_TIMEOUT,
    **kwargs: Any,
) -> GuardedRobustConnection:
    """Like ``aio_pika.connect_robust``, but no step can wait forever.

    **Bounded by default.** The first connection is retried with
    ``policy.backoff`` (each attempt bounded by ``handshake_deadline``) for at
    most ``give_up_after`` seconds in all, default ``policy.recover_timeout``
    (60 s at ``stall_timeout=15``), then ``TimeoutError``; also after
    ``backoff.max_retries`` attempts, if set. Pass ``give_up_after=None`` to
    retry forever (stock aio-pika's behaviour). Once connected, reconnects
    are aio-pika's, each bounded by ``handshake_deadline``, forever, with the
    silence watchdog on every link. The heartbeat is the policy's.

        >>> async def main():
        ...     connection = await connect_robust(url, Policy(stall_timeout=15))
        ...     async with connection:
        ...         ...  # a frozen broker is noticed within 15 s, link after link
    """
    upstream.check("aiormq")
    upstream.check("aio-pika")
    policy = policy or Policy()
    connection_class = type(
        "GuardedRobustConnection", (GuardedRobustConnection,), {"hangproof_policy": policy}
    )
    kwargs.setdefault("heartbeat", policy.heartbeat)
    deadline = float(policy.handshake_deadline or 7.5)
    if give_up_after is RECOVER_TIMEOUT:
        give_up_after = float(policy.recover_timeout or 4 * policy.stall_timeout)
    loop = asyncio.get_running_loop()
    give_up_at = None if give_up_after is None else loop.time() + give_up_after
    attempt = 0
    while True:
        try:
            bound = deadline if give_up_at is None else min(deadline, give_up_at - loop.time())
            connection = await _connect_once(
                url, connection_class, deadline, kwargs, bound=max(0.001, bound)
            )
            break
        except (TimeoutError, OSError, ConnectionError) as exc:
            retries = policy.backoff.max_retries
            if retries is not None and attempt >= retries:
                raise
            delay = policy.backoff.delay(attempt)
            if give_up_at is not None and loop.time() + delay >= give_up_at:
                raise TimeoutError(
                    f"hangproof.aio.connect_robust: no broker connection within "
                    f"{give_up_after:g} s ({attempt + 1} attempts; last: {type(exc).__name__}); "
                    "pass give_up_after=None to retry forever"
                ) from exc
            logger.warning("hangproof.guard: connect failed (%r); retrying in %.1f s", exc, delay)
            attempt += 1
            await asyncio.sleep(delay)
    connection.reconnect_callbacks.add(
        lambda *_: connection.hangproof_event("reconnected")  # type: ignore[attr-defined]
    )
    connection.hangproof_watchdog = loop.create_task(_silence_watchdog(connection, policy))
    return connection  # type: ignore[return-value]


#: How often publish() looks for connection.blocked while it waits (seconds).
_BLOCKED_POLL = 0.05


def _blocked(channel: Any) -> bool:
    """True when aiormq has seen connection.blocked and not yet unblocked.

    aiormq keeps it in a private Event (no public accessor), read through
    :mod:`hangproof.guard.upstream`, which raises ``UpstreamChanged`` if it
    is gone rather than saying "not blocked".
    """
    link = upstream.aio_channel_link(channel)
    return link is not None and upstream.aiormq_blocked(link)


def _returned(result: Any) -> bool:
    """Whether a publish's result is the broker's ``basic.return`` (unroutable), not a confirm."""
    import aiormq.abc
    from aiormq.abc import spec

    return isinstance(result, aiormq.abc.DeliveredMessage) and isinstance(
        result.delivery, spec.Basic.Return
    )


async def publish(
    channel: Any,
    message: Any,
    routing_key: str,
    policy: Policy | None = None,
    *,
    exchange: Any = None,
    **kwargs: Any,
) -> Any:
    """Publish with a confirm, within ``policy.publish_timeout``; never hang.

    ``channel`` is an aio-pika channel (publisher confirms on, the default);
    ``exchange`` defaults to the channel's default exchange. Raises
    :class:`~hangproof.guard.errors.BrokerBlocked` at once while the broker
    blocks the connection, :class:`~hangproof.guard.errors.PublishTimeout`
    when no confirm arrives in time (the message may or may not be queued),
    :class:`~hangproof.guard.errors.PublishUnroutable` when the broker
    confirms it but routes it to no queue (aio-pika's mandatory publish
    hands back the returned message instead of raising, unless the channel
    has ``on_return_raises``; a deleted queue would otherwise be a false ok).

    This bounds the publish on a channel you already hold. A publish that
    also has to connect (a short-lived process, a web request without a
    pooled connection) is :func:`publish_once`: bounded as a whole.
    """
    upstream.check("aiormq")
    upstream.check("aio-pika")
    connection = upstream.aio_channel_connection(channel)
    policy = policy or getattr(connection, "hangproof_policy", None) or Policy()
    limit = float(policy.publish_timeout or 7.5)
    return await _bounded_publish(channel, message, routing_key, limit, exchange, **kwargs)


async def _bounded_publish(
    channel: Any, message: Any, routing_key: str, limit: float, exchange: Any, **kwargs: Any
) -> Any:
    """:func:`publish`'s body: the write and the confirm within ``limit`` seconds."""
    reason = "connection blocked by the broker (aiormq)"
    if _blocked(channel):
        _log_blocked(reason)
        raise BrokerBlocked.refused(reason, 0.0)
    target = exchange if exchange is not None else channel.default_exchange
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.ensure_future(
        target.publish(message, routing_key, timeout=max(limit, 0.001), **kwargs)
    )
    try:
        # Bounded by ``limit``: look every 50 ms whether the broker blocked
        # us meanwhile (then fail now, not at the deadline).
        while True:
            remaining = started + limit - loop.time()
            if remaining <= 0:
                break
            done, _ = await asyncio.wait({task}, timeout=min(_BLOCKED_POLL, remaining))
            if done:
                try:
                    result = task.result()
                except TimeoutError:
                    break
                if _returned(result):
                    raise PublishUnroutable(
                        f"the broker routed the publish to {routing_key!r} to no queue "
                        "(basic.return: is the queue declared?)"
                    )
                return result
            if _blocked(channel):
                _log_blocked(reason)
                raise BrokerBlocked.refused(reason, loop.time() - started, sent=True)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if _blocked(channel):
        _log_blocked(reason)
        raise BrokerBlocked.refused(reason, loop.time() - started, sent=True)
    raise PublishTimeout(
        f"no publisher confirm from the broker within {limit:.1f} s; "
        "the message may or may not be queued"
    )


def _log_blocked(reason: str) -> None:
    """The guard noticed connection.blocked (the same line as the kombu transport's)."""
    logger.warning("hangproof.guard: broker-blocked: %s (connection.blocked)", reason)


#: Closes :func:`publish_once` stopped waiting for; kept so they finish, never cancelled.
_closing: set[asyncio.Task[Any]] = set()


async def publish_once(
    url: str,
    message: Any,
    routing_key: str,
    policy: Policy | None = None,
    *,
    exchange: str | None = None,
    exchange_type: str = "direct",
    durable: bool = True,
    **kwargs: Any,
) -> Any:
    """Connect, publish one message with a confirm, close: all within ``publish_timeout``.

    The whole call, not only the confirm, is bounded by
    ``policy.publish_timeout`` (``stall_timeout / 2``): :func:`connect_robust`
    gives up on the first connection within it (instead of its default
    ``recover_timeout``, 4 x stall_timeout, meant for a consumer), and the
    channel, the exchange declaration (``exchange``, if given: declared
    ``exchange_type``/``durable``; else the default exchange) and
    :func:`publish` share what is left. Outcomes:

    - the broker's confirm: returned (the message is queued);
    - :class:`~hangproof.guard.errors.PublishTimeout`: no connection, channel
      or confirm in time (a failed connect: the message was not sent);
    - :class:`~hangproof.guard.errors.BrokerBlocked` or
      :class:`~hangproof.guard.errors.PublishUnroutable`, as from
      :func:`publish`; any other error of the connect (e.g. a broker that is
      no AMQP broker) as it is.

    The connection is closed before returning, for at most what is left of
    the budget; a close the broker does not answer in time (a blocked or
    frozen broker) goes on in the background and the result is returned.
    ``kwargs`` go to :func:`connect_robust`.

        >>> await publish_once(url, aio_pika.Message(b"x"), "tasks", Policy(stall_timeout=15),
        ...                    exchange="tasks")  # doctest: +SKIP
    """
    upstream.check("aiormq")
    upstream.check("aio-pika")
    policy = policy or Policy()
    limit = float(policy.publish_timeout or 7.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + limit
    connection: GuardedRobustConnection | None = None
    try:
        try:
            connection = await connect_robust(url, policy, give_up_after=limit, **kwargs)
            async with asyncio.timeout_at(deadline):
                channel = await connection.channel()
                target = None
                if exchange is not None:
                    target = await channel.declare_exchange(
                        exchange, exchange_type, durable=durable
                    )
        except (TimeoutError, OSError, ConnectionError) as exc:
            step = "connection" if connection is None else "channel"
            # The time it actually took: a connect refused at once (or given up
            # before the next backoff step) returns well before the limit.
            raise PublishTimeout(
                f"no broker {step} after {loop.time() - started:.1f} s (publish_timeout "
                f"{limit:.1f} s; {type(exc).__name__}); the message was not sent"
            ) from exc
        return await _bounded_publish(channel, message, routing_key, deadline - loop.time(), target)
    finally:
        if connection is not None:
            await _close_within(connection, max(0.05, deadline - loop.time()))


async def _close_within(connection: RobustConnection, seconds: float) -> None:
    """Close ``connection``, waiting at most ``seconds``; a slower close finishes on its own."""
    task = asyncio.ensure_future(connection.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
    await asyncio.wait({task}, timeout=seconds)


#: Errors of an ack or nack whose channel or link is gone: the broker has
#: already requeued the message (it redelivers it: at-least-once).
def _channel_gone_errors() -> tuple[type[BaseException], ...]:
    import aiormq.exceptions

    return (
        aiormq.exceptions.AMQPError,  # ChannelClosed, ConnectionClosed, MessageProcessError
        aiormq.exceptions.ChannelInvalidStateError,  # the message's channel is gone
        ConnectionError,
    )


async def settle(message: Any, *, ok: bool) -> bool:
    """Ack (``ok``) or requeue ``message``; False if its channel or link is gone.

    A message whose channel the broker closed (406 consumer_timeout,
    celery#6760) or whose link died is requeued by the broker already: the
    ack cannot and need not reach it. Logged as ``hangproof.guard:
    ack-lost``, never raised, so a consumer is not ended by it.
    """
    try:
        if ok:
            await message.ack()
        else:
            await message.nack(requeue=True)
    except _channel_gone_errors() as exc:
        logger.warning(
            "hangproof.guard: ack-lost %s",
            {"error": repr(exc)[:200], "delivery_tag": getattr(message, "delivery_tag", None)},
        )
        return False
    return True


async def consume(queue: Any, callback: Any, **kwargs: Any) -> Any:
    """Consume ``queue`` (a robust aio-pika queue): ``await callback(message)``, then ack.

    At-least-once: the ack is sent after ``callback`` returns; if it raises,
    the message is requeued. Where the usual ``async for message in
    queue.iterator()`` with ``message.process()`` *ends* (the ack raises
    once the broker closed the channel: 406 consumer_timeout, celery#6760;
    or the link: a frozen process dropped for missed heartbeats, celery#4980,
    py-amqp#396), this consumer keeps going: the failed ack is logged
    (:func:`settle`), the broker redelivers the message, and aio-pika's
    robust channel restores the consumer (after a channel close, a
    reconnect, or the broker's basic.cancel when the queue was deleted:
    aio-pika#612, kombu#814). Returns the consumer tag; ``kwargs`` go to
    ``queue.consume`` (``no_ack`` is refused: it would lose messages).

        >>> tag = await consume(queue, handle)  # doctest: +SKIP
    """
    if kwargs.get("no_ack"):
        raise ValueError(
            "hangproof.aio.consume acks after the callback; no_ack would lose messages"
        )

    async def on_message(message: Any) -> None:
        try:
            await callback(message)
        except asyncio.CancelledError:
            await settle(message, ok=False)
            raise
        except Exception:
            logger.exception("hangproof.guard: consumer callback failed; message requeued")
            await settle(message, ok=False)
            return
        await settle(message, ok=True)

    return await queue.consume(on_message, **kwargs)


async def serve_health(
    connection: RobustConnection,
    queues: Sequence[str] = (),
    *,
    port: int = 9808,
    host: str = "127.0.0.1",
    policy: Policy | None = None,
    url: str | None = None,
) -> HealthServer:
    """Serve the health contract of the consumer on ``connection``: a Celery worker's endpoints.

    ``connection`` is what :func:`connect_robust` returned (any aio-pika
    RobustConnection works; the silence watchdog's detections show only with
    the guarded one); ``queues``: the queues it consumes, by name. Answers on
    ``host:port`` (``port=0``: any free port, see ``.port``):

    - ``/livez`` 503 only when a restart helps: the event loop has not run for
      ``recover_timeout`` (measured from a thread, so a wedged loop is
      reported, not silenced), or the broker is reachable and yet a queue has
      no consumer or the canary does not come back for ``recover_timeout``;
      never while the broker is down;
    - ``/readyz`` 503 while aio-pika reconnects, the link is silent, the loop
      is late, or the broker is unreachable from a fresh connection;
    - ``/consumingz`` 200 only when the last probe round (every
      ``stall_timeout``, on its own short-lived connection) saw a consumer on
      every queue and its canary came back through this connection;
    - ``/metrics``: ``hangproof_live``, ``hangproof_ready``,
      ``hangproof_consuming{queue}``, ``hangproof_canary_round_trip_seconds``
      and the rest of the worker's gauges.

    The JSON is the worker's, so ``hangproof check-worker --port 9808 --probe
    liveness`` works against it. The endpoints answer from the last probe
    round and tick and never wait on the broker. ``policy``: the
    connection's (``connect_robust``'s) by default. ``url``: where the probe
    connects (default: the connection's own URL). Returns once the canary
    queue is consumed, or after ``handshake_deadline`` if it cannot be yet
    (broker down: retried every ``stall_timeout``). ``await handle.close()``
    (or ``async with``) stops it.

        >>> connection = await connect_robust(url, Policy(stall_timeout=15))  # doctest: +SKIP
        >>> health = await serve_health(connection, ["tasks"], port=9808)  # doctest: +SKIP
    """
    from hangproof.guard.aio_health import serve_health as _serve

    return await _serve(connection, queues, port=port, host=host, policy=policy, url=url)
