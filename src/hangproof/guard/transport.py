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

A publish cannot hang either, and cannot pretend to succeed:

- **Publisher confirms with a total deadline** (``confirm_publish``, on by
  default here; ``publish_timeout`` seconds, default
  ``Policy().publish_timeout``). py-amqp's ``confirm_timeout`` bounds each
  *read*, and the broker's heartbeats reset it, so a blocked broker holds a
  confirmed publish forever; here the write and the wait for Basic.Ack share
  one deadline, and a miss raises :class:`PublishTimeout`.
- **connection.blocked** (RabbitMQ's resource alarms): the Blocked frame's
  reason is recorded on the connection (``blocked_reason``); a publish while
  blocked raises :class:`BrokerBlocked` at once, without touching the socket,
  and one that is blocked while it waits for its confirm raises it as soon as
  the notification arrives. Unblocked clears the state.

Use it by import path, anywhere kombu takes a transport::

    >>> from kombu import Connection
    >>> conn = Connection("amqp://guest:guest@127.0.0.1:5672//",
    ...                   transport="hangproof.kombu:Transport",
    ...                   transport_options={"handshake_deadline": 5.0})
    >>> conn.transport_cls
    'hangproof.kombu:Transport'
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any, ClassVar

import amqp
import amqp.transport
from amqp import spec
from amqp.exceptions import MessageNacked
from kombu.exceptions import OperationalError
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


class PublishError(OperationalError):
    """A guarded publish failed within the policy (base class).

    A kombu ``OperationalError`` (what Celery users already catch for broker
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


#: Called with (event, reason, connection id) on every connection.blocked
#: ("blocked") and connection.unblocked / close of a blocked connection
#: ("unblocked"); the Celery guard reports it in /healthz and /metrics.
blocked_listeners: list[Callable[[str, str, int], None]] = []


def _notify_blocked(event: str, reason: str, connection_id: int) -> None:
    with _listeners_lock:
        listeners = list(blocked_listeners)
    for listener in listeners:
        try:
            listener(event, reason, connection_id)
        except Exception:  # a metrics hook must never break a publish
            logger.exception("hangproof.guard: blocked listener failed")


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


#: Frames read without waiting before a publish, to see a pending
#: connection.blocked/unblocked (bounded: a busy consumer channel must not
#: keep a publisher here).
_POLL_FRAMES = 16


class GuardChannel(pyamqp.Channel):
    """kombu's py-amqp channel whose publishes fail clearly instead of hanging.

    Publisher confirms are tracked by delivery tag, so a late Basic.Ack for a
    message that already timed out (or was blocked) cannot confirm a later
    one.
    """

    connection: GuardConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hp_reset_confirms()

    def _hp_reset_confirms(self) -> None:
        self._hp_next_tag = 0  # the delivery tag of the last publish
        self._hp_acked_upto = 0  # every tag <= this is settled (acked or nacked)
        self._hp_settled: set[int] = set()
        self._hp_nacked: set[int] = set()
        self._hp_nacked_upto = 0

    def confirm_select(self, nowait: bool = False) -> Any:
        self._hp_reset_confirms()
        return super().confirm_select(nowait)

    def _do_revive(self) -> None:
        """Reopen a channel the broker closed, out of confirm mode, as py-amqp 5.4.2 does.

        py-amqp 5.2.0-5.4.1 reopen it (after e.g. a 404 on publish; py-amqp#285) without
        clearing ``_confirm_selected``: the new channel is not in confirm
        mode, so every later confirmed publish would wait for a Basic.Ack
        that never comes (a false PublishTimeout for a queued message).
        Measured: tests/lab/test_guard_channel_revive.py. The broker also
        numbers the new channel's deliveries from 1: reset our ledger.
        """
        self._confirm_selected = False
        self._hp_reset_confirms()
        super()._do_revive()

    def _on_basic_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._hp_settle(delivery_tag, multiple)
        super()._on_basic_ack(delivery_tag, multiple)

    def _on_basic_nack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._hp_nacked_upto = max(self._hp_nacked_upto, delivery_tag)
        else:
            self._hp_nacked.add(delivery_tag)
        self._hp_settle(delivery_tag, multiple)
        super()._on_basic_nack(delivery_tag, multiple)

    def _hp_settle(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._hp_acked_upto = max(self._hp_acked_upto, tag)
            self._hp_settled = {t for t in self._hp_settled if t > tag}
        else:
            self._hp_settled.add(tag)

    def _hp_is_settled(self, tag: int) -> bool:
        return tag <= self._hp_acked_upto or tag in self._hp_settled

    def _hp_refuse_if_blocked(self, started: float, *, sent: bool = False) -> None:
        connection = self.connection
        if connection is None or not connection.refuse_when_blocked:
            return
        reason = connection.blocked_reason
        if reason is not None:
            raise BrokerBlocked.refused(reason, monotonic() - started, sent=sent)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close; without waiting for a Close-Ok that a blocked broker will not send.

        A blocked connection is not read by the broker at all, so a graceful
        close waits ``read_timeout`` (measured: kombu's pool closed a blocked
        producer's channel and connection in 2 x 3 s after BrokerBlocked).
        """
        connection = self.connection
        if connection is not None and connection.blocked_reason is not None:
            self.collect()
            return None
        return super().close(*args, **kwargs)

    def basic_publish(self, *args: Any, **kwargs: Any) -> Any:
        """Stock publish (no confirms), refused at once while the broker blocks us."""
        started = monotonic()
        kwargs.pop("confirm_timeout", None)
        connection = self.connection
        if connection is not None:
            connection.poll_events()
        self._hp_refuse_if_blocked(started)
        return self._basic_publish(*args, **kwargs)

    def basic_publish_confirm(self, *args: Any, **kwargs: Any) -> Any:
        """Publish and wait for the broker's confirm, all within ``publish_timeout``."""
        started = monotonic()
        connection = self.connection
        if connection is None:
            return self._basic_publish(*args, **kwargs)  # raises: connection closed
        limit = connection.publish_timeout
        for key in ("timeout", "confirm_timeout"):
            given = kwargs.pop(key, None)
            if given:
                limit = min(limit, float(given))
        at = started + limit
        connection.poll_events()
        self._hp_refuse_if_blocked(started)
        if not self._confirm_selected:
            self._confirm_selected = True
            self.confirm_select()
        tag = self._hp_next_tag + 1
        try:
            ret = self._basic_publish(*args, timeout=max(0.001, at - monotonic()), **kwargs)
        except amqp.exceptions.RecoverableConnectionError as exc:
            if monotonic() < at:
                raise  # closed connection: kombu reconnects and retries
            # The write timed out: part of a frame may be on the wire, so the
            # connection is unusable; drop it so the next publish reconnects.
            connection.abandon()
            raise PublishTimeout(
                f"publish not written within {limit:.1f} s (broker not reading); connection dropped"
            ) from exc
        self._hp_next_tag = tag
        while not self._hp_is_settled(tag):
            self._hp_refuse_if_blocked(started, sent=True)
            remaining = at - monotonic()
            if remaining <= 0:
                connection.abandon()
                raise PublishTimeout(
                    f"no publisher confirm from the broker within {limit:.1f} s; the message "
                    "may or may not be queued; connection dropped"
                )
            try:
                # One frame at a time, each bounded by what is left of the
                # deadline: heartbeats cannot stretch it.
                connection.blocking_read(timeout=remaining)
            except TimeoutError:
                continue
        if tag <= self._hp_nacked_upto or tag in self._hp_nacked:
            self._hp_nacked.discard(tag)
            raise MessageNacked()
        self._hp_settled.discard(tag)
        return ret


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

    Channel = GuardChannel
    # py-amqp declares Connection.Blocked without its ``reason`` argument
    # (shortstr, e.g. "low on memory"); read it.
    _METHODS: ClassVar[dict[Any, Any]] = {
        **pyamqp.Connection._METHODS,
        spec.Connection.Blocked: spec.method(spec.Connection.Blocked, "s"),
    }

    #: Why the broker blocks our publishes (None: not blocked), and since when.
    blocked_reason: str | None = None
    blocked_since: float | None = None

    def __init__(
        self,
        *args: Any,
        handshake_deadline: float | None = None,
        publish_timeout: float | None = None,
        confirm_publish: bool = True,
        refuse_when_blocked: bool = True,
        on_blocked: Callable[[str], Any] | None = None,
        on_unblocked: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, confirm_publish=confirm_publish, **kwargs)
        self.handshake_deadline: float = float(
            handshake_deadline if handshake_deadline is not None else Policy().handshake_deadline
        )
        self.publish_timeout: float = float(
            publish_timeout if publish_timeout is not None else Policy().publish_timeout or 7.5
        )
        #: False for a worker's own consumer connection: its control messages
        #: (mingle, pidbox replies) must not turn a broker alarm into a crash.
        self.refuse_when_blocked = refuse_when_blocked
        self.on_blocked = on_blocked
        self.on_unblocked = on_unblocked
        self.Transport = _guard_transport_factory

    # -- connection.blocked ------------------------------------------------
    def _on_blocked(self, reason: str | None = None) -> Any:
        reason = reason or "connection blocked, see broker logs"
        self.blocked_reason = reason
        self.blocked_since = monotonic()
        logger.warning("hangproof.guard: broker-blocked: %s (connection.blocked)", reason)
        _notify_blocked("blocked", reason, id(self))
        if self.on_blocked:
            return self.on_blocked(reason)
        return None

    def _on_unblocked(self) -> Any:
        self._clear_blocked()
        if self.on_unblocked:
            return self.on_unblocked()
        return None

    def _clear_blocked(self, how: str = "connection.unblocked") -> None:
        reason = self.blocked_reason
        if reason is None:
            return
        held = monotonic() - (self.blocked_since or monotonic())
        self.blocked_reason = None
        self.blocked_since = None
        logger.warning("hangproof.guard: broker-unblocked (%s) after %.1f s", how, held)
        _notify_blocked("unblocked", reason, id(self))

    def poll_events(self) -> None:
        """Read the frames already waiting, without blocking (blocked/unblocked news)."""
        if self._transport is None or not self.connected:
            return
        for _ in range(_POLL_FRAMES):
            try:
                self.blocking_read(timeout=0)
            except TimeoutError:
                return

    def abandon(self) -> None:
        """Drop a connection a publish gave up on, so the next use reconnects."""
        transport = self._transport
        sock = getattr(transport, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close; a blocked connection is dropped (the broker would not read Close)."""
        if self.blocked_reason is not None and self._transport is not None:
            self.collect()
            return None
        return super().close(*args, **kwargs)

    def collect(self) -> None:
        self._clear_blocked("connection closed while blocked")
        super().collect()

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

    Transport options: ``handshake_deadline`` (seconds; default
    ``Policy().handshake_deadline``), ``publish_timeout`` (seconds; default
    ``Policy().publish_timeout``), ``confirm_publish`` (default True),
    ``refuse_when_blocked`` (default True: raise :class:`BrokerBlocked`
    while the broker blocks publishing).
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
