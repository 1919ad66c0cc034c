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
- runs a heartbeat-silence watchdog: if no frame arrives from the broker for
  ``stall_timeout``, the transport is closed so the robust reconnect begins.

Publishing: aio-pika channels use publisher confirms by default, but aiormq
waits *forever* for connection.unblocked before it writes a publish, and for
the confirm unless given a timeout. :func:`publish` bounds both by
``policy.publish_timeout`` and raises ``BrokerBlocked`` at once while the
broker blocks the connection (a memory or disk alarm).

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
from typing import Any

from aio_pika.connection import make_url
from aio_pika.robust_connection import RobustConnection

from hangproof.failure import Policy
from hangproof.guard.transport import BrokerBlocked, PublishTimeout

logger = logging.getLogger("hangproof.guard")

__all__ = ["GuardedRobustConnection", "connect_robust", "publish"]


class GuardedRobustConnection(RobustConnection):
    """aio-pika RobustConnection carrying the guard's policy."""

    hangproof_policy: Policy = Policy()


def _last_frame_age(connection: Any) -> float | None:
    # aiormq 7.2.4 stamps every received frame in the private
    # Connection.__last_frame_time (loop.time()); no public accessor exists.
    # Read defensively: if a later aiormq renames it, the watchdog goes quiet
    # (tests/unit/test_guard_aio.py fails) rather than firing falsely.
    transport = getattr(connection, "transport", None)
    amqp = getattr(transport, "connection", None)
    value = getattr(amqp, "_Connection__last_frame_time", None)
    if isinstance(value, int | float):
        return asyncio.get_running_loop().time() - value
    return None


async def _silence_watchdog(connection: GuardedRobustConnection, policy: Policy) -> None:
    """Close a link that has been silent for ``stall_timeout`` (bounded by connection life)."""
    interval = float(policy.watchdog_interval or 1.0)
    while not connection.is_closed:
        await asyncio.sleep(interval)
        age = _last_frame_age(connection)
        # silence_limit leaves room for this loop's own period: detection
        # happens within stall_timeout, not one interval after it.
        if age is not None and age > policy.silence_limit:
            logger.warning(
                "hangproof.guard: stall-detected link-silent: no frame for %.1f s; reconnecting",
                age,
            )
            transport = getattr(connection, "transport", None)
            amqp = getattr(transport, "connection", None)
            with contextlib.suppress(Exception):
                await amqp.close(ConnectionError(f"no frame from the broker for {age:.1f} s"))


#: make_url()'s keywords; aio_pika.connect_robust passes the rest to both.
_URL_KEYS = ("host", "port", "login", "password", "virtualhost", "ssl", "ssl_options")
#: Keywords only the connection class takes.
_CLASS_KEYS = ("loop", "ssl_context", "client_properties")


async def _connect_once(
    url: str, connection_class: type[GuardedRobustConnection], deadline: float, kwargs: dict
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
        async with asyncio.timeout(deadline):
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


async def connect_robust(
    url: str, policy: Policy | None = None, **kwargs: Any
) -> GuardedRobustConnection:
    """Like ``aio_pika.connect_robust``, but no step can wait forever.

    The first connection is retried with ``policy.backoff`` until it succeeds
    (or ``backoff.max_retries`` is exhausted). The heartbeat is the policy's.
    """
    policy = policy or Policy()
    connection_class = type(
        "GuardedRobustConnection", (GuardedRobustConnection,), {"hangproof_policy": policy}
    )
    kwargs.setdefault("heartbeat", policy.heartbeat)
    deadline = float(policy.handshake_deadline or 7.5)
    attempt = 0
    while True:
        try:
            connection = await _connect_once(url, connection_class, deadline, kwargs)
            break
        except (TimeoutError, OSError, ConnectionError) as exc:
            retries = policy.backoff.max_retries
            if retries is not None and attempt >= retries:
                raise
            delay = policy.backoff.delay(attempt)
            logger.warning("hangproof.guard: connect failed (%r); retrying in %.1f s", exc, delay)
            attempt += 1
            await asyncio.sleep(delay)
    task = asyncio.get_running_loop().create_task(_silence_watchdog(connection, policy))
    connection.close_callbacks.add(lambda *_: task.cancel())
    return connection  # type: ignore[return-value]


#: How often publish() looks for connection.blocked while it waits (seconds).
_BLOCKED_POLL = 0.05


def _channel_connection(channel: Any) -> Any:
    # aio-pika 10.2.1 keeps the channel's connection in ``_connection``.
    return getattr(channel, "connection", None) or getattr(channel, "_connection", None)


def _blocked(channel: Any) -> bool:
    """True when aiormq has seen connection.blocked and not yet unblocked.

    aiormq 7.2.4 keeps it in the private Event ``__connection_unblocked`` (no
    public accessor); if a later aiormq renames it, this says "not blocked"
    and the publish is still bounded by the timeout.
    """
    amqp = getattr(_channel_connection(channel), "transport", None)
    amqp = getattr(amqp, "connection", None)
    event = getattr(amqp, "_Connection__connection_unblocked", None)
    return isinstance(event, asyncio.Event) and not event.is_set()


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
    :class:`~hangproof.guard.transport.BrokerBlocked` at once while the broker
    blocks the connection, :class:`~hangproof.guard.transport.PublishTimeout`
    when no confirm arrives in time (the message may or may not be queued).
    """
    connection = _channel_connection(channel)
    policy = policy or getattr(connection, "hangproof_policy", None) or Policy()
    limit = float(policy.publish_timeout or 7.5)
    reason = "connection blocked by the broker (aiormq)"
    if _blocked(channel):
        raise BrokerBlocked.refused(reason, 0.0)
    target = exchange if exchange is not None else channel.default_exchange
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.ensure_future(target.publish(message, routing_key, timeout=limit, **kwargs))
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
                    return task.result()
                except TimeoutError:
                    break
            if _blocked(channel):
                raise BrokerBlocked.refused(reason, loop.time() - started, sent=True)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if _blocked(channel):
        raise BrokerBlocked.refused(reason, loop.time() - started, sent=True)
    raise PublishTimeout(
        f"no publisher confirm from the broker within {limit:.1f} s; "
        "the message may or may not be queued"
    )
