"""``hangproof.kombu:Transport``: kombu's py-amqp transport that cannot hang in the handshake.

    >>> from kombu import Connection
    >>> Connection("amqp://guest:guest@127.0.0.1:5672//",
    ...            transport="hangproof.kombu:Transport").transport_cls
    'hangproof.kombu:Transport'

Over TLS: ``ssl=True`` / ``ssl={...}`` (as with kombu's own py-amqp transport), or
``hangproof.kombu:SSLTransport`` (alias ``hangproofs://``, as ``amqps://``).

See :mod:`hangproof.guard.transport` for what it changes and why.

Publish with :class:`GuardProducer` (``GuardProducer(conn)`` instead of
``conn.Producer()``) on such a connection: every publish is mandatory (a
message no queue takes raises :class:`PublishUnroutable`) and one call,
retries included, takes at most ``publish_timeout``
(:mod:`hangproof.guard.publishing`).
"""

from __future__ import annotations

from hangproof.guard.errors import PublishUnroutable
from hangproof.guard.publishing import GuardProducer
from hangproof.guard.transport import (
    BrokerBlocked,
    GuardConnection,
    HandshakeDeadlineExceeded,
    PublishError,
    PublishTimeout,
    SSLTransport,
    TLSHandshakeFailed,
    TLSVerificationFailed,
    Transport,
    last_inbound_frame_at,
)

__all__ = [
    "BrokerBlocked",
    "GuardConnection",
    "GuardProducer",
    "HandshakeDeadlineExceeded",
    "PublishError",
    "PublishTimeout",
    "PublishUnroutable",
    "SSLTransport",
    "TLSHandshakeFailed",
    "TLSVerificationFailed",
    "Transport",
    "last_inbound_frame_at",
]
