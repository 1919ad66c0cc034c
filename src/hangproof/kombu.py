"""``hangproof.kombu:Transport``: kombu's py-amqp transport that cannot hang in the handshake.

    >>> from kombu import Connection
    >>> Connection("amqp://guest:guest@127.0.0.1:5672//",
    ...            transport="hangproof.kombu:Transport").transport_cls
    'hangproof.kombu:Transport'

Over TLS: ``ssl=True`` / ``ssl={...}`` (as with kombu's own py-amqp transport), or
``hangproof.kombu:SSLTransport`` (alias ``hangproofs://``, as ``amqps://``).

See :mod:`hangproof.guard.transport` for what it changes and why.
"""

from __future__ import annotations

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
    "HandshakeDeadlineExceeded",
    "PublishError",
    "PublishTimeout",
    "SSLTransport",
    "TLSHandshakeFailed",
    "TLSVerificationFailed",
    "Transport",
    "last_inbound_frame_at",
]
