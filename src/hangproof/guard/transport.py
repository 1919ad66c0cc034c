"""A kombu transport whose connections cannot hang in the AMQP handshake.

Two things stock py-amqp does not do:

- **A total handshake deadline.** py-amqp's ``connect_timeout`` applies to the
  TCP connect and then to *each read* of the handshake, so a peer that sends
  Connection.Start and then drips heartbeat frames (or nothing at all, when
  ``connect_timeout`` is None, as Celery forces under gevent) holds the client
  forever. Here every ``recv`` of the handshake is bounded by the time left
  until one deadline over TCP connect + protocol header + Start..Open-Ok.
- **An inbound-frame clock.** ``last_inbound_frame_at`` is the monotonic time
  by which the last frame from the broker had been read. The guard's watchdog
  uses it to see a silent link even when the event loop is not running the
  heartbeat check (e.g. blocked in a synchronous call). It costs nothing per
  frame: py-amqp already counts every inbound frame (``bytes_recv``, which
  its own heartbeat check reads); the clock samples that counter when it is
  read and stamps the time it changed. So it is late by at most the interval
  between two reads (the watchdog's ``watchdog_interval``, at most 1 s).

After Open-Ok the socket, the transport and the per-frame path are exactly
stock py-amqp's: the deadline wrapper is removed and nothing is overridden per
frame (the throughput benchmark, benchmarks/bench_throughput.py, holds us to it).

Use it by import path, anywhere kombu takes a transport::

    >>> from kombu import Connection
    >>> conn = Connection("amqp://guest:guest@127.0.0.1:5672//",
    ...                   transport="hangproof.kombu:Transport",
    ...                   transport_options={"handshake_deadline": 5.0})
    >>> conn.transport_cls
    'hangproof.kombu:Transport'
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

import amqp
import amqp.transport
from kombu.transport import TRANSPORT_ALIASES, pyamqp

from hangproof.failure import Policy

logger = logging.getLogger("hangproof.guard")

#: The name harden() gives the guard transport in URLs (``hangproof://host``),
#: so that failover alternates parsed from URLs keep using it.
TRANSPORT_ALIAS = "hangproof"
TRANSPORT_PATH = "hangproof.kombu:Transport"
# kombu resolves URL schemes through this public registry; a scheme without
# '.' or ':' passes kombu's URL check (kombu issue 2641).
TRANSPORT_ALIASES.setdefault(TRANSPORT_ALIAS, TRANSPORT_PATH)


class HandshakeDeadlineExceeded(socket.timeout):
    """The AMQP handshake did not complete within the total deadline.

    A ``socket.timeout`` (so an ``OSError``), hence in kombu's and Celery's
    recoverable connection errors: they retry with backoff.
    """


#: Called with (deadline seconds, host) every time a handshake misses its
#: deadline; the Celery guard counts them in /metrics.
handshake_deadline_listeners: list[Callable[[float, str], None]] = []
_listeners_lock = threading.Lock()


def _notify_deadline(deadline: float, host: str) -> None:
    with _listeners_lock:
        listeners = list(handshake_deadline_listeners)
    for listener in listeners:
        try:
            listener(deadline, host)
        except Exception:  # a metrics hook must never break a reconnect
            logger.exception("hangproof.guard: handshake-deadline listener failed")


class _FrameClock:
    """Mixin for py-amqp's socket transports: bounds handshake reads (only those).

    Nothing here runs per frame once :meth:`end_handshake` has run.
    """

    handshake_deadline_at: float | None = None
    sock: socket.socket | None

    def _setup_transport(self) -> None:
        super()._setup_transport()  # type: ignore[misc]
        # py-amqp reads through self._quick_recv (TCP) or self._quick_recv
        # over the SSL object; wrapping it bounds *every* recv, so a peer that
        # drips single bytes cannot stretch the deadline either.
        plain_recv = getattr(self, "_quick_recv", None)
        if plain_recv is None:
            return
        self._plain_recv = plain_recv

        def recv_with_deadline(n: int, *rest: Any) -> Any:
            at = self.handshake_deadline_at
            if at is None:
                return plain_recv(n, *rest)
            remaining = at - monotonic()
            if remaining <= 0:
                raise HandshakeDeadlineExceeded("AMQP handshake deadline exceeded")
            sock = self.sock
            if sock is not None:
                current = sock.gettimeout()
                if current is None or current > remaining:
                    sock.settimeout(remaining)
            return plain_recv(n, *rest)

        self._quick_recv = recv_with_deadline

    def end_handshake(self) -> None:
        """Drop the per-recv deadline check once the handshake is over."""
        self.handshake_deadline_at = None
        plain = getattr(self, "_plain_recv", None)
        if plain is not None:
            self._quick_recv = plain  # no per-frame cost after the handshake


class GuardTCPTransport(_FrameClock, amqp.transport.TCPTransport):
    """py-amqp's TCP transport with the frame clock and handshake deadline."""


class GuardSSLTransport(_FrameClock, amqp.transport.SSLTransport):
    """py-amqp's TLS transport with the frame clock and handshake deadline."""


def _guard_transport_factory(
    host: str, connect_timeout: float | None = None, ssl: Any = False, *args: Any, **kwargs: Any
) -> amqp.transport._AbstractTransport:
    cls = GuardSSLTransport if ssl else GuardTCPTransport
    if ssl and not isinstance(ssl, dict):
        ssl = {}
    if ssl:
        return cls(host, connect_timeout=connect_timeout, ssl=ssl, *args, **kwargs)  # noqa: B026
    return cls(host, connect_timeout, *args, **kwargs)


class GuardConnection(pyamqp.Connection):
    """kombu's py-amqp connection with a total handshake deadline and a frame clock.

    ``handshake_deadline`` (seconds) bounds TCP connect + header + the whole
    Start..Open-Ok exchange, whatever ``connect_timeout`` says (None included).

    >>> GuardConnection(host="127.0.0.1:1", handshake_deadline=2.0).handshake_deadline
    2.0
    """

    #: The frame clock's last sample: py-amqp's inbound frame count, and when
    #: it was first seen at that value.
    _clock_count: int = -1
    _clock_at: float | None = None

    def __init__(self, *args: Any, handshake_deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handshake_deadline: float = float(
            handshake_deadline if handshake_deadline is not None else Policy().handshake_deadline
        )
        self.Transport = _guard_transport_factory

    @property
    def last_inbound_frame_at(self) -> float | None:
        """Monotonic time by which the last broker frame was read (None when not connected).

        Sampled, not stamped: py-amqp counts inbound frames in ``bytes_recv``
        (heartbeats included); a read that finds the count changed records
        the time. Late by at most the interval between reads; zero cost per
        frame. Reads from another thread (the watchdog) are safe: one int
        read, two attribute writes.
        """
        # ``self.transport`` would *connect* when there is none (py-amqp's
        # deprecated lazy connect); the private slot never does.
        if self._transport is None:
            return None
        count = self.bytes_recv
        if count != self._clock_count:
            self._clock_count = count
            self._clock_at = monotonic()
        return self._clock_at

    def connect(self, callback: Callable[[], Any] | None = None) -> Any:
        if self.connected:
            return super().connect(callback)
        deadline = self.handshake_deadline
        started = monotonic()
        at = started + deadline
        saved_connect_timeout = self.connect_timeout
        # The TCP connect is part of the total: under gevent Celery sets
        # connect_timeout=None, which would leave a SYN-SENT socket unbounded.
        self.connect_timeout = (
            deadline if saved_connect_timeout is None else min(saved_connect_timeout, deadline)
        )
        original_factory = self.Transport

        def transport_with_deadline(*args: Any, **kwargs: Any) -> Any:
            transport = original_factory(*args, **kwargs)
            transport.handshake_deadline_at = at
            return transport

        self.Transport = transport_with_deadline
        try:
            return super().connect(callback)
        except OSError as exc:
            if monotonic() >= at or isinstance(exc, HandshakeDeadlineExceeded):
                _notify_deadline(deadline, str(self.host))
                logger.warning(
                    "hangproof.guard: handshake-deadline: no AMQP handshake with %s within %.1f s "
                    "(%r); giving up on this attempt",
                    self.host,
                    deadline,
                    exc,
                )
                if not isinstance(exc, HandshakeDeadlineExceeded):
                    raise HandshakeDeadlineExceeded(
                        f"AMQP handshake with {self.host} not complete within {deadline:.1f} s"
                    ) from exc
            raise
        finally:
            self.Transport = original_factory
            self.connect_timeout = saved_connect_timeout
            transport = self._transport  # not .transport: that one reconnects
            if transport is not None and isinstance(transport, _FrameClock):
                transport.end_handshake()
                sock = transport.sock
                if sock is not None and self.connected:
                    # py-amqp runs the established socket in blocking mode
                    # (transport._init_socket); undo the deadline's timeout.
                    sock.settimeout(None)
            if self.connected:
                # The handshake's frames just arrived: start the clock now.
                self._clock_count = self.bytes_recv
                self._clock_at = monotonic()


class Transport(pyamqp.Transport):
    """kombu's py-amqp transport, with :class:`GuardConnection` connections.

    Transport option ``handshake_deadline`` (seconds) sets the deadline; the
    default is ``Policy().handshake_deadline``.
    """

    Connection = GuardConnection
    driver_name = "py-amqp"  # Celery checks driver_type/name for amqp behaviour


def last_inbound_frame_at(connection: Any) -> float | None:
    """The frame clock of a kombu or py-amqp connection, or None if unknown.

    >>> last_inbound_frame_at(object()) is None
    True
    """
    # A kombu Connection's ``.connection`` property *connects* when closed;
    # read the private slot so that looking at the clock never dials out.
    amqp_connection = getattr(connection, "_connection", connection)
    return getattr(amqp_connection, "last_inbound_frame_at", None)
