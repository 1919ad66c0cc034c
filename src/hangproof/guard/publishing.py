"""harden()'s publish path: one deadline over all retries, and no silent drop of an unroutable task.

Two things a stock Celery / kombu publish does not do:

- **One total deadline.** ``Producer.publish(retry=True, retry_policy=...)``
  retries each connection error ``max_retries`` times, and every attempt has
  its own handshake deadline and its own confirm wait; kombu also copies the
  retry policy into the connection's ``transport_options``, so the connection
  that ``publish`` opens for its channel retries ``max_retries`` times *inside*
  each outer attempt. Measured on the cluster-partition cell: an error after
  11-14 s with ``publish_timeout`` 7.5 s. Here one :class:`PublishDeadline`
  (``publish_timeout`` from the connection's transport options) bounds the
  whole call: every handshake and every confirm wait gets only what is left
  of it (the guard transport reads :func:`remaining`), and no retry sleeps
  past it (:func:`deadline_errback`, kombu's own ``errback`` hook, raises
  :class:`~hangproof.guard.errors.PublishTimeout` instead).
- **mandatory, and a Basic.Return is an error.** A publish to an exchange with
  no bound queue (the queue was deleted and nobody declared it again) is
  confirmed by the broker and dropped. :class:`GuardProducer` publishes with
  ``mandatory=True`` on a guarded, confirming connection, and the guard
  channel turns the broker's Basic.Return into
  :class:`~hangproof.guard.errors.PublishUnroutable` (the same class
  ``hangproof.aio`` raises), so the caller knows and can retry.

Celery publishes through ``app.amqp.producer_pool``; ``harden()``'s AMQP class
(:mod:`hangproof.guard.connection`) sets that pool's documented ``Producer``
attribute to :class:`GuardProducer`.

    >>> d = PublishDeadline(7.5, clock=lambda: 100.0)
    >>> d.remaining(), d.allows_sleep(7.0), d.allows_sleep(8.0)
    (7.5, True, False)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any

from kombu import Producer

from hangproof.credentials import mask_url
from hangproof.guard.errors import PublishError, PublishTimeout

__all__ = [
    "GuardProducer",
    "PublishDeadline",
    "bounded",
    "deadline_errback",
    "guarded_producer_class",
    "remaining",
]

#: The publish deadline of the current thread (greenlet under gevent's
#: monkey-patching: ``threading.local`` is patched).
_local = threading.local()


class PublishDeadline:
    """One publish call's deadline: ``limit`` seconds from now, on ``clock``."""

    def __init__(self, limit: float, *, clock: Callable[[], float] = monotonic) -> None:
        self.limit = float(limit)
        self.clock = clock
        self.at = clock() + self.limit
        self.retries = 0
        #: The last error of a connect made under this deadline (guard transport).
        self.last_error: BaseException | None = None

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def allows_sleep(self, seconds: float) -> bool:
        """Whether sleeping ``seconds`` and then trying again still starts before the deadline."""
        return self.clock() + max(0.0, float(seconds)) < self.at

    def expired_error(self, exc: BaseException | None) -> PublishTimeout:
        exc = exc if exc is not None else self.last_error
        last = f"; last error: {mask_url(repr(exc))}" if exc is not None else ""
        return PublishTimeout(
            f"publish not done within publish_timeout {self.limit:.1f} s "
            f"(all retries included, {self.retries} retry round(s)){last}"
        )

    def on_retry(self, exc: BaseException | None, interval: float) -> None:
        """kombu is about to sleep ``interval`` s and retry after ``exc``: raise if past the deadline."""
        self.retries += 1
        if not self.allows_sleep(interval):
            raise self.expired_error(exc) from exc


def current() -> PublishDeadline | None:
    """The deadline of the publish running in this thread (greenlet), if any."""
    return getattr(_local, "deadline", None)


def remaining(default: float) -> float:
    """``default``, or less: what is left of the current publish deadline.

    >>> remaining(5.0)
    5.0
    >>> with bounded(PublishDeadline(2.0, clock=lambda: 0.0)):
    ...     remaining(5.0)
    2.0
    """
    deadline = current()
    return default if deadline is None else min(default, deadline.remaining())


@contextlib.contextmanager
def bounded(deadline: PublishDeadline) -> Iterator[PublishDeadline]:
    """Make ``deadline`` the current one (a nested publish keeps the earlier of the two)."""
    outer = current()
    _local.deadline = deadline if outer is None or deadline.at < outer.at else outer
    try:
        yield _local.deadline
    finally:
        _local.deadline = outer


def deadline_errback(exc: BaseException, interval: float) -> None:
    """kombu's ``errback(exc, interval)``: no retry past the current publish deadline.

    A no-op outside a bounded publish: kombu copies a publish's retry policy
    into the connection's ``transport_options``, where its later connects
    read ``errback`` too.
    """
    deadline = current()
    if deadline is not None:
        deadline.on_retry(exc, interval)


def _chain(errback: Callable[..., Any] | None) -> Callable[..., Any]:
    if errback is None or errback is deadline_errback:
        return deadline_errback

    def chained(exc: BaseException, interval: float) -> Any:
        deadline_errback(exc, interval)
        return errback(exc, interval)

    chained.hangproof_chained = True  # type: ignore[attr-defined]
    return chained


def bounded_retry_policy(retry_policy: dict[str, Any] | None) -> dict[str, Any]:
    """``retry_policy`` whose ``errback`` also enforces the publish deadline.

    >>> bounded_retry_policy({"max_retries": 3})["errback"] is deadline_errback
    True
    """
    policy = dict(retry_policy or {})
    errback = policy.get("errback")
    if not getattr(errback, "hangproof_chained", False):
        policy["errback"] = _chain(errback)
    return policy


def publish_limit(connection: Any) -> float | None:
    """The ``publish_timeout`` of a guarded, confirming kombu connection (None: not guarded)."""
    options = getattr(connection, "transport_options", None) or {}
    limit = options.get("publish_timeout")
    if limit is None or not options.get("confirm_publish"):
        return None
    return float(limit)


def _exchange_type(producer: Any, kwargs: dict[str, Any]) -> str | None:
    """The type of the exchange a publish goes to, when the call says it (else None)."""
    target = kwargs.get("exchange")
    if target is None:
        target = getattr(producer, "exchange", None)
    kind = getattr(target, "type", None)
    if kind is not None:
        return str(kind)
    name = "" if target is None else str(target)
    for entity in kwargs.get("declare") or ():
        if getattr(entity, "name", None) == name and getattr(entity, "type", None) is not None:
            return str(entity.type)
    return None


def expects_a_queue(producer: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a publish is meant for a queue, so no queue taking it is an error (mandatory).

    Not so for a broadcast (a fanout exchange: Celery's ``control`` pidbox,
    e.g. ``inspect().ping()``, where no worker listening means "no replies",
    not a failure) nor for a pidbox reply (kombu marks it with a ``ticket``
    header, and drops it itself when "no one is expecting a reply"). Made
    mandatory, the broker returns them whenever no worker (or no caller) is
    there, and every ``inspect()`` / ``control`` call fails.

    >>> from kombu import Exchange
    >>> pidbox = Exchange("celery.pidbox", type="fanout")
    >>> expects_a_queue(None, {"exchange": "celery.pidbox", "declare": [pidbox]})
    False
    >>> expects_a_queue(None, {"exchange": "x", "headers": {"ticket": "t"}})
    False
    >>> expects_a_queue(None, {"exchange": "", "routing_key": "celery"})
    True
    """
    if _exchange_type(producer, kwargs) == "fanout":
        return False
    return "ticket" not in (kwargs.get("headers") or {})


class GuardProducer(Producer):
    """kombu's Producer: mandatory publishes, and one deadline over all retries.

    Mandatory only where a queue is expected (:func:`expects_a_queue`): not
    for broadcasts (fanout) nor control replies.

    Only on a connection with the guard's transport options
    (``publish_timeout`` and ``confirm_publish``: what ``harden()`` sets);
    elsewhere it is kombu's Producer unchanged.
    """

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        limit = publish_limit(self.connection)
        if limit is None:
            return super().publish(body, *args, **kwargs)
        # A returned message is an error (guard channel), never a silent drop;
        # but a broadcast or a control reply is not a task: no receiver is fine.
        if expects_a_queue(self, kwargs):
            kwargs.setdefault("mandatory", True)
        if kwargs.get("retry"):
            kwargs["retry_policy"] = bounded_retry_policy(kwargs.get("retry_policy"))
        with bounded(PublishDeadline(limit)) as deadline:
            try:
                return super().publish(body, *args, **kwargs)
            except PublishError:
                raise
            except Exception as exc:
                # Whatever kombu raised once the deadline had passed (e.g. its
                # connect loop's own timeout): one error type says why.
                if deadline.remaining() > 0:
                    raise
                raise deadline.expired_error(exc) from exc


def guarded_producer_class(base: type) -> type:
    """``base`` (a kombu Producer class) with :class:`GuardProducer`'s publish.

    >>> guarded_producer_class(Producer) is GuardProducer
    True
    """
    if base is Producer or issubclass(base, GuardProducer):
        return GuardProducer if base is Producer else base
    return type(f"Guarded{base.__name__}", (GuardProducer, base), {"__module__": __name__})
