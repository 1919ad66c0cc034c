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

Tearing down cannot block recovery either (docs/guard.md, "Teardown"):

- every call that waits for the broker while a channel or connection is
  being torn down (channel and connection Close-Ok, Cancel-Ok) shares one
  deadline per connection, ``teardown_timeout`` (default
  ``Policy().teardown_timeout``, stall_timeout / 10), writes included; when
  it passes, the socket is abandoned (shutdown + close, no Close-Ok) and the
  close counts as done;
- a connection established before the guard last saw the broker path fail
  (:func:`note_path_fault`: missed heartbeats, a silent link, a publish that
  timed out) is abandoned at once when it is closed, without any wait: it
  may sit on a flow a middle box dropped, where a graceful close waits
  ``read_timeout`` per call (measured: 2 x 15 s in Celery's event dispatcher
  restart, while the new connection missed its heartbeats).

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
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any, ClassVar

import amqp
import amqp.transport
from amqp.exceptions import MessageNacked
from kombu.transport import TRANSPORT_ALIASES, pyamqp

from hangproof.failure import Policy
from hangproof.guard import publishing, upstream
from hangproof.guard.errors import BrokerBlocked, PublishTimeout, PublishUnroutable
from hangproof.guard.errors import PublishError as PublishError  # re-exported

logger = logging.getLogger("hangproof.guard")

#: The name harden() gives the guard transport in URLs (``hangproof://host``),
#: so that failover alternates parsed from URLs keep using it.
TRANSPORT_ALIAS = "hangproof"
TRANSPORT_PATH = "hangproof.kombu:Transport"
#: The TLS twin, as kombu's ``amqps`` is of ``amqp``: ``hangproofs://host``
#: makes a failover alternate that was ``amqps://`` keep TLS.
SSL_TRANSPORT_ALIAS = "hangproofs"
SSL_TRANSPORT_PATH = "hangproof.kombu:SSLTransport"
# kombu resolves URL schemes through this public registry; a scheme without
# '.' or ':' passes kombu's URL check (kombu issue 2641).
TRANSPORT_ALIASES.setdefault(TRANSPORT_ALIAS, TRANSPORT_PATH)
TRANSPORT_ALIASES.setdefault(SSL_TRANSPORT_ALIAS, SSL_TRANSPORT_PATH)


class HandshakeDeadlineExceeded(socket.timeout):
    """The AMQP handshake did not complete within the total deadline.

    A ``socket.timeout`` (so an ``OSError``), hence in kombu's and Celery's
    recoverable connection errors: they retry with backoff.
    """


class TLSVerificationFailed(ssl.SSLCertVerificationError):
    """The broker's TLS certificate was refused: wrong CA, wrong hostname, expired.

    Still an ``ssl.SSLCertVerificationError`` (so an ``OSError``): kombu tries
    the next failover alternate and Celery retries with its paced backoff;
    only the message changes, to one line that says which check failed and
    which setting to fix (docs/guard.md, "TLS", explains why the guard does
    not make it fatal).
    """


class TLSHandshakeFailed(ssl.SSLError):
    """The TLS handshake failed for another reason (e.g. the port speaks plain AMQP)."""


class TeardownTimeout(socket.timeout):
    """A teardown call (Close-Ok, Cancel-Ok) missed ``teardown_timeout``; the socket was abandoned.

    A ``socket.timeout`` (so an ``OSError``): kombu and Celery treat it as a
    connection error, which is what it is now.
    """


#: When the guard last saw the broker path fail in this process (monotonic
#: seconds; None: never). Connections established before it may sit on a
#: dead flow: closing them abandons the socket instead of waiting.
_path_fault_at: float | None = None


def note_path_fault(reason: str = "") -> None:
    """Record that the broker path just failed (missed heartbeats, silent link, ...).

    Every guarded connection established before now is then closed by
    abandoning its socket (no Close-Ok wait); connections made afterwards
    close gracefully, within ``teardown_timeout``.

    >>> note_path_fault("doctest"); last_path_fault_at() is not None
    True
    """
    global _path_fault_at
    _path_fault_at = monotonic()
    logger.debug("hangproof.guard: path fault noted (%s)", reason)


def _amqp_transport(connection: Any) -> Any:
    """A py-amqp connection's transport, or None; never connects.

    The one read of py-amqp's private ``Connection._transport`` that the
    teardown code makes (``.transport`` would dial), through
    :mod:`hangproof.guard.upstream` like every other private name.
    """
    return upstream.amqp_transport(connection)


def last_path_fault_at() -> float | None:
    """Monotonic time of the last :func:`note_path_fault` (None if none yet)."""
    return _path_fault_at


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

    def _connect(self, host: str, port: int, timeout: float | None) -> None:
        """py-amqp's connect, with the broker's name looked up within the deadline.

        py-amqp calls ``socket.getaddrinfo`` unbounded: with an unreachable
        resolver glibc waits ``timeout x attempts`` per lookup (10 s by
        default, longer with several nameservers or search domains), past
        the handshake deadline (celery#2417; measured 10.0 s against a 7.5 s
        deadline on the dns-stall fault). The lookup runs in a helper thread
        given what is left of the deadline; each address it yields is then
        dialled as py-amqp would (IP literals skip the lookup).
        """
        at = self.handshake_deadline_at
        if at is None or _is_ip_literal(host):
            super()._connect(host, port, timeout)  # type: ignore[misc]
            return
        remaining = at - monotonic()
        if remaining <= 0:
            raise HandshakeDeadlineExceeded(
                f"AMQP handshake deadline exceeded before resolving {host}"
            )
        entries = bounded_getaddrinfo(host, port, remaining)
        addresses = list(dict.fromkeys(str(e[4][0]) for e in entries))
        for i, address in enumerate(addresses):
            try:
                super()._connect(address, port, timeout)  # type: ignore[misc]
                return
            except OSError:
                if i + 1 >= len(addresses):
                    raise

    def _setup_transport(self) -> None:
        super()._setup_transport()  # type: ignore[misc]
        # py-amqp reads through self._quick_recv (TCP) or self._quick_recv
        # over the SSL object; wrapping it bounds *every* recv, so a peer that
        # drips single bytes cannot stretch the deadline either.
        plain_recv = upstream.quick_recv(self)
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

        upstream.set_quick_recv(self, recv_with_deadline)

    def end_handshake(self) -> None:
        """Drop the per-recv deadline check once the handshake is over."""
        self.handshake_deadline_at = None
        plain = getattr(self, "_plain_recv", None)
        if plain is not None:
            upstream.set_quick_recv(self, plain)  # no per-frame cost after the handshake


def _is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4/IPv6 address (no lookup needed).

    >>> _is_ip_literal("198.18.0.1"), _is_ip_literal("::1"), _is_ip_literal("mq.example")
    (True, True, False)
    """
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class DNSLookupTimeout(HandshakeDeadlineExceeded):
    """The broker's host name was not resolved within what was left of the handshake deadline."""


def bounded_getaddrinfo(host: str, port: int, timeout: float) -> list[Any]:
    """``socket.getaddrinfo(host, port, AF_UNSPEC, SOCK_STREAM, TCP)`` within ``timeout`` s.

    The lookup runs in a daemon thread (glibc's resolver cannot be
    interrupted); if it has not returned in time :class:`DNSLookupTimeout`
    (a ``socket.timeout``, so kombu and Celery retry) is raised and the thread
    finishes on its own when the resolver gives up. Resolver errors
    (``socket.gaierror``) are raised as they are.

    >>> bounded_getaddrinfo("127.0.0.1", 5672, 1.0)[0][4]
    ('127.0.0.1', 5672)
    """
    result: list[Any] = []
    error: list[BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            result.extend(
                socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.SOL_TCP)
            )
        except BaseException as exc:  # handed to the caller
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"hangproof-dns-{host}", daemon=True).start()
    if not done.wait(max(0.0, timeout)):
        raise DNSLookupTimeout(f"DNS lookup of {host} got no answer within {timeout:.1f} s")
    if error:
        raise error[0]
    if not result:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
    return result


class GuardTCPTransport(_FrameClock, amqp.transport.TCPTransport):
    """py-amqp's TCP transport with the frame clock and handshake deadline."""


#: OpenSSL's reasons when the peer's first bytes are not a TLS record: a plain
#: AMQP port answers a ClientHello with its "AMQP" header (AMQP 0-9-1 §4.2.2).
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"}
)


class GuardSSLTransport(_FrameClock, amqp.transport.SSLTransport):
    """py-amqp's TLS transport with the frame clock and handshake deadline.

    py-amqp wraps the socket and runs ``do_handshake()`` in
    ``_setup_transport``, bounded by ``connect_timeout`` alone, i.e. a fresh
    timeout after the TCP connect (and none at all when it is None, as under
    gevent: py-amqp PR#398's silent port). Here the TLS handshake gets what is
    left of the one total deadline, and a refused certificate becomes one
    clear line (:class:`TLSVerificationFailed`).
    """

    def _setup_transport(self) -> None:
        at = self.handshake_deadline_at
        if at is not None:
            remaining = at - monotonic()
            if remaining <= 0:
                raise HandshakeDeadlineExceeded("AMQP handshake deadline exceeded before TLS")
            # py-amqp bounds do_handshake() by self.connect_timeout (transport.py,
            # SSLTransport._setup_transport, py-amqp 5.x): give it what is left.
            if self.connect_timeout is None or self.connect_timeout > remaining:
                self.connect_timeout = remaining
            # And the plain socket, whose timeout the SSL socket inherits when
            # wrapped: bounded even if a later py-amqp stops setting its own.
            if self.sock is not None:
                self.sock.settimeout(remaining)
        try:
            super()._setup_transport()
        except ssl.SSLCertVerificationError as exc:
            refused = TLSVerificationFailed(
                exc.errno, tls_verify_message(exc, self.sslopts, self._where)
            )
            refused.verify_code, refused.verify_message = exc.verify_code, exc.verify_message
            raise refused from exc
        except TimeoutError as exc:
            raise HandshakeDeadlineExceeded(
                f"TLS handshake with {self._where} got no answer (TCP accepted, no ServerHello)"
            ) from exc
        except ssl.SSLError as exc:
            if exc.reason in _NOT_TLS_REASONS:
                hint = "is this the plain-text AMQP port? amqps:// usually listens on 5671"
            else:
                hint = (
                    "check broker_use_ssl (certfile/keyfile if the broker requires a client "
                    "certificate, tls_minimum_version, ciphers)"
                )
            raise TLSHandshakeFailed(
                exc.errno, f"TLS handshake with {self._where} failed ({exc.reason or exc}): {hint}"
            ) from exc

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    def _shutdown_transport(self) -> None:
        """Send TLS close_notify, without waiting for the peer's (a dead peer never sends it).

        py-amqp unwraps the socket here: CPython's ``unwrap()`` sends
        close_notify, then *reads* until the peer's close_notify arrives,
        bounded only by the socket's timeout: ``connect_timeout`` (None under
        gevent: forever) against a frozen broker or a silent path. Waiting is
        not required (RFC 8446 §6.1, RFC 5246 §7.2.1: the initiator may close
        its read side without the reply), so the alert is sent non-blocking
        and the socket is closed by py-amqp right after.
        """
        sock = self.sock
        if not isinstance(sock, ssl.SSLSocket):
            return
        with contextlib.suppress(OSError, ValueError):
            sock.settimeout(0)
            sock.unwrap()


def shutdown_socket(sock: socket.socket) -> None:
    """``shutdown(SHUT_RDWR)`` that is safe from another thread, TLS included.

    ``ssl.SSLSocket.shutdown()`` also drops the socket's SSL object, so the
    next read on the reading thread raises ``ValueError("Read on closed or
    unwrapped SSL socket")``, which Celery does not take for a connection
    error: the worker died ("Unrecoverable error", measured on the TLS fault
    bed). Shutting the file descriptor down underneath leaves the SSL object
    in place: the reader sees EOF, an ``OSError``, and Celery reconnects.
    """
    socket.socket.shutdown(sock, socket.SHUT_RDWR)


def tls_verify_message(
    exc: ssl.SSLCertVerificationError, sslopts: dict[str, Any] | None, where: str
) -> str:
    """One line that says which TLS check refused the broker and what to change.

    >>> err = ssl.SSLCertVerificationError(1, "x")
    >>> err.verify_code, err.verify_message = 20, "unable to get local issuer certificate"
    >>> tls_verify_message(err, {"ca_certs": "/etc/ca.pem"}, "mq:5671")  # doctest: +ELLIPSIS
    "TLS: the broker's certificate (mq:5671) is not trusted by the CA in broker_use_ssl['ca_certs'] (/etc/ca.pem): unable to get ... or fix the broker's certificate chain"
    """
    opts = sslopts or {}
    detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    code = getattr(exc, "verify_code", None)
    if code == 62 or "hostname mismatch" in str(detail).lower():  # X509_V_ERR_HOSTNAME_MISMATCH
        name = opts.get("server_hostname")
        return (
            f"TLS: the broker's certificate ({where}) does not name "
            f"broker_use_ssl['server_hostname'] {name!r}: {detail}; set server_hostname to a "
            "name in the certificate's subjectAltName, or reissue the certificate"
        )
    if "context" in opts:
        trusted_by = "the CA of broker_use_ssl['context']"
    elif opts.get("ca_certs"):
        trusted_by = f"the CA in broker_use_ssl['ca_certs'] ({opts['ca_certs']})"
    else:
        trusted_by = "the system's default CAs (no broker_use_ssl['ca_certs'] given)"
    return (
        f"TLS: the broker's certificate ({where}) is not trusted by {trusted_by}: {detail}; "
        "set broker_use_ssl['ca_certs'] to the CA that signed it, "
        "or fix the broker's certificate chain"
    )


def _guard_transport_factory(
    host: str,
    connect_timeout: float | None = None,
    ssl: Any = False,
    read_timeout: float | None = None,
    write_timeout: float | None = None,
    **kwargs: Any,
) -> _FrameClock:
    """py-amqp's ``Connection.Transport`` signature, choosing the guard's TCP or TLS class.

    py-amqp calls it as ``Transport(host, connect_timeout, ssl, read_timeout,
    write_timeout, socket_settings=...)`` (amqp/connection.py, 5.x); the TLS
    class takes ``ssl`` as options (True: py-amqp's defaults, i.e. ``{}``).
    """
    if ssl:
        return GuardSSLTransport(
            host,
            connect_timeout=connect_timeout,
            ssl=ssl if isinstance(ssl, dict) else {},
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            **kwargs,
        )
    return GuardTCPTransport(
        host,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        write_timeout=write_timeout,
        **kwargs,
    )


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
        #: The confirmed publish in flight (its tag) and the Basic.Return the
        #: broker sent for it, if any (a mandatory publish no queue took).
        self._hp_inflight: int | None = None
        self._hp_returned: tuple[int, str, str, str] | None = None

    def _on_basic_return(
        self, reply_code: int, reply_text: str, exchange: str, routing_key: str, message: Any
    ) -> Any:
        """Basic.Return during a confirmed publish: remembered, raised as PublishUnroutable.

        The broker sends it before the Basic.Ack of the same message, so it
        belongs to the publish in flight. Outside one, or with the caller's
        own ``basic_return`` handlers (kombu's ``on_return``), py-amqp's
        behaviour is kept.
        """
        if self._hp_inflight is not None:
            self._hp_returned = (reply_code, str(reply_text), str(exchange), str(routing_key))
            if not self.events.get("basic_return"):
                return None
        return super()._on_basic_return(reply_code, reply_text, exchange, routing_key, message)

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
        upstream.set_confirm_selected(self, False)
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
        if connection is None or not self.is_open or _amqp_transport(connection) is None:
            return super().close(*args, **kwargs)  # nothing on the wire: returns at once
        if connection.may_be_dead():
            # No Channel.Close on a flow that may be dead: the whole
            # connection goes (the broker closes its channels with it).
            connection.drop("channel close on a connection that may be dead")
            return None
        with connection.teardown_bound(swallow=True):
            return super().close(*args, **kwargs)

    def basic_cancel(self, consumer_tag: str, nowait: bool = False, argsig: str = "sb") -> Any:
        """Cancel a consumer, waiting for Cancel-Ok at most ``teardown_timeout`` (kombu#670).

        On a miss the connection is abandoned (the broker cancels every
        consumer of a closed connection) and :class:`TeardownTimeout` raised.
        """
        connection = self.connection
        if connection is None or nowait or _amqp_transport(connection) is None:
            return super().basic_cancel(consumer_tag, nowait, argsig)
        if connection.abandoned:
            raise TeardownTimeout("basic_cancel on an abandoned connection")
        with connection.teardown_bound(swallow=False, closing=False):
            return super().basic_cancel(consumer_tag, nowait, argsig)

    def basic_publish(self, *args: Any, **kwargs: Any) -> Any:
        """Stock publish (no confirms), refused at once while the broker blocks us."""
        started = monotonic()
        kwargs.pop("confirm_timeout", None)
        connection = self.connection
        if connection is not None:
            connection.poll_events()
        self._hp_refuse_if_blocked(started)
        return upstream.basic_publish(self, *args, **kwargs)

    def basic_publish_confirm(self, *args: Any, **kwargs: Any) -> Any:
        """Publish and wait for the broker's confirm, all within ``publish_timeout``."""
        started = monotonic()
        connection = self.connection
        if connection is None:
            return upstream.basic_publish(self, *args, **kwargs)  # raises: connection closed
        # Within a harden()ed publish, only what is left of its one deadline
        # over every retry (guard/publishing.py).
        limit = publishing.remaining(connection.publish_timeout)
        for key in ("timeout", "confirm_timeout"):
            given = kwargs.pop(key, None)
            if given:
                limit = min(limit, float(given))
        at = started + limit
        connection.poll_events()
        self._hp_refuse_if_blocked(started)
        if not upstream.confirm_selected(self):
            upstream.set_confirm_selected(self, True)
            self.confirm_select()
        tag = self._hp_next_tag + 1
        self._hp_inflight, self._hp_returned = tag, None
        try:
            return self._hp_publish_and_wait(tag, started, at, limit, args, kwargs)
        finally:
            self._hp_inflight = None

    def _hp_publish_and_wait(
        self,
        tag: int,
        started: float,
        at: float,
        limit: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        connection = self.connection
        try:
            ret = upstream.basic_publish(
                self, *args, timeout=max(0.001, at - monotonic()), **kwargs
            )
        except amqp.exceptions.RecoverableConnectionError as exc:
            if monotonic() < at:
                raise  # closed connection: kombu reconnects and retries
            # The write timed out: part of a frame may be on the wire, so the
            # connection is unusable; drop it so the next publish reconnects.
            connection.abandon()
            note_path_fault("publish not written within publish_timeout")
            raise PublishTimeout(
                f"publish not written within {limit:.1f} s (broker not reading); connection dropped"
            ) from exc
        self._hp_next_tag = tag
        while not self._hp_is_settled(tag):
            self._hp_refuse_if_blocked(started, sent=True)
            remaining = at - monotonic()
            if remaining <= 0:
                connection.abandon()
                note_path_fault("no publisher confirm within publish_timeout")
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
        if self._hp_returned is not None:
            code, text, exchange, routing_key = self._hp_returned
            self._hp_returned = None
            raise PublishUnroutable(
                f"broker returned the message: {code} {text} (exchange {exchange!r}, routing key "
                f"{routing_key!r}): no queue took it, nobody will run it"
            )
        return ret


#: Frames one bounded wait reads at most (heartbeats, other channels' frames)
#: before giving up: the loop is bounded in count as well as in time.
_MAX_FRAMES_PER_WAIT = 100_000


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
    _METHODS: ClassVar[dict[Any, Any]] = upstream.methods_with_blocked_reason(pyamqp.Connection)

    #: Why the broker blocks our publishes (None: not blocked), and since when.
    blocked_reason: str | None = None
    blocked_since: float | None = None

    #: When the handshake completed (monotonic), and whether the guard gave
    #: up on the socket (no more waiting for the broker on it).
    connected_at: float | None = None
    abandoned: bool = False
    #: The deadline of the teardown in progress (None: not tearing down),
    #: and the one the first close of this connection armed.
    _teardown_at: float | None = None
    _closing_deadline: float | None = None

    def __init__(
        self,
        *args: Any,
        handshake_deadline: float | None = None,
        publish_timeout: float | None = None,
        confirm_publish: bool = True,
        refuse_when_blocked: bool = True,
        on_blocked: Callable[[str], Any] | None = None,
        on_unblocked: Callable[[], Any] | None = None,
        teardown_timeout: float | None = None,
        silence_limit: float | None = None,
        **kwargs: Any,
    ) -> None:
        # Fail closed: a py-amqp/kombu that renamed what the guard relies on
        # raises UpstreamChanged here, not a silently weaker connection later
        # (once per process; later calls return at once).
        upstream.check("amqp")
        upstream.check("kombu")
        super().__init__(*args, confirm_publish=confirm_publish, **kwargs)
        self.handshake_deadline: float = float(
            handshake_deadline if handshake_deadline is not None else Policy().handshake_deadline
        )
        self.publish_timeout: float = float(
            publish_timeout if publish_timeout is not None else Policy().publish_timeout or 7.5
        )
        self.teardown_timeout: float = float(
            teardown_timeout if teardown_timeout is not None else Policy().teardown_timeout or 1.5
        )
        #: False for a worker's own consumer connection: its control messages
        #: (mingle, pidbox replies) must not turn a broker alarm into a crash.
        self.refuse_when_blocked = refuse_when_blocked
        self.on_blocked = on_blocked
        #: Transport option ``silence_limit`` (seconds; None: off, py-amqp's
        #: 2 x heartbeat only): see :meth:`heartbeat_tick`.
        self.silence_limit = None if silence_limit is None else float(silence_limit)
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

    def drain_events(self, timeout: float | None = None) -> Any:
        """py-amqp's wait for frames; within a harden()ed publish, only what is left of it.

        A synchronous method with no timeout of its own (Channel.Open,
        Exchange/Queue.Declare, Confirm.Select before the message is sent)
        waits for the broker's answer on this read. Unbounded, one attempt
        could outlast the publish's whole deadline (measured: cluster-partition
        x celery-prefork+harden, PublishTimeout after 12.1 s for publish_timeout
        7.5 s: the minority node does not answer a declare). A wait with the
        caller's own timeout (the confirm wait) is left to the caller.
        """
        deadline = publishing.current()
        if timeout is not None or deadline is None:
            return super().drain_events(timeout=timeout)
        # py-amqp's drain_events reads frame after frame with the *same*
        # timeout until one completes a method: each heartbeat starts it
        # again (measured: cluster-partition x kombu+guard, 10.2 s for 7.5 s
        # while the minority node kept sending heartbeats). One frame at a
        # time here, each with only what is left.
        for _ in range(_MAX_FRAMES_PER_WAIT):
            left = deadline.remaining()
            if left <= 0:
                raise self._hp_no_answer(deadline, None)
            try:
                if self.blocking_read(timeout=left):
                    return None
            except TimeoutError as exc:
                if deadline.remaining() > 0:
                    raise  # the socket's own read timeout, not the deadline's
                raise self._hp_no_answer(deadline, exc) from exc
        raise self._hp_no_answer(deadline, None)

    def _hp_no_answer(
        self, deadline: publishing.PublishDeadline, exc: BaseException | None
    ) -> BaseException:
        # The wait stopped mid-conversation: the connection is unusable.
        self.abandon()
        note_path_fault("no answer within publish_timeout")
        return PublishTimeout(
            f"no answer from the broker {self.host} within publish_timeout "
            f"{deadline.limit:.1f} s (waiting for a declare or channel open, before "
            "the message was sent); connection dropped"
        )

    def poll_events(self) -> None:
        """Read the frames already waiting, without blocking (blocked/unblocked news)."""
        if upstream.amqp_transport(self) is None or not self.connected:
            return
        for _ in range(_POLL_FRAMES):
            try:
                self.blocking_read(timeout=0)
            except TimeoutError:
                return

    def abandon(self) -> None:
        """Drop a connection a publish gave up on, so the next use reconnects."""
        self.abandoned = True
        transport = upstream.amqp_transport(self)
        sock = getattr(transport, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                shutdown_socket(sock)  # TLS: keeps the reader's error an OSError

    def drop(self, why: str = "") -> None:
        """Abandon the socket and release everything: shutdown + close, no Close-Ok.

        Never waits: ``shutdown()`` first makes every later read return EOF and
        every write fail at once (a TLS close_notify included).
        """
        if _amqp_transport(self) is None:
            return
        logger.info("hangproof.guard: teardown: abandoning %s (%s)", self.host, why or "dropped")
        self.abandon()
        self.collect()

    def may_be_dead(self) -> bool:
        """True if this connection may sit on a dead flow: abandoned, or older than the last path fault.

        >>> GuardConnection(host="127.0.0.1:1").may_be_dead()
        False
        """
        if self.abandoned:
            return True
        fault_at = _path_fault_at
        return (
            fault_at is not None and self.connected_at is not None and self.connected_at <= fault_at
        )

    @contextlib.contextmanager
    def teardown_bound(self, *, swallow: bool, closing: bool = True) -> Any:
        """Bound every read and write inside by one deadline, ``teardown_timeout`` from the first.

        Nested uses share the outer deadline, and every close of one
        connection (``closing``: its channels' and its own) shares the first
        close's. On a miss the connection is dropped; then
        ``swallow`` makes the call return (a close is done either way),
        otherwise :class:`TeardownTimeout` is raised.
        """
        outer = self._teardown_at is None
        transport = _amqp_transport(self)
        sock = getattr(transport, "sock", None)
        if outer:
            # kombu closes the default channel, then the connection: both
            # share the deadline the first close armed.
            if closing and self._closing_deadline is None:
                self._closing_deadline = monotonic() + self.teardown_timeout
            self._teardown_at = self._closing_deadline or monotonic() + self.teardown_timeout
            # Only while tearing down: the per-frame path stays stock.
            self.drain_events = self._drain_events_before_teardown_deadline  # type: ignore[method-assign]
        saved_timeout = sock.gettimeout() if sock is not None else None
        try:
            if sock is not None:
                # Writes too: a full send buffer (broker not reading) would
                # otherwise wait write_timeout.
                sock.settimeout(max(0.001, self._teardown_at - monotonic()))
            yield
        except OSError as exc:
            # socket.timeout (our deadline), or a socket the kernel already
            # gave up on: nothing more to wait for on it.
            timed_out = isinstance(exc, TimeoutError)
            why = f"no answer within {self.teardown_timeout:.1f} s" if timed_out else repr(exc)
            self.drop(f"teardown: {why}")
            if not swallow:
                if timed_out and not isinstance(exc, TeardownTimeout):
                    raise TeardownTimeout(
                        f"no answer from {self.host} within teardown_timeout "
                        f"{self.teardown_timeout:.1f} s; connection abandoned"
                    ) from exc
                raise
        finally:
            if outer:
                self._teardown_at = None
                self.__dict__.pop("drain_events", None)
            if sock is not None and _amqp_transport(self) is transport and not self.abandoned:
                with contextlib.suppress(OSError):
                    sock.settimeout(saved_timeout)

    def _drain_events_before_teardown_deadline(self, timeout: float | None = None) -> None:
        # py-amqp's wait() reads frame by frame with one per-read timeout;
        # here the reads share what is left of the teardown deadline, so
        # frames that keep arriving (heartbeats) cannot stretch it.
        at = self._teardown_at
        while True:
            remaining = None if at is None else at - monotonic()
            if remaining is not None and remaining <= 0:
                raise TeardownTimeout(f"teardown_timeout {self.teardown_timeout:.1f} s exceeded")
            if timeout is not None:
                remaining = timeout if remaining is None else min(timeout, remaining)
            if self.blocking_read(remaining):
                return

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close, never waiting longer than ``teardown_timeout``.

        A blocked connection is dropped (the broker would not read Close); so
        is one that may be dead (:meth:`may_be_dead`); otherwise the graceful
        close gets ``teardown_timeout`` in all, then the socket is abandoned.
        """
        if self.blocked_reason is not None and upstream.amqp_transport(self) is not None:
            self.collect()
            return None
        if _amqp_transport(self) is None:
            return super().close(*args, **kwargs)
        if self.may_be_dead():
            self.drop("closing a connection that may be dead")
            return None
        with self.teardown_bound(swallow=True):
            return super().close(*args, **kwargs)

    def heartbeat_tick(self, rate: int = 2) -> Any:
        """py-amqp's heartbeat check; a miss is also a path fault (see :func:`note_path_fault`).

        With ``silence_limit`` (a kombu consumer without the Celery watchdog:
        ``Policy.silence_limit``, calling ``heartbeat_check()`` at least every
        ``Policy.watchdog_interval``), it also raises ``ConnectionForced``
        once no broker frame arrived for longer than that: py-amqp alone waits
        2 x heartbeat (6 s at the 3 s minimum), later than a small
        ``stall_timeout``. RabbitMQ sends a heartbeat every heartbeat / 2 on
        an idle link, so a healthy link is never that silent.
        """
        try:
            result = super().heartbeat_tick(rate)
        except amqp.exceptions.ConnectionForced:
            note_path_fault(f"heartbeats missed on {self.host}")
            raise
        silent = silent_for(self.last_inbound_frame_at, monotonic(), self.silence_limit)
        if silent is not None and self.connected:
            note_path_fault(f"link silent on {self.host}")
            logger.warning(
                "hangproof.guard: stall-detected link-silent: no inbound frame for %.1f s "
                "(> silence_limit %.1f s) on %s",
                silent,
                self.silence_limit,
                self.host,
            )
            raise amqp.exceptions.ConnectionForced(
                f"link silent: no inbound frame for {silent:.1f} s "
                f"(> silence_limit {self.silence_limit:g} s)"
            )
        return result

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
        if upstream.amqp_transport(self) is None:
            return None
        count = upstream.inbound_frame_count(self)
        if count != self._clock_count:
            self._clock_count = count
            self._clock_at = monotonic()
        return self._clock_at

    def connect(self, callback: Callable[[], Any] | None = None) -> Any:
        if self.connected:
            return super().connect(callback)
        # A connect made by a harden()ed publish gets only what is left of the
        # publish's deadline (guard/publishing.py); a spent one raises at once.
        deadline = publishing.remaining(self.handshake_deadline)
        if deadline <= 0:
            raise publishing.current().expired_error(None)  # type: ignore[union-attr]
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
        except Exception as exc:
            # Kept on the publish's deadline, so a later "deadline spent"
            # still says why the attempts failed (e.g. a wrong CA).
            spent = publishing.current()
            if spent is not None:
                spent.last_error = exc
            if not isinstance(exc, OSError):
                raise
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
            transport = upstream.amqp_transport(self)  # not .transport: that one reconnects
            if transport is not None and isinstance(transport, _FrameClock):
                transport.end_handshake()
                sock = transport.sock
                if sock is not None and self.connected:
                    # What stock py-amqp leaves on the established socket:
                    # blocking for TCP (transport._init_socket), connect_timeout
                    # for TLS (SSLTransport._setup_transport); undo the deadline's.
                    tls = isinstance(transport, GuardSSLTransport)
                    sock.settimeout(saved_connect_timeout if tls else None)
            if self.connected:
                # The handshake's frames just arrived: start the clock now.
                self._clock_count = upstream.inbound_frame_count(self)
                self._clock_at = monotonic()
                self.connected_at = self._clock_at
                self.abandoned = False
                self._closing_deadline = None


class Transport(pyamqp.Transport):
    """kombu's py-amqp transport, with :class:`GuardConnection` connections.

    Transport options: ``handshake_deadline`` (seconds; default
    ``Policy().handshake_deadline``), ``publish_timeout`` (seconds; default
    ``Policy().publish_timeout``), ``teardown_timeout`` (seconds; default
    ``Policy().teardown_timeout``), ``confirm_publish`` (default True),
    ``refuse_when_blocked`` (default True: raise :class:`BrokerBlocked`
    while the broker blocks publishing).
    """

    Connection = GuardConnection
    driver_name = "py-amqp"  # Celery checks driver_type/name for amqp behaviour


class SSLTransport(Transport):
    """The guard transport over TLS, as kombu's ``amqps`` (``pyamqp:SSLTransport``).

    ``ssl=True`` unless the connection already has TLS options (a dict, e.g.
    Celery's ``broker_use_ssl``), and the default port is 5671.

    >>> from kombu import Connection
    >>> Connection("hangproofs://guest:guest@mq.example.com//").transport.client.ssl
    True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.client.ssl:  # kombu.transport.pyamqp.SSLTransport does the same
            self.client.ssl = True


def silent_for(last_frame_at: float | None, now: float, limit: float | None) -> float | None:
    """Seconds the link has been silent, if more than ``limit`` (else None; None limit: off).

    >>> silent_for(10.0, 13.5, 3.2), silent_for(10.0, 13.0, 3.2), silent_for(10.0, 99.0, None)
    (3.5, None, None)
    """
    if limit is None or last_frame_at is None:
        return None
    silent = now - last_frame_at
    return round(silent, 3) if silent > limit else None


def last_inbound_frame_at(connection: Any) -> float | None:
    """The frame clock of a kombu or py-amqp connection, or None if unknown.

    >>> last_inbound_frame_at(object()) is None
    True
    """
    # A kombu Connection's ``.connection`` property *connects* when closed;
    # read the private slot so that looking at the clock never dials out.
    amqp_connection = upstream.kombu_amqp_connection(connection)
    return getattr(amqp_connection, "last_inbound_frame_at", None)
