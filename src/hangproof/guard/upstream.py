"""Every private upstream name hangproof relies on, in one place, checked at start-up.

The guard prefers front doors (bootsteps, ``worker_consumer``, ``amqp_cls``,
transport classes, transport options). Where no front door exists it reads or
overrides a private name of celery, kombu, py-amqp, aiormq or aio-pika. Every
such access is a function or constant of this module; nothing else in
``src/`` touches a private upstream name (``tests/unit/test_upstream.py``
parses the whole tree to keep it so).

**Fail closed.** A renamed private attribute must not quietly weaken the
guard (say, drop the handshake deadline). :func:`check` verifies, per package,
that every name below still exists and still does what the guard needs; it
runs when :func:`hangproof.celery.harden` runs, when the guard transport
makes its first connection object, and when :mod:`hangproof.aio` helpers
start. If upstream changed shape it raises :class:`UpstreamChanged`, one line
naming the package, its installed version and what is missing. The accessors
raise it too, instead of returning a silent ``None``.

Versions checked: every name is verified on the three version sets of the
compat matrix (``scripts/compat.py``, ``make compat``; docs/compat.md, which
runs :func:`check`'s names per set through ``scripts/compat_names.py``, the
unit tests and a 3-fault lab smoke): amqp 5.2.0 / 5.3.1 / 5.4.2, kombu 5.3.0 /
5.5.4 / 5.7.0, celery 5.3.0 / 5.5.3 / 5.7.0, aiormq 6.8.0 / 6.9.4 / 7.2.4,
aio-pika 9.4.0 / 9.5.8 / 10.2.1. When you add a version, add it to the matrix.

| package | name | kind | why the guard needs it | without it |
|---|---|---|---|---|
| amqp | ``TCPTransport/SSLTransport._quick_recv`` | instance attr, read + replaced during the handshake | py-amqp reads every byte through it; wrapping it bounds each handshake ``recv`` by the time left to one total deadline | the handshake deadline silently disappears: a peer that drips heartbeats (or nothing) holds the client forever (INCIDENT.md) |
| amqp | ``_AbstractTransport._setup_transport`` | method, overridden (calls super) | the only hook between TCP connect and the first read, where ``_quick_recv`` exists | same as above |
| amqp | ``SSLTransport._setup_transport`` / ``_shutdown_transport`` | methods, overridden | the TLS handshake gets what is left of the one deadline and a refused certificate becomes one line; close sends close_notify without waiting for the peer's (``unwrap()`` would read until it arrives) | a frozen broker or a silent path holds a TLS close (and so the worker's recovery) for ``connect_timeout``, forever under gevent |
| amqp | ``Connection._transport`` | instance attr, read | the transport *without* py-amqp's deprecated lazy connect (``.transport`` dials when there is none) | reading the frame clock or shutting a socket down from the watchdog thread could dial the broker |
| amqp | ``Connection.bytes_recv`` | public but undocumented counter | py-amqp counts inbound frames in it (``method_framing``); the frame clock samples it at zero per-frame cost | no inbound-frame clock: a silent link is seen only by heartbeats |
| amqp | ``Connection._METHODS`` | class attr, extended | py-amqp declares ``connection.blocked`` without its ``reason`` argument | the reason ("low on memory") is lost; with a spec mismatch the frame would not parse |
| amqp | ``Connection._on_blocked/_on_unblocked`` | methods, overridden | py-amqp dispatches connection.blocked/unblocked to them (``_setup_listeners``) | ``BrokerBlocked`` never raised: a publish under a memory alarm hangs or lies |
| amqp | ``Channel._on_basic_ack/_on_basic_nack`` | methods, overridden (call super) | py-amqp dispatches Basic.Ack/Nack to them; confirms are tracked by delivery tag | a late ack could confirm the wrong publish |
| amqp | ``Channel._on_basic_return`` | method, overridden (calls super outside a confirmed publish or with the caller's handlers) | py-amqp dispatches Basic.Return to it; the return of a mandatory publish arrives before its Basic.Ack, and becomes ``PublishUnroutable`` | a publish no queue took is confirmed and dropped: a false ok (queue-deleted) |
| amqp | ``Channel._basic_publish`` | method, called | the plain publish (``basic_publish`` is rebound to the confirm variant when ``confirm_publish``); the guard writes, then waits for the ack under one deadline | the confirm wait falls back to py-amqp's per-read timeout, which heartbeats reset |
| amqp | ``Channel._confirm_selected`` | instance attr, read + set | py-amqp's own "confirm.select sent" flag, kept in step with ours | confirm.select sent twice, or never |
| amqp | ``Channel._do_revive`` | method, overridden (calls super) | py-amqp reopens a channel the broker closed here; 5.2.0-5.4.1 keep ``_confirm_selected`` set (py-amqp#285), so the guard clears it | after a channel error (e.g. 404 on publish) every confirmed publish is a false ``PublishTimeout`` |
| amqp | ``_AbstractTransport._connect`` | method, overridden (calls super per address) | py-amqp resolves the broker's name in it with an unbounded ``getaddrinfo``; the guard looks the name up within the handshake deadline and dials each address through it | an unreachable resolver holds every reconnect ``timeout x attempts`` (10 s by glibc's defaults) past the deadline (celery#2417) |
| kombu | ``kombu.utils.functional.sleep`` | module attr, rebound under gevent only | ``retry_over_time`` (every ``ensure_connection`` retry) sleeps through the ``time.sleep`` it imported, and Celery's ``-P gevent`` imports it *before* monkey-patching (``maybe_patch_concurrency`` loads the pool first), so each retry pause blocks the whole hub; rebound to the patched ``time.sleep`` | under gevent every reconnect pause freezes every greenlet: the liveness endpoint, heartbeats, running tasks (measured: /livez unanswered for up to 5 s while reconnecting) |
| kombu | ``Connection._connection`` | instance attr, read | the py-amqp connection *without* connecting (``.connection`` dials when closed) | the watchdog thread could dial the broker just by looking at the clock |
| celery | ``Celery._connection`` | method, source checked | it builds every broker connection from ``app.amqp.Connection`` (front door: ``amqp_cls``), which carries the policy's reconnect intervals | the worker reconnects with kombu's 2 s, +2 s, max 30 s |
| aiormq | ``Connection.__last_frame_time`` (``_Connection__last_frame_time``) | name-mangled instance attr, read (``__reader``'s source checked: it must still stamp it per frame) | aiormq stamps every inbound frame there; no public accessor | the aio watchdog never sees a silent link (aiormq's own check waits 3 × (heartbeat + 1)) |
| aiormq | ``Connection.__connection_unblocked`` (``_Connection__connection_unblocked``) | name-mangled asyncio.Event, read | aiormq's connection.blocked state; no public accessor | ``hangproof.aio.publish`` waits ``publish_timeout`` instead of raising ``BrokerBlocked`` at once |
| aio-pika | ``Channel._connection`` | instance attr, read | a channel's connection (for the aiormq state above and the policy): the aiormq connection in 9.x, the aio-pika one in 10.x; no public attribute | ``publish`` cannot see connection.blocked |

Public but undocumented hooks are checked too (a rename would equally weaken
the guard): py-amqp ``Connection.blocking_read``, ``Connection.Transport``,
``Channel.basic_publish_confirm``; kombu ``transport.TRANSPORT_ALIASES``,
``pyamqp.Connection/Channel/Transport``; celery
``Consumer.ensure_connected`` (calls ``conn.ensure_connection`` without
intervals), ``Consumer.on_connection_error_after_connected/_before_connected``,
``celery.worker.state.active_requests``, ``Celery.amqp_cls``,
``AMQP.Connection``; aio-pika ``connection.make_url``,
``RobustConnection.transport`` / ``.connect(timeout=)``.

    >>> check("amqp")  # silent when the installed py-amqp has everything
    >>> UpstreamChanged.__mro__[1].__name__
    'HangproofError'
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hangproof.errors import HangproofError

#: The releases every requirement below was verified on (see the docstring).
CHECKED_VERSIONS: dict[str, str] = {
    "amqp": "5.2.0, 5.3.1, 5.4.2",
    "kombu": "5.3.0, 5.5.4, 5.7.0",
    "celery": "5.3.0, 5.5.3, 5.7.0",
    "aiormq": "6.8.0, 6.9.4, 7.2.4",
    "aio-pika": "9.4.0, 9.5.8, 10.2.1",
}

#: Private upstream names hangproof's own subclasses *define* (override),
#: by the upstream class that defines them first. Everything else private is
#: reached only through the accessors below.
OVERRIDES: dict[str, frozenset[str]] = {
    "amqp.transport:_AbstractTransport": frozenset({"_setup_transport", "_connect"}),
    "amqp.transport:SSLTransport": frozenset({"_setup_transport", "_shutdown_transport"}),
    "amqp.connection:Connection": frozenset({"_METHODS", "_on_blocked", "_on_unblocked"}),
    "amqp.channel:Channel": frozenset(
        {"_on_basic_ack", "_on_basic_nack", "_do_revive", "_on_basic_return"}
    ),
}

# The mangled names aiormq keeps its frame clock and blocked state in.
_AIORMQ_LAST_FRAME = "_Connection__last_frame_time"
_AIORMQ_UNBLOCKED = "_Connection__connection_unblocked"


class UpstreamChanged(HangproofError):
    """An upstream package no longer has a (private) name the guard relies on.

    >>> str(UpstreamChanged.missing("amqp", ["TCPTransport._quick_recv (gone)"]))[:60]
    'hangproof: amqp ... no longer has what the guard relies on: '
    """

    @classmethod
    def missing(cls, package: str, what: list[str], version: str = "...") -> UpstreamChanged:
        checked = CHECKED_VERSIONS.get(package, "?")
        return cls(
            f"hangproof: {package} {version} no longer has what the guard relies on: "
            f"{'; '.join(what)}. Running on would silently weaken the guard, so it refuses. "
            f"hangproof was checked with {package} {checked}: install one of those "
            f"(e.g. pip install '{package}=={checked.rsplit(', ', 1)[-1]}') or a hangproof "
            f"release that supports {package} {version}"
        )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _fail(package: str, what: str) -> UpstreamChanged:
    return UpstreamChanged.missing(package, [what], _version(package))


# -- accessors: py-amqp --------------------------------------------------------


def quick_recv(transport: Any) -> Callable[..., Any]:
    """py-amqp's per-transport ``recv`` (``_quick_recv``), set by ``_setup_transport``."""
    try:
        return transport._quick_recv
    except AttributeError:
        raise _fail(
            "amqp", f"{type(transport).__name__}._quick_recv (the handshake deadline wraps it)"
        ) from None


def set_quick_recv(transport: Any, recv: Callable[..., Any]) -> None:
    """Replace py-amqp's ``_quick_recv`` (the handshake's deadline wrapper, and back)."""
    transport._quick_recv = recv


def amqp_transport(connection: Any) -> Any:
    """A py-amqp connection's transport, or None; never connects (``_transport``)."""
    try:
        return connection._transport
    except AttributeError:
        raise _fail("amqp", "Connection._transport (the transport without lazy connect)") from None


def inbound_frame_count(connection: Any) -> int:
    """py-amqp's count of inbound frames (``bytes_recv``, heartbeats included)."""
    return connection.bytes_recv


def basic_publish(channel: Any, *args: Any, **kwargs: Any) -> Any:
    """py-amqp's plain publish (``Channel._basic_publish``), whatever ``basic_publish`` is."""
    return channel._basic_publish(*args, **kwargs)


def confirm_selected(channel: Any) -> bool:
    """py-amqp's "confirm.select already sent" flag (``Channel._confirm_selected``)."""
    return bool(channel._confirm_selected)


def set_confirm_selected(channel: Any, value: bool) -> None:
    channel._confirm_selected = value


def methods_with_blocked_reason(connection_class: type) -> dict[Any, Any]:
    """``connection_class._METHODS`` with connection.blocked's ``reason`` (shortstr) read.

    py-amqp declares ``Connection.Blocked`` without arguments, so the reason
    RabbitMQ sends ("low on memory") is dropped.
    """
    from amqp import spec

    return {
        **connection_class._METHODS,
        spec.Connection.Blocked: spec.method(spec.Connection.Blocked, "s"),
    }


# -- accessors: kombu ----------------------------------------------------------


def kombu_amqp_connection(connection: Any) -> Any:
    """The py-amqp connection under a kombu ``Connection``, or None; never connects.

    Anything that is not a kombu ``Connection`` is returned as it is (it may
    already be a py-amqp connection).

    >>> kombu_amqp_connection(None) is None
    True
    """
    import kombu

    if not isinstance(connection, kombu.Connection):
        return connection
    try:
        return connection._connection
    except AttributeError:
        raise _fail("kombu", "Connection._connection (the connection without connecting)") from None


def consumer_socket(connection: Any) -> socket.socket | None:
    """The socket under a kombu (or py-amqp) connection, or None when not connected.

    >>> consumer_socket(None) is None
    True
    """
    amqp_connection = kombu_amqp_connection(connection)
    if amqp_connection is None:
        return None
    transport = amqp_transport(amqp_connection)
    return None if transport is None else transport.sock


# -- accessors: aiormq and aio-pika -------------------------------------------


def aiormq_last_frame_time(connection: Any) -> float:
    """When aiormq last read a frame on ``connection`` (its loop's time)."""
    try:
        return float(getattr(connection, _AIORMQ_LAST_FRAME))
    except AttributeError:
        raise _fail("aiormq", "Connection.__last_frame_time (the aio watchdog's clock)") from None


def aiormq_blocked(connection: Any) -> bool:
    """True while the broker blocks ``connection`` (connection.blocked, not yet unblocked)."""
    try:
        event = getattr(connection, _AIORMQ_UNBLOCKED)
    except AttributeError:
        raise _fail("aiormq", "Connection.__connection_unblocked (connection.blocked)") from None
    return not event.is_set()


def _channel_holds(channel: Any) -> Any:
    try:
        return channel._connection
    except AttributeError:
        raise _fail("aio-pika", "Channel._connection (a channel's connection)") from None


def aio_channel_link(channel: Any) -> Any:
    """The aiormq connection under an aio-pika channel now (None while reconnecting).

    ``Channel._connection`` holds the aiormq connection in aio-pika 9 (a
    RobustChannel swaps it on reconnect) and the aio-pika connection in 10.
    """
    import aiormq.abc

    held = _channel_holds(channel)
    if isinstance(held, aiormq.abc.AbstractConnection):
        return held
    try:
        transport = held.transport
    except AttributeError:
        raise _fail(
            "aio-pika", "Channel._connection is neither an aiormq nor an aio-pika connection"
        ) from None
    return None if transport is None else transport.connection


def aio_channel_connection(channel: Any) -> Any:
    """The aio-pika connection of a channel, or None where aio-pika does not keep it (9.x)."""
    import aiormq.abc

    held = _channel_holds(channel)
    return None if isinstance(held, aiormq.abc.AbstractConnection) else held


# -- the start-up check ----------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """One name (or behaviour) the guard needs from a package.

    ``probe`` returns None when all is well, or what is wrong.
    """

    package: str
    name: str
    probe: Callable[[], str | None]


def _has(owner: Any, *names: str) -> str | None:
    missing = [n for n in names if not hasattr(owner, n)]
    if missing:
        return f"{getattr(owner, '__qualname__', owner)} has no {', '.join(missing)}"
    return None


def _source_has(function: Any, *snippets: str) -> str | None:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError) as exc:
        return f"cannot read the source of {function!r} ({exc})"
    missing = [s for s in snippets if s not in source]
    if missing:
        return f"{function.__qualname__} no longer does {' / '.join(repr(s) for s in missing)}"
    return None


def _amqp_tcp_quick_recv() -> str | None:
    # Behaviour, not just a name: after _setup_transport the transport reads
    # through _quick_recv, so replacing it bounds every recv.
    from amqp.transport import TCPTransport

    a, b = socket.socketpair()
    try:
        transport = TCPTransport.__new__(TCPTransport)
        transport.sock = a
        transport._setup_transport()
        if not hasattr(transport, "_quick_recv"):
            return "TCPTransport._setup_transport no longer sets _quick_recv"
        seen: list[int] = []

        def recording(n: int, *rest: Any) -> bytes:
            seen.append(n)
            return b"\x01" * n

        transport._quick_recv = recording
        transport._read(4)
        if not seen:
            return "TCPTransport._read no longer reads through _quick_recv"
    finally:
        a.close()
        b.close()
    return None


def _amqp_ssl_quick_recv() -> str | None:
    from amqp.transport import SSLTransport

    return _source_has(SSLTransport._setup_transport, "self._quick_recv") or _source_has(
        SSLTransport._read, "self._quick_recv"
    )


def _amqp_ssl_shutdown_hook() -> str | None:
    from amqp.transport import SSLTransport, _AbstractTransport

    # The guard's SSLTransport._shutdown_transport sends close_notify without
    # waiting for the peer's (a dead peer never sends it); py-amqp must still
    # call it from close() for that to take effect.
    return _has(SSLTransport, "_shutdown_transport") or _source_has(
        _AbstractTransport.close, "self._shutdown_transport()"
    )


def _amqp_setup_hook() -> str | None:
    from amqp.transport import _AbstractTransport

    # py-amqp calls it from connect(), after the TCP connect and the socket
    # options, before the protocol header is written.
    return _has(_AbstractTransport, "_setup_transport") or _source_has(
        _AbstractTransport, "self._setup_transport()"
    )


def _amqp_connect_hook() -> str | None:
    from amqp.transport import _AbstractTransport

    # The guard's _connect looks the broker's name up within the handshake
    # deadline, then dials each address through py-amqp's own _connect; that
    # needs connect() to go through _connect(host, port, timeout).
    problem = _has(_AbstractTransport, "_connect") or _source_has(
        _AbstractTransport.connect, "self._connect(self.host, self.port, self.connect_timeout)"
    )
    if problem:
        return problem
    if list(inspect.signature(_AbstractTransport._connect).parameters) != [
        "self", "host", "port", "timeout"
    ]:  # fmt: skip
        return "_AbstractTransport._connect no longer takes (host, port, timeout)"
    return None


def _amqp_connection_names() -> str | None:
    import amqp
    from amqp import spec

    problem = _has(
        amqp.Connection,
        "_METHODS",
        "_on_blocked",
        "_on_unblocked",
        "bytes_recv",
        "blocking_read",
        "Transport",
        "connected",
        "collect",
    )
    if problem:
        return problem
    if spec.Connection.Blocked not in amqp.Connection._METHODS:
        return "Connection._METHODS has no connection.blocked entry"
    connection = amqp.Connection("127.0.0.1:1")  # not connected: no I/O
    if "_transport" not in vars(connection) or connection._transport is not None:
        return "a new Connection has no _transport slot set to None"
    callbacks = getattr(connection, "_callbacks", {})
    for method, handler in (
        (spec.Connection.Blocked, "_on_blocked"),
        (spec.Connection.Unblocked, "_on_unblocked"),
    ):
        bound = callbacks.get(method)
        if getattr(bound, "__func__", None) is not getattr(amqp.Connection, handler):
            return f"connection.{handler[4:]} is no longer dispatched to Connection.{handler}"
    from amqp import method_framing

    return _source_has(method_framing.frame_handler, "connection.bytes_recv += 1")


def _amqp_channel_names() -> str | None:
    import amqp
    from amqp import spec

    problem = _has(
        amqp.Channel,
        "_basic_publish",
        "basic_publish_confirm",
        "_on_basic_ack",
        "_on_basic_nack",
        "_do_revive",
        "_on_basic_return",
    )
    if problem:
        return problem
    if "timeout" not in inspect.signature(amqp.Channel._basic_publish).parameters:
        return "Channel._basic_publish takes no timeout"
    channel = amqp.Channel(amqp.Connection("127.0.0.1:1"), 1)  # not opened: no I/O
    if getattr(channel, "_confirm_selected", None) is not False:
        return "a new Channel has no _confirm_selected flag"
    callbacks = getattr(channel, "_callbacks", {})
    for method, handler in (
        (spec.Basic.Ack, "_on_basic_ack"),
        (spec.Basic.Nack, "_on_basic_nack"),
        (spec.Basic.Return, "_on_basic_return"),
    ):
        bound = callbacks.get(method)
        if getattr(bound, "__func__", None) is not getattr(amqp.Channel, handler):
            return f"{method} is no longer dispatched to Channel.{handler}"
    return None


def cooperative_retry_sleep() -> bool:
    """Under gevent's monkey-patching, make kombu's retry pauses yield to the hub.

    Returns whether it rebound anything (False: no gevent, time not patched,
    or already cooperative). See the table above: ``kombu.utils.functional``
    holds the ``time.sleep`` it imported, and ``celery worker -P gevent``
    imports it before patching.
    """
    try:
        import gevent.monkey
    except ImportError:
        return False
    if not gevent.monkey.is_module_patched("time"):
        return False
    import time

    import kombu.utils.functional as functional

    current = getattr(functional, "sleep", None)
    if current is None:
        raise _fail("kombu", "kombu.utils.functional.sleep (gone)")
    if current is time.sleep:
        return False
    if current is not gevent.monkey.get_original("time", "sleep"):
        return False  # someone else's sleep: not ours to replace
    functional.sleep = time.sleep
    return True


def _kombu_names() -> str | None:
    import kombu
    import kombu.utils.functional as functional
    from kombu.transport import TRANSPORT_ALIASES, pyamqp

    if not callable(getattr(functional, "sleep", None)) or not callable(
        getattr(functional, "retry_over_time", None)
    ):
        return "kombu.utils.functional has no sleep / retry_over_time"

    if not isinstance(TRANSPORT_ALIASES, dict):
        return "kombu.transport.TRANSPORT_ALIASES is not a dict"
    problem = _has(pyamqp, "Connection", "Channel", "Transport") or _has(
        kombu.Connection, "ensure_connection", "transport_options"
    )
    if problem:
        return problem
    connection = kombu.Connection("amqp://127.0.0.1:1//")  # lazy: no I/O
    # A class default (None) that __init__ and close() reset, connect sets.
    if not hasattr(type(connection), "_connection") or connection._connection is not None:
        return "Connection has no _connection slot (None until connected)"
    return None


def _celery_names() -> str | None:
    from celery import Celery
    from celery.app.amqp import AMQP
    from celery.worker import state
    from celery.worker.consumer.consumer import Consumer

    return (
        _has(
            Consumer,
            "ensure_connected",
            "connection_for_read",
            "on_connection_error_after_connected",
            "on_connection_error_before_connected",
        )
        or _has(state, "active_requests")
        or _has(Celery, "amqp_cls", "_connection")
        or _has(AMQP, "Connection")
        or _source_has(Celery._connection, "self.amqp.Connection(")
        or _source_has(Consumer.ensure_connected, "conn.ensure_connection(")
    )


def _in_own_loop(probe: Callable[[], Any]) -> str | None:
    # Our own loop in a thread: the caller may be inside a running loop.
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(probe())), daemon=True)
    worker.start()
    worker.join(10)
    return result[0] if result else "could not build a connection object to look at it"


def _aiormq_names() -> str | None:
    import aiormq

    async def probe() -> str | None:
        connection = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")  # not connected
        if not isinstance(getattr(connection, _AIORMQ_LAST_FRAME, None), float | int):
            return "Connection has no __last_frame_time"
        if not isinstance(getattr(connection, _AIORMQ_UNBLOCKED, None), asyncio.Event):
            return "Connection has no __connection_unblocked event"
        return None

    return _in_own_loop(probe) or _source_has(
        aiormq.Connection._Connection__reader, "self.__last_frame_time = self.loop.time()"
    )


def _aio_pika_names() -> str | None:
    from aio_pika import connection, robust_connection

    async def probe() -> str | None:
        import types

        import aiormq

        robust = robust_connection.RobustConnection(connection.make_url("amqp://127.0.0.1:1/"))
        problem = _has(robust, "transport", "is_closed", "close", "reconnect_callbacks")
        if problem:
            return problem
        # Behaviour: a channel of a connection whose (public) transport holds
        # this aiormq link must lead back to that link.
        link = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")
        robust.transport = types.SimpleNamespace(connection=link)
        try:
            if aio_channel_link(robust.channel()) is not link:
                return "a channel no longer leads to its aiormq connection (Channel._connection)"
        finally:
            robust.transport = None  # nothing to close: it never connected
            await robust.close()
        return None

    problem = _has(connection, "make_url")
    if problem:
        return problem
    if "timeout" not in inspect.signature(robust_connection.RobustConnection.connect).parameters:
        return "RobustConnection.connect takes no timeout"
    return _in_own_loop(probe)


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("amqp", "TCPTransport._quick_recv", _amqp_tcp_quick_recv),
    Requirement("amqp", "SSLTransport._quick_recv", _amqp_ssl_quick_recv),
    Requirement("amqp", "_AbstractTransport._setup_transport", _amqp_setup_hook),
    Requirement("amqp", "SSLTransport._shutdown_transport", _amqp_ssl_shutdown_hook),
    Requirement("amqp", "Connection internals", _amqp_connection_names),
    Requirement("amqp", "Channel internals", _amqp_channel_names),
    Requirement("kombu", "Connection._connection", _kombu_names),
    Requirement("celery", "Consumer and app hooks", _celery_names),
    Requirement("aiormq", "Connection.__last_frame_time/__connection_unblocked", _aiormq_names),
    Requirement("aio-pika", "Channel._connection, RobustConnection", _aio_pika_names),
    Requirement("amqp", "_AbstractTransport._connect", _amqp_connect_hook),
)

_passed: set[str] = set()
_passed_lock = threading.Lock()


def check(package: str) -> None:
    """Verify every requirement on ``package``; raise :class:`UpstreamChanged` if any fails.

    Runs the probes once per process (later calls return at once).

    >>> check("kombu")
    >>> check("nosuch")
    Traceback (most recent call last):
    ValueError: no upstream requirements for 'nosuch'
    """
    if package in _passed:
        return
    requirements = [r for r in REQUIREMENTS if r.package == package]
    if not requirements:
        raise ValueError(f"no upstream requirements for {package!r}")
    problems: list[str] = []
    for requirement in requirements:
        try:
            problem = requirement.probe()
        except ImportError:
            raise
        except Exception as exc:  # a probe that breaks is a shape change too
            problem = f"{requirement.name}: {type(exc).__name__}: {exc}"
        if problem:
            problems.append(problem)
    if problems:
        raise UpstreamChanged.missing(package, problems, _version(package))
    with _passed_lock:
        _passed.add(package)


def reset() -> None:
    """Forget earlier successful checks (tests that fake a renamed attribute)."""
    with _passed_lock:
        _passed.clear()
