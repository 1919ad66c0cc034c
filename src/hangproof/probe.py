"""``hangproof probe``: does this broker address really speak AMQP, and where does it stall?

A staged AMQP 0-9-1 client handshake over a plain (or TLS) socket, under ONE
total deadline: DNS -> TCP connect -> (TLS) -> protocol header -> Start ->
Start-Ok -> Tune -> Tune-Ok -> Open -> Open-Ok -> Close. Every wait is a
``select`` bounded by the time left, never a per-read timeout: INCIDENT.md shows
why (py-amqp's per-read timeout is reset by every heartbeat and a port-holder
never answers at all).

    >>> result = probe("amqp://guest:guest@127.0.0.1:1/", timeout=2)  # doctest: +SKIP
    >>> result.verdict, [s.stage for s in result.stages]  # doctest: +SKIP
    (<Verdict.REFUSED: 'refused'>, ['dns', 'tcp-connect'])

Also runnable inside a namespace without the console script:
``ip netns exec NS python -m hangproof.probe amqp://... --json``.
"""

from __future__ import annotations

import datetime
import decimal
import errno
import ipaddress
import os
import select
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from hangproof.amqp import (
    ClientHandshake,
    CloseOkReceived,
    CloseReceived,
    OpenOkReceived,
    PeerClosed,
    ProtocolError,
    ServerProtocolHeader,
    StartReceived,
    State,
    TuneReceived,
)
from hangproof.credentials import MASK, mask_url
from hangproof.errors import HangproofError
from hangproof.failure import VERDICT_HINTS, Verdict

#: ARCHITECTURE.md / issue 4: the whole probe gets 10 s unless told otherwise.
DEFAULT_TIMEOUT = 10.0
#: One ``recv`` reads at most this much; the state machine caps what it keeps.
RECV_SIZE = 65536
#: Loop guard: no honest handshake needs this many reads. A peer dripping one
#: byte at a time is stopped by the deadline long before; this only bounds the
#: loop if the clock misbehaves.
MAX_READS = 1_000_000
#: Schemes we accept. ``pyamqp`` is how Celery users often spell broker_url.
AMQP_SCHEMES = {"amqp": 5672, "pyamqp": 5672, "amqps": 5671}

#: Stage names, in order (issue 4). Tune-Ok and Open leave in one write; its
#: time is reported on ``tune-ok`` and ``open`` shows 0.
STAGES = (
    "dns",
    "tcp-connect",
    "tls",
    "protocol-header",
    "start",
    "start-ok",
    "tune",
    "tune-ok",
    "open",
    "open-ok",
    "close",
    "tls-check",  # only after a plain-text probe was closed without a byte
)

# mask_url and MASK come from hangproof.credentials, the package's one masker;
# callers that import them from here keep working.


@dataclass(frozen=True)
class AmqpUrl:
    """A parsed broker URL. The password never appears in ``repr`` or :meth:`masked`."""

    scheme: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    vhost: str

    @property
    def tls(self) -> bool:
        return self.scheme == "amqps"

    def masked(self) -> str:
        """The URL as we echo it: password replaced by ``***``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = "" if self.vhost == "/" else self.vhost.replace("%", "%25").replace("/", "%2F")
        return f"{self.scheme}://{self.username}:{MASK}@{host}:{self.port}/{vhost}"


def parse_amqp_url(url: str) -> AmqpUrl:
    """Parse ``amqp[s]://user:pass@host:port/vhost``; raise :class:`HangproofError` if not one.

    The vhost follows what Celery/kombu users write: an empty path, ``/`` and
    ``//`` all mean ``/``; otherwise the path minus its leading slash,
    percent-decoded (``/%2F`` is ``/``). User and password default to guest.

    >>> parse_amqp_url("amqp://bob:pw@rabbit/v").vhost, parse_amqp_url("amqps://h").port
    ('v', 5671)
    >>> parse_amqp_url("http://x")
    Traceback (most recent call last):
    ...
    hangproof.errors.HangproofError: not an AMQP URL: 'http://x' (expected amqp://user:pass@host:port/vhost)
    """
    expected = "(expected amqp://user:pass@host:port/vhost)"
    shown = mask_url(url)
    text = url.strip()
    hint = RESERVED_HINT if "@" in text else ""
    try:
        parts = urlsplit(text)
        if "@" in text[len(parts.scheme) + 3 + len(parts.netloc) :]:
            # A raw '/', '#' or '?' in the password ended the authority early:
            # the password's tail, the '@' and the host landed in the path,
            # query or fragment. (A vhost with '@' is written %40.)
            raise HangproofError(
                f"not an AMQP URL: {shown!r} ('@' after the host{hint}) {expected}"
            )
        port = parts.port
    except ValueError as exc:
        # Never echo urllib's message: for "amqp://u:pa/ss@h" it quotes the
        # password's head as the "port".
        raise HangproofError(
            f"not an AMQP URL: {shown!r} ({_urllib_reason(exc)}{hint}) {expected}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in AMQP_SCHEMES or not parts.hostname:
        raise HangproofError(f"not an AMQP URL: {shown!r} {expected}")
    path = parts.path
    vhost = "/" if path in ("", "/", "//") else unquote(path[1:])
    return AmqpUrl(
        scheme="amqps" if scheme == "amqps" else "amqp",
        host=parts.hostname,
        port=port or AMQP_SCHEMES[scheme],
        username=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        vhost=vhost,
    )


#: Said whenever a URL with credentials fails to parse: the usual cause.
RESERVED_HINT = "; percent-encode / # ? @ : in the user or password as %2F %23 %3F %40 %3A"


def _urllib_reason(exc: ValueError) -> str:
    """urllib's complaint in our words, without the text it quotes from the URL."""
    message = str(exc)
    if "out of range" in message:
        return "the port is out of range 0-65535"
    if "Port could not be cast" in message:
        return "the port is not a number"
    if "IPv6" in message:
        return "malformed [IPv6] host"
    return "malformed URL"


@dataclass
class StageResult:
    """One timed step of the probe."""

    stage: str
    seconds: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "seconds": round(self.seconds, 6), "ok": self.ok}


@dataclass
class ProbeResult:
    """What :func:`probe` found. ``to_dict()`` is the ``--json`` document.

    ``verdict``, ``stages`` and ``hint`` are the contract (ARCHITECTURE.md);
    the rest helps a human: ``detail`` is the specific reason (reply text,
    errno), ``address`` the ip:port actually reached.
    """

    url: str  # password masked
    verdict: Verdict
    stages: list[StageResult]
    detail: str = ""
    seconds: float = 0.0
    timeout: float = DEFAULT_TIMEOUT
    address: str | None = None
    server_properties: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, int] | None = None
    heartbeats_received: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    reply_code: int | None = None
    reply_text: str | None = None

    @property
    def hint(self) -> str:
        return VERDICT_HINTS[self.verdict]

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "verdict": str(self.verdict),
            "hint": self.hint,
            "detail": self.detail,
            "stages": [s.to_dict() for s in self.stages],
            "seconds": round(self.seconds, 6),
            "timeout": self.timeout,
            "address": self.address,
            "server": _server_summary(self.server_properties),
            "server_properties": _json_safe(self.server_properties),
            "tune": self.tune,
            "heartbeats_received": self.heartbeats_received,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "reply_code": self.reply_code,
            "reply_text": self.reply_text,
        }


def summarize(results: Iterable[ProbeResult]) -> dict[str, int]:
    """Verdict counts, most frequent first (for ``--repeat``).

    >>> summarize([])
    {}
    """
    counts = Counter(str(r.verdict) for r in results)
    return dict(counts.most_common())


class _Timeout(Exception):
    """The total deadline passed while waiting."""


class _Verdict(Exception):
    """Ends the probe with a verdict (internal control flow)."""

    def __init__(self, verdict: Verdict, detail: str) -> None:
        super().__init__(detail)
        self.verdict = verdict
        self.detail = detail


class _Run:
    """State of one probe: the deadline, the stage clock, the socket."""

    def __init__(self, deadline: float, on_stage: Callable[[StageResult], None] | None) -> None:
        self.deadline = deadline
        self.on_stage = on_stage
        self.stages: list[StageResult] = []
        self.current: str | None = None
        self.started_at = 0.0
        self.bytes_sent = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def begin(self, stage: str) -> None:
        self.current = stage
        self.started_at = time.monotonic()

    def end(self, ok: bool = True, seconds: float | None = None) -> None:
        if self.current is None:
            return
        took = time.monotonic() - self.started_at if seconds is None else seconds
        result = StageResult(self.current, took, ok)
        self.stages.append(result)
        self.current = None
        if self.on_stage is not None:
            self.on_stage(result)

    def wait(self, sock: socket.socket, *, write: bool) -> None:
        """Block until ``sock`` is ready, or raise ``_Timeout`` at the deadline."""
        left = self.remaining()
        if left <= 0:
            raise _Timeout
        r, w, x = select.select([] if write else [sock], [sock] if write else [], [sock], left)
        if not (r or w or x):
            raise _Timeout

    def send_all(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        # Each pass sends >= 1 byte or waits; len(data)+1 passes always suffice
        # for a progressing peer, the deadline ends a stuck one.
        for _ in range(len(data) + 1000):
            if not view:
                return
            try:
                sent = sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                self.wait(sock, write=True)
                continue
            except ssl.SSLWantReadError:
                self.wait(sock, write=False)
                continue
            self.bytes_sent += sent
            view = view[sent:]
        if view:
            raise _Timeout


def probe(
    url: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    tls_verify: bool = True,
    on_stage: Callable[[StageResult], None] | None = None,
) -> ProbeResult:
    """Run one staged AMQP handshake against ``url`` within ``timeout`` seconds in total.

    Never raises for anything the network or the peer does: every outcome is a
    :class:`~hangproof.failure.Verdict`. Raises :class:`HangproofError` only for
    a bad URL or a non-positive timeout. ``on_stage`` is called as each stage ends.

    >>> probe("amqp://guest:guest@127.0.0.1:1/", timeout=2).verdict  # doctest: +SKIP
    <Verdict.REFUSED: 'refused'>
    """
    if not timeout > 0:
        raise HangproofError(f"--timeout must be > 0 seconds, got {timeout!r}")
    target = parse_amqp_url(url)
    t0 = time.monotonic()
    run = _Run(t0 + timeout, on_stage)
    result = ProbeResult(url=target.masked(), verdict=Verdict.STALLED, stages=run.stages)
    result.timeout = timeout
    handshake = ClientHandshake(
        username=target.username, password=target.password, vhost=target.vhost, heartbeat=0
    )
    sock: socket.socket | None = None
    try:
        addresses = _resolve(run, target)
        sock, result.address = _connect(run, addresses)
        if target.tls:
            sock = _start_tls(run, sock, target.host, tls_verify)
        verdict, detail = _handshake(run, sock, handshake, result)
        if verdict is Verdict.CLOSED and not target.tls and handshake.bytes_received == 0:
            sock.close()
            sock = None
            run.end(ok=False)
            if _speaks_tls(run, target, result.address):
                verdict = Verdict.TLS_REQUIRED
                detail += "; a TLS handshake on the same port succeeded: use amqps://"
    except _Verdict as stop:
        verdict, detail = stop.verdict, stop.detail
    finally:
        if sock is not None:
            sock.close()
    run.end(ok=False)  # a stage still open when the probe stopped did not succeed
    result.verdict, result.detail = verdict, detail
    result.seconds = time.monotonic() - t0
    result.bytes_sent = run.bytes_sent
    result.bytes_received = handshake.bytes_received
    result.heartbeats_received = handshake.heartbeats_received
    result.server_properties = handshake.server_properties
    return result


def _resolve(run: _Run, target: AmqpUrl) -> list[tuple[Any, ...]]:
    run.begin("dns")
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        infos = _getaddrinfo_with_deadline(run, target.host, target.port)
    else:  # a literal address resolves without any lookup
        infos = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    run.end(ok=True)
    return infos


def _getaddrinfo_with_deadline(run: _Run, host: str, port: int) -> list[tuple[Any, ...]]:
    # getaddrinfo() has no timeout of its own; run it in a daemon thread and stop
    # waiting at the deadline (the thread finishes or dies with the process).
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    thread = threading.Thread(target=lookup, name=f"hangproof-dns-{host}", daemon=True)
    thread.start()
    thread.join(max(0.0, run.remaining()))
    if thread.is_alive():
        raise _Verdict(Verdict.UNREACHABLE, f"DNS lookup of {host!r} did not answer in time")
    if "error" in box:
        raise _Verdict(Verdict.UNREACHABLE, f"DNS lookup of {host!r} failed: {box['error']}")
    return list(box["infos"])


def _connect(run: _Run, infos: list[tuple[Any, ...]]) -> tuple[socket.socket, str]:
    run.begin("tcp-connect")
    failures: list[tuple[Verdict, str]] = []
    for family, socktype, proto, _canon, sockaddr in infos:
        host, port = sockaddr[0], sockaddr[1]
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        sock = socket.socket(family, socktype, proto)
        sock.setblocking(False)
        try:
            code = sock.connect_ex(sockaddr)
            if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                run.wait(sock, write=True)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except _Timeout:
            sock.close()
            failures.append((Verdict.UNREACHABLE, f"{shown}: no answer to the TCP SYN in time"))
            break
        except OSError as exc:
            sock.close()
            failures.append((_connect_verdict(exc.errno), f"{shown}: {exc}"))
            continue
        if code == 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            run.end(ok=True)
            return sock, shown
        sock.close()
        failures.append(
            (
                _connect_verdict(code),
                f"{shown}: {errno.errorcode.get(code, code)} ({os.strerror(code)})",
            )
        )
    if not failures:
        raise _Verdict(Verdict.UNREACHABLE, "the host name resolved to no address")
    verdict = failures[-1][0]
    raise _Verdict(verdict, "; ".join(detail for _, detail in failures))


def _connect_verdict(code: int | None) -> Verdict:
    return Verdict.REFUSED if code == errno.ECONNREFUSED else Verdict.UNREACHABLE


def _start_tls(run: _Run, sock: socket.socket, host: str, verify: bool) -> ssl.SSLSocket:
    run.begin("tls")
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    try:
        for _ in range(1000):  # a TLS handshake takes a handful of round trips
            try:
                tls.do_handshake()
                run.end(ok=True)
                return tls
            except ssl.SSLWantReadError:
                run.wait(tls, write=False)
            except ssl.SSLWantWriteError:
                run.wait(tls, write=True)
        raise _Timeout
    except _Timeout:
        raise _Verdict(
            Verdict.SILENT, "TCP accepted, but the TLS handshake got no answer"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        # The server did not prove who it is: an authentication failure, of the
        # server this time. The detail says how to skip the check.
        raise _Verdict(
            Verdict.AUTH_FAILED,
            f"TLS: the server's certificate is not trusted ({exc.verify_message}); "
            "pass --insecure to skip verification",
        ) from None
    except ssl.SSLError as exc:
        # e.g. WRONG_VERSION_NUMBER: a plain-text AMQP port answers a ClientHello
        # with its own "AMQP" header (§4.2.2), which is not a TLS record.
        raise _Verdict(
            Verdict.NOT_AMQP,
            f"TLS handshake failed ({exc.reason or exc}): is this the plain-text port? try amqp://",
        ) from None
    except (ConnectionError, OSError) as exc:
        raise _Verdict(Verdict.CLOSED, f"the peer closed during the TLS handshake: {exc}") from None


#: The most the tls-check stage may take: it is a second opinion, not the probe.
TLS_CHECK_SECONDS = 2.0


def _speaks_tls(run: _Run, target: AmqpUrl, address: str | None) -> bool:
    """Does the port complete a TLS handshake? Asked only after a silent close.

    An OpenSSL-based TLS listener (stunnel, haproxy, nginx) answers our plain
    header with no alert at all: it just closes. Erlang's does send an alert,
    which the state machine recognises by its first byte.
    """
    run.begin("tls-check")
    deadline = min(run.deadline, time.monotonic() + TLS_CHECK_SECONDS)
    check = _Run(deadline, None)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only "does it speak TLS?", not "whom"
    sock: socket.socket | None = None
    try:
        infos = socket.getaddrinfo(
            address.rsplit(":", 1)[0].strip("[]") if address else target.host,
            target.port,
            type=socket.SOCK_STREAM,
        )
        sock, _ = _connect(check, infos[:1])
        check.end()
        tls = context.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
        sock = tls
        for _ in range(100):
            try:
                tls.do_handshake()
                run.end(ok=True)
                return True
            except ssl.SSLWantReadError:
                check.wait(tls, write=False)
            except ssl.SSLWantWriteError:
                check.wait(tls, write=True)
    except (_Timeout, _Verdict, OSError):
        pass
    finally:
        if sock is not None:
            sock.close()
    run.end(ok=False)
    return False


# The stage that waits for each state's answer.
_WAIT_STAGE = {
    State.AWAIT_START: "start",
    State.AWAIT_TUNE: "tune",
    State.AWAIT_OPEN_OK: "open-ok",
    State.AWAIT_CLOSE_OK: "close",
}


def _handshake(
    run: _Run, sock: socket.socket, hs: ClientHandshake, result: ProbeResult
) -> tuple[Verdict, str]:
    run.begin("protocol-header")
    try:
        run.send_all(sock, hs.initiate())
        run.end(ok=True)
        run.begin("start")
        return _exchange(run, sock, hs, result)
    except _Timeout:
        return _deadline_verdict(hs)
    except ProtocolError as exc:
        return exc.verdict, exc.reason
    except ConnectionResetError:
        if _opened(hs):
            return Verdict.OK, "the handshake completed; the peer reset instead of Close-Ok"
        return Verdict.CLOSED, f"the peer reset the connection (RST) in state {hs.state}"
    except OSError as exc:  # EPIPE and friends: the peer went away while we wrote
        if _opened(hs):
            return Verdict.OK, f"the handshake completed; then {exc}"
        return Verdict.CLOSED, f"the connection failed in state {hs.state}: {exc}"


def _opened(hs: ClientHandshake) -> bool:
    # The machine says OK only once Open-Ok arrived (or a clean close after it).
    return hs.verdict is Verdict.OK


def _exchange(
    run: _Run, sock: socket.socket, hs: ClientHandshake, result: ProbeResult
) -> tuple[Verdict, str]:
    """Read, feed the machine, write its replies, until a verdict. Raises on I/O trouble."""
    for _ in range(MAX_READS):
        for event in hs.receive_data(_recv(run, sock)):
            if isinstance(event, StartReceived):
                run.end(ok=True)
                run.begin("start-ok")
                run.send_all(sock, hs.data_to_send())
                run.end(ok=True)
                run.begin("tune")
            elif isinstance(event, TuneReceived):
                result.tune = {
                    "channel_max": event.channel_max,
                    "frame_max": event.frame_max,
                    "heartbeat": event.heartbeat,
                }
                run.end(ok=True)
                run.begin("tune-ok")
                run.send_all(sock, hs.data_to_send())  # Tune-Ok and Open, one write
                run.end(ok=True)
                run.begin("open")
                run.end(ok=True, seconds=0.0)
                run.begin("open-ok")
            elif isinstance(event, OpenOkReceived):
                run.end(ok=True)
                run.begin("close")
                run.send_all(sock, hs.close())
            elif isinstance(event, CloseOkReceived):
                run.end(ok=True)
                return Verdict.OK, _ok_detail(hs)
            elif isinstance(event, CloseReceived):
                result.reply_code, result.reply_text = event.reply_code, event.reply_text
                _send_quietly(run, sock, hs.data_to_send())  # Close-Ok, as §2.3.7 asks
                return event.verdict, (
                    f"Connection.Close {event.reply_code} {event.reply_text!r} "
                    f"in reply to {_ANSWERED[event.during]}"
                )
            elif isinstance(event, ServerProtocolHeader):
                return Verdict.PROTOCOL_MISMATCH, (
                    f"the server answered with protocol header {event.raw!r} "
                    f"(AMQP {event.version}) instead of Connection.Start"
                )
            elif isinstance(event, PeerClosed):
                if _opened(hs):
                    return (
                        Verdict.OK,
                        "the handshake completed; the peer closed instead of Close-Ok",
                    )
                return Verdict.CLOSED, _closed_detail(event.during, hs)
    raise _Timeout


# What the server was answering when it sent Connection.Close.
_ANSWERED = {
    State.AWAIT_START: "the protocol header",
    State.AWAIT_TUNE: "Start-Ok (the credentials)",
    State.AWAIT_OPEN_OK: "Open (the virtual host)",
    State.OPEN: "nothing (connection open)",
    State.AWAIT_CLOSE_OK: "our Close",
}


def _recv(run: _Run, sock: socket.socket) -> bytes:
    for _ in range(1000):
        # An SSL socket may hold decrypted bytes that select() cannot see.
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            run.wait(sock, write=False)
        try:
            return sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue
    raise _Timeout


def _send_quietly(run: _Run, sock: socket.socket, data: bytes) -> None:
    # Courtesy reply (Close-Ok): the verdict is already known, so a peer that
    # is gone or a deadline that passed changes nothing.
    try:
        run.send_all(sock, data)
    except (_Timeout, OSError):
        pass


def _deadline_verdict(hs: ClientHandshake) -> tuple[Verdict, str]:
    heartbeats = f", {hs.heartbeats_received} heartbeat(s) only" if hs.heartbeats_received else ""
    waiting_for = _WAIT_STAGE.get(hs.state, str(hs.state))
    if _opened(hs):
        return Verdict.OK, "the handshake completed; no Close-Ok before the deadline"
    if hs.state is State.AWAIT_START and hs.bytes_received == 0:
        return Verdict.SILENT, "TCP accepted, but not one byte came back for the AMQP header"
    return Verdict.STALLED, (
        f"waited for {waiting_for} until the deadline; {hs.bytes_received} byte(s) "
        f"received{heartbeats}"
    )


def _closed_detail(during: State, hs: ClientHandshake) -> str:
    if during is State.AWAIT_TUNE:
        # RabbitMQ without the authentication_failure_close capability drops the
        # socket on bad credentials; with it (we ask for it) it sends Close 403.
        return "the peer closed right after Start-Ok: possibly refused credentials"
    if during is State.AWAIT_START and hs.bytes_received == 0:
        return "the peer closed without sending a byte"
    return f"the peer closed in state {during} after {hs.bytes_received} byte(s)"


def _ok_detail(hs: ClientHandshake) -> str:
    props = hs.server_properties
    product = _text(props.get("product")) or "server"
    version = _text(props.get("version"))
    cluster = _text(props.get("cluster_name"))
    where = f" (cluster {cluster})" if cluster else ""
    return f"{product} {version}{where} completed the handshake".replace("  ", " ")


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _server_summary(props: dict[str, Any]) -> dict[str, str]:
    keys = ("product", "version", "platform", "cluster_name")
    return {k: _text(props[k]) for k in keys if k in props}


def _json_safe(value: Any) -> Any:
    """Field-table values (bytes, Decimal, datetime, nested tables) as JSON types."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


if __name__ == "__main__":
    # `python -m hangproof.probe URL [--json]` == `hangproof probe URL [--json]`,
    # for `ip netns exec` where the console script may not be on PATH.
    from hangproof.cli import main

    sys.exit(main(["probe", *sys.argv[1:]]))
