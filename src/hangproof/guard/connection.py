"""The worker reconnects with the policy's intervals: a kombu Connection subclass, via ``amqp_cls``.

Celery's consumer reconnects through ``Consumer.ensure_connected``, which calls
``conn.ensure_connection(errback, max_retries, callback=...)`` *without*
intervals, so kombu's defaults apply: 2 s, +2 s, at most 30 s between
attempts. :class:`GuardKombuConnection` defaults the missing intervals to the
connection's own ``transport_options`` (``interval_start``,
``interval_step``, ``interval_max``: kombu's own keys, which it already uses
for ``default_channel``, and which ``harden()`` derives from the policy's
backoff). Intervals a caller passes are kept.

The class reaches Celery through front doors only: the app's ``amqp_cls``
(documented argument of ``Celery``) names :class:`GuardedAMQP`, whose
``Connection`` attribute (documented on ``celery.app.amqp.AMQP``) is the
subclass; every broker connection the app makes, and every clone in its
pools, is one. No instance is patched.

    >>> conn = GuardKombuConnection("amqp://127.0.0.1:1//",
    ...     transport_options={"interval_start": 0, "interval_step": 0.5, "interval_max": 5})
    >>> conn.reconnect_intervals((None, 3), {})
    {'interval_start': 0, 'interval_step': 0.5, 'interval_max': 5}
"""

from __future__ import annotations

import functools
from typing import Any

from celery.app.amqp import AMQP
from kombu import Connection
from kombu.utils.imports import symbol_by_name

from hangproof.guard.publishing import guarded_producer_class

#: kombu's ``ensure_connection(errback, max_retries, interval_start,
#: interval_step, interval_max, ...)``: the intervals' positions and names.
_INTERVALS = (2, "interval_start"), (3, "interval_step"), (4, "interval_max")


class GuardReconnectMixin:
    """``ensure_connection`` whose missing intervals come from ``transport_options``."""

    transport_options: dict[str, Any]

    def reconnect_intervals(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The interval keywords to add to an ``ensure_connection(*args, **kwargs)`` call."""
        options = self.transport_options or {}
        return {
            name: options[name]
            for position, name in _INTERVALS
            if len(args) <= position and name not in kwargs and name in options
        }

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(self.reconnect_intervals(args, kwargs))
        return super().ensure_connection(*args, **kwargs)  # type: ignore[misc]


class GuardKombuConnection(GuardReconnectMixin, Connection):
    """kombu's Connection, reconnecting with the intervals in its transport options."""


class GuardProducerPoolMixin:
    """``producer_pool`` whose producers are :class:`~hangproof.guard.publishing.GuardProducer`.

    Celery publishes every task through ``app.amqp.producer_pool`` (kombu's
    ``ProducerPool``, shared per connection of this app); its documented
    ``Producer`` attribute (a constructor argument) is set before the pool
    makes its first producer: mandatory publishes, one deadline over all
    retries (guard/publishing.py).
    """

    @property
    def producer_pool(self) -> Any:
        pool = super().producer_pool  # type: ignore[misc]
        pool.Producer = guarded_producer_class(pool.Producer)
        return pool

    publisher_pool = producer_pool  # Celery's compat alias


class GuardedAMQP(GuardProducerPoolMixin, AMQP):
    """Celery's AMQP helper whose broker connections are :class:`GuardKombuConnection`."""

    Connection = GuardKombuConnection


#: The import path harden() gives ``amqp_cls`` when the app uses Celery's own
#: AMQP class (a string, so the app still pickles for spawned children).
GUARDED_AMQP_PATH = "hangproof.guard.connection:GuardedAMQP"


@functools.cache
def guarded_connection_class(base: type) -> type:
    """``base`` (a kombu Connection class) with :class:`GuardReconnectMixin`.

    >>> guarded_connection_class(Connection) is GuardKombuConnection
    True
    """
    if base is Connection:
        return GuardKombuConnection
    if issubclass(base, GuardReconnectMixin):
        return base
    return type(f"Guarded{base.__name__}", (GuardReconnectMixin, base), {"__module__": __name__})


@functools.cache
def guarded_amqp_class(base: type) -> type:
    """``base`` (the app's AMQP class) whose ``Connection`` reconnects with the policy."""
    if base is AMQP:
        return GuardedAMQP
    connection = guarded_connection_class(base.Connection)
    if base.Connection is connection and issubclass(base, GuardProducerPoolMixin):
        return base
    return type(
        f"Guarded{base.__name__}",
        (GuardProducerPoolMixin, base),
        {"Connection": connection, "__module__": __name__},
    )


def install(app: Any) -> None:
    """Make every broker connection of ``app`` a guarded one (front doors only).

    Before ``app.amqp`` exists (the usual case: harden() at import time) this
    sets ``app.amqp_cls``. If the app already built its AMQP helper, it sets
    that helper's documented ``Connection`` attribute instead.
    """
    existing = vars(app).get("amqp")
    if existing is not None:
        # (Its producers stay kombu's: harden() before first use, as documented.)
        existing.Connection = guarded_connection_class(existing.Connection)
        return
    base = symbol_by_name(app.amqp_cls)
    guarded = guarded_amqp_class(base)
    app.amqp_cls = GUARDED_AMQP_PATH if guarded is GuardedAMQP else guarded
