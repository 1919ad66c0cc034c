"""The guard's publish errors, importable without kombu (``hangproof.aio`` needs none).

With kombu installed (every Celery or kombu user) :class:`PublishError` is a
kombu ``OperationalError``, what Celery users already catch for broker
trouble. An asyncio-only install (aio-pika, no kombu) gets the same classes
on a plain ``Exception`` base: nothing there could catch kombu's class anyway.
Either way they are deliberately *not* ``OSError``: kombu's and Celery's
publish retry policy does not retry them, so the caller learns within
``publish_timeout`` instead of after ``max_retries`` more rounds.

    >>> issubclass(PublishTimeout, OSError)
    False
"""

from __future__ import annotations

try:
    from kombu.exceptions import OperationalError as _PublishErrorBase
except ImportError:  # hangproof.aio on an aio-pika-only install
    _PublishErrorBase = Exception  # type: ignore[assignment,misc]

__all__ = ["BrokerBlocked", "PublishError", "PublishTimeout", "PublishUnroutable"]


class PublishError(_PublishErrorBase):
    """A guarded publish failed within the policy (base class).

    A kombu ``OperationalError`` when kombu is installed (what Celery users catch for broker
    trouble), deliberately *not* an ``OSError``: kombu's and Celery's publish
    retry policy does not retry it, so the caller learns within
    ``publish_timeout`` instead of after ``max_retries`` more rounds.
    """


class BrokerBlocked(PublishError):
    """The broker blocks this connection's publishes (``connection.blocked``).

    >>> str(BrokerBlocked.refused("low on memory", 0.0))
    'broker blocked publishing: low on memory (connection.blocked); publish refused after 0.0 s'
    """

    @classmethod
    def refused(cls, reason: str, elapsed: float, *, sent: bool = False) -> BrokerBlocked:
        if sent:
            tail = (
                f"publish sent but not confirmed after {elapsed:.1f} s; the broker may still "
                "queue it when the alarm clears"
            )
        else:
            tail = f"publish refused after {elapsed:.1f} s"
        return cls(f"broker blocked publishing: {reason} (connection.blocked); {tail}")


class PublishTimeout(PublishError):
    """No publisher confirm within ``publish_timeout``; the connection is dropped.

    The message may or may not have been queued (AMQP cannot tell): a retry
    may duplicate it.
    """


class PublishUnroutable(PublishError):
    """The broker confirmed the publish but routed it to no queue (``basic.return``).

    E.g. the queue was deleted and nobody has declared it again (the
    queue-deleted fault, aio-pika#612, kombu#814): aio-pika's default
    ``on_return_raises=False`` hands back the returned message as if it were
    a success, so the caller would believe a task was queued that nobody
    will ever run (a false ok).
    """
