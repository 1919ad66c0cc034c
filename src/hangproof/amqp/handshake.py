"""The AMQP 0-9-1 client handshake as a sans-IO state machine.

No sockets here: bytes from the server go in through :meth:`ClientHandshake.receive_data`,
events come out, and the bytes to send come out of :meth:`ClientHandshake.data_to_send`.
The probe drives it over blocking-with-deadline sockets, the guard and the
lab's raw race client over their own I/O, and the unit tests over recorded bytes.

    >>> hs = ClientHandshake(username="guest", password="guest", vhost="/")
    >>> hs.initiate()
    b'AMQP\\x00\\x00\\t\\x01'
    >>> hs.state
    <State.AWAIT_START: 'await-start'>
    >>> try:
    ...     hs.receive_data(b"HTTP/1.1 400 Bad Request\\r\\n")
    ... except ProtocolError as exc:
    ...     print(exc.verdict, hs.state)
    not-amqp failed

The flow (AMQP 0-9-1 §2.2.4, "The Connection Class")::

    client                       server
    protocol header  ------->
                     <-------    Connection.Start
    Start-Ok         ------->
                     <-------    Connection.Tune
    Tune-Ok, Open    ------->
                     <-------    Connection.Open-Ok          (state OPEN)
    Close            ------->
                     <-------    Connection.Close-Ok         (state CLOSED)

Replies the protocol requires (Start-Ok after Start, Tune-Ok + Open after Tune,
Close-Ok after a server Close) are queued automatically; the caller only
flushes :meth:`~ClientHandshake.data_to_send`. pamqp (4.x) does the frame
codec; this module does the framing checks that protect us from a hostile or
broken peer *before* pamqp sees any bytes.
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pamqp import commands, constants, frame, header, heartbeat

from hangproof import __version__ as _hangproof_version
from hangproof.failure import Verdict

Connection = commands.Connection

# -- limits ------------------------------------------------------------------
#: Largest frame we accept, in octets of payload. 131072 (128 KiB) is RabbitMQ's
#: default ``frame_max`` and pamqp's ``FRAME_MAX_SIZE``; RabbitMQ 3.10's
#: Connection.Start is ~500 octets. The spec only promises that frames up to
#: frame-min-size (4096) are accepted before Tune (AMQP 0-9-1 §4.2.3 and the
#: ``frame-max`` field of Connection.Tune), so 128 KiB is generous for honest
#: servers. A frame header announcing more is rejected from its 7 header octets,
#: without buffering the payload (§4.10.2: do not let a peer make us allocate).
MAX_FRAME_SIZE: int = constants.FRAME_MAX_SIZE

#: 7-octet frame header (type, channel, size) + 1 frame-end octet (§4.2.3).
FRAME_OVERHEAD: int = constants.FRAME_HEADER_SIZE + 1

#: The most bytes this machine ever holds between calls: one incomplete frame.
MAX_BUFFERED: int = MAX_FRAME_SIZE + FRAME_OVERHEAD

#: The protocol header we send (§4.2.2): "AMQP" 0 0 9 1.
PROTOCOL_HEADER: bytes = header.ProtocolHeader().marshal()

#: The largest ``channel_max`` we offer in Tune-Ok: RabbitMQ's default (2047).
#: The handshake opens no channels; a user of the connection may need some.
DEFAULT_CHANNEL_MAX = 2047

# AMQP 0-9-1 reply codes that matter during the handshake (§1.2 constants,
# amqp0-9-1.xml): 320 connection-forced, 403 access-refused, 530 not-allowed.
REPLY_SUCCESS = 200
REPLY_CONNECTION_FORCED = 320
REPLY_ACCESS_REFUSED = 403
REPLY_NOT_ALLOWED = 530

_FRAME_HEADER = struct.Struct(">BHI")
# First octets of a TLS record (RFC 8446 §5.1): 0x15 alert, 0x16 handshake.
_TLS_RECORD_TYPES = {0x15: "alert", 0x16: "handshake"}


class State(StrEnum):
    """Where the client handshake is. Ends in ``OPEN`` (until closed), ``CLOSED`` or ``FAILED``."""

    IDLE = "idle"  # nothing sent yet; call initiate()
    AWAIT_START = "await-start"  # protocol header sent; waiting for Connection.Start
    AWAIT_TUNE = "await-tune"  # Start-Ok sent (credentials); waiting for Connection.Tune
    AWAIT_OPEN_OK = "await-open-ok"  # Tune-Ok + Open sent; waiting for Connection.Open-Ok
    OPEN = "open"  # the handshake is complete
    AWAIT_CLOSE_OK = "await-close-ok"  # we sent Connection.Close
    CLOSED = "closed"  # closed cleanly by either side, or the server rejected our header
    FAILED = "failed"  # the peer broke the protocol (ProtocolError raised)


#: The states in which we wait for the server to say something.
WAITING_STATES = frozenset(
    {State.AWAIT_START, State.AWAIT_TUNE, State.AWAIT_OPEN_OK, State.AWAIT_CLOSE_OK}
)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid AMQP 0-9-1 handshake.

    This is the only exception ``receive_data`` raises. (Calling the machine's
    methods out of order is a bug in the caller and raises ``RuntimeError``.)

    ``verdict`` says what that most likely means (``not-amqp``,
    ``tls-required``, ...). After it is raised the machine is ``FAILED`` and
    every further ``receive_data`` raises it again.
    """

    def __init__(self, message: str, verdict: Verdict = Verdict.NOT_AMQP) -> None:
        super().__init__(f"{verdict}: {message}")
        self.verdict = verdict
        self.reason = message


# -- events ------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """Base class of everything ``receive_data`` returns."""


@dataclass(frozen=True)
class StartReceived(Event):
    """Connection.Start arrived; Start-Ok (PLAIN) is queued."""

    version: tuple[int, int]
    server_properties: dict[str, Any]
    mechanisms: list[str]
    locales: list[str]


@dataclass(frozen=True)
class TuneReceived(Event):
    """Connection.Tune arrived (the server's proposal); Tune-Ok and Open are queued.

    ``negotiated`` holds what we sent back in Tune-Ok.
    """

    channel_max: int
    frame_max: int
    heartbeat: int
    negotiated: dict[str, int]


@dataclass(frozen=True)
class OpenOkReceived(Event):
    """Connection.Open-Ok arrived: the handshake is complete (state ``OPEN``)."""


@dataclass(frozen=True)
class HeartbeatReceived(Event):
    """A heartbeat frame (§2.3.5.3, §4.2.7). It is not progress: a peer that
    sends only heartbeats during the handshake is ``stalled``."""

    count: int  # heartbeats received so far, this one included


@dataclass(frozen=True)
class CloseReceived(Event):
    """The server sent Connection.Close; Close-Ok is queued (§2.3.7).

    ``verdict`` maps the reply code and the handshake step to the shared vocabulary.
    """

    reply_code: int
    reply_text: str
    class_id: int
    method_id: int
    during: State
    verdict: Verdict


@dataclass(frozen=True)
class CloseOkReceived(Event):
    """Connection.Close-Ok arrived after our Close: state ``CLOSED``."""


@dataclass(frozen=True)
class ServerProtocolHeader(Event):
    """The server answered with a protocol header: it rejects our version (§4.2.2)."""

    raw: bytes

    @property
    def version(self) -> str:
        """The version the server speaks, e.g. ``"0-9-1"`` or ``"1-0-0 (protocol id 0)"``."""
        pid, a, b, c = self.raw[4:8]
        if pid == 0:
            return f"{a}-{b}-{c}"
        # AMQP 1.0 and 0-8 style headers carry a protocol id in octet 4.
        return f"{a}-{b}-{c} (protocol id {pid})"


@dataclass(frozen=True)
class PeerClosed(Event):
    """The transport reached end of stream (``receive_data(b"")``)."""

    during: State
    buffered: int  # octets of an incomplete frame that were pending


# -- the machine -------------------------------------------------------------
def default_client_properties() -> dict[str, Any]:
    """Client properties that identify hangproof in RabbitMQ's connection list.

    ``authentication_failure_close`` asks RabbitMQ to send Connection.Close 403
    on bad credentials instead of dropping the socket, so ``auth-failed`` is
    told apart from ``closed`` (RabbitMQ "Authentication Failure Notifications").
    """
    return {
        "product": "hangproof",
        "version": _hangproof_version,
        "platform": f"Python {platform.python_version()}",
        "information": "AMQP handshake probe; see `hangproof probe --help`",
        "connection_name": "hangproof",
        "capabilities": {"authentication_failure_close": True},
    }


@dataclass
class ClientHandshake:
    """One AMQP 0-9-1 client handshake, PLAIN authentication, channel 0 only.

    Construct, call :meth:`initiate` and send its bytes, then feed every chunk
    you read to :meth:`receive_data` and send whatever :meth:`data_to_send`
    returns after each call. Feed ``b""`` when the peer closes.

    >>> hs = ClientHandshake("guest", "guest", "/")
    >>> _ = hs.initiate()
    >>> hs.receive_data(b"AMQP\\x00\\x00\\x09\\x01")[0].version
    '0-9-1'
    >>> hs.state, hs.verdict
    (<State.CLOSED: 'closed'>, <Verdict.PROTOCOL_MISMATCH: 'protocol-mismatch'>)

    ``heartbeat`` is what we ask for in Tune-Ok: ``None`` takes the server's
    proposal, ``0`` disables heartbeats (the probe's choice: it lives seconds).
    """

    username: str = "guest"
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    heartbeat: int | None = 0
    channel_max: int = DEFAULT_CHANNEL_MAX
    client_properties: dict[str, Any] = field(default_factory=default_client_properties)

    state: State = field(default=State.IDLE, init=False)
    #: What the bytes so far say about the server; ``None`` while undecided.
    verdict: Verdict | None = field(default=None, init=False)
    heartbeats_received: int = field(default=0, init=False)
    bytes_received: int = field(default=0, init=False)
    server_properties: dict[str, Any] = field(default_factory=dict, init=False)
    #: What Tune-Ok agreed to (channel_max, frame_max, heartbeat), once tuned.
    tuned: dict[str, int] = field(default_factory=dict, init=False)
    _buffer: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _outgoing: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _error: ProtocolError | None = field(default=None, init=False, repr=False)

    # -- sending -------------------------------------------------------------
    def initiate(self) -> bytes:
        """The protocol header to send first (§4.2.2). Moves to ``AWAIT_START``."""
        if self.state is not State.IDLE:
            raise RuntimeError(f"initiate() in state {self.state}: call it once, first")
        self.state = State.AWAIT_START
        return PROTOCOL_HEADER

    def close(self, reply_code: int = REPLY_SUCCESS, reply_text: str = "bye") -> bytes:
        """Connection.Close to send (only from ``OPEN``). Moves to ``AWAIT_CLOSE_OK``.

        Any queued bytes are returned first, so nothing is lost.
        """
        if self.state is not State.OPEN:
            raise RuntimeError(f"close() in state {self.state}: only an open connection closes")
        self.state = State.AWAIT_CLOSE_OK
        self._queue(Connection.Close(reply_code, reply_text, 0, 0))
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes the protocol requires us to send now (possibly ``b""``); clears the queue."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    @property
    def buffered(self) -> int:
        """Octets of an incomplete frame held right now (never more than ``MAX_BUFFERED``)."""
        return len(self._buffer)

    # -- receiving -----------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the server; ``b""`` means end of stream.

        Returns the events, in order. Raises :class:`ProtocolError` when the
        peer is not speaking an AMQP 0-9-1 handshake; the exception's
        ``verdict`` names the fault.
        """
        if self._error is not None:
            raise self._error
        if self.state is State.IDLE:
            raise RuntimeError("receive_data() before initiate(): send the protocol header first")
        if not data:
            event = PeerClosed(during=self.state, buffered=len(self._buffer))
            if self.verdict is None:
                self.verdict = Verdict.CLOSED
            if self.state is not State.FAILED:
                self.state = State.CLOSED
            self._buffer.clear()
            return [event]
        if self.state is State.CLOSED:
            # After Close/Close-Ok or a rejected header only end of stream may follow
            # (§2.3.7: after Close, everything but Close/Close-Ok is discarded).
            self.bytes_received += len(data)
            return []
        events: list[Event] = []
        view = memoryview(data)
        # Take at most one maximal frame per step so the buffer never holds more
        # than MAX_BUFFERED octets, however large the chunk the caller read.
        for start in range(0, len(view), MAX_BUFFERED):
            chunk = view[start : start + MAX_BUFFERED]
            self.bytes_received += len(chunk)
            self._buffer += chunk
            self._parse(events)
            if self.state is State.CLOSED:
                break
        return events

    # -- internals -----------------------------------------------------------
    def _fail(self, message: str, verdict: Verdict) -> ProtocolError:
        self._error = ProtocolError(message, verdict)
        self.state = State.FAILED
        self.verdict = verdict
        self._buffer.clear()
        self._outgoing.clear()
        return self._error

    def _queue(self, method: Any) -> None:
        self._outgoing += frame.marshal(method, 0)

    def _parse(self, events: list[Event]) -> None:
        buf = self._buffer
        while buf and self.state is not State.CLOSED:
            first = buf[0]
            if first == PROTOCOL_HEADER[0]:  # "A": maybe a protocol header
                if not self._parse_protocol_header(events):
                    return
                continue
            if first not in (constants.FRAME_METHOD, constants.FRAME_HEARTBEAT):
                raise self._fail(self._describe_garbage(first), self._garbage_verdict(first))
            if len(buf) < constants.FRAME_HEADER_SIZE:
                return
            frame_type, channel, size = _FRAME_HEADER.unpack_from(buf)
            if size > MAX_FRAME_SIZE:
                raise self._fail(
                    f"frame header announces {size} octets, more than our cap "
                    f"{MAX_FRAME_SIZE} (§4.2.3); not buffering it",
                    Verdict.NOT_AMQP,
                )
            if channel != 0:
                # The connection class and heartbeats live on channel 0 (§2.3.5.1, §4.2.7).
                raise self._fail(
                    f"frame on channel {channel} during the handshake", Verdict.NOT_AMQP
                )
            if frame_type == constants.FRAME_HEARTBEAT and size != 0:
                raise self._fail(f"heartbeat frame with {size}-octet payload", Verdict.NOT_AMQP)
            total = size + FRAME_OVERHEAD
            if len(buf) < total:
                return
            if buf[total - 1] != constants.FRAME_END:
                # A frame that does not end in 0xCE is a frame-error (§4.2.3).
                raise self._fail(
                    f"frame-end octet is 0x{buf[total - 1]:02x}, not 0xce", Verdict.NOT_AMQP
                )
            raw = bytes(buf[:total])
            del buf[:total]
            if frame_type == constants.FRAME_HEARTBEAT:
                self.heartbeats_received += 1
                events.append(HeartbeatReceived(self.heartbeats_received))
                continue
            self._on_method(self._unmarshal(raw), events)

    def _parse_protocol_header(self, events: list[Event]) -> bool:
        buf = self._buffer
        n = min(len(buf), 4)
        if bytes(buf[:n]) != PROTOCOL_HEADER[:n]:
            raise self._fail(self._describe_garbage(buf[0], bytes(buf[:8])), Verdict.NOT_AMQP)
        if self.state is not State.AWAIT_START:
            raise self._fail(f"protocol header in state {self.state}", Verdict.NOT_AMQP)
        if len(buf) < len(PROTOCOL_HEADER):
            return False
        raw = bytes(buf[:8])
        del buf[:8]
        # §4.2.2: a server that rejects our header "MUST write a valid protocol
        # header to the socket and then close the socket", whatever it contains
        # (RabbitMQ answers an unsupported header with its own AMQP 0-9-1).
        # pamqp decodes it only to prove it is well formed.
        frame.unmarshal(raw)
        events.append(ServerProtocolHeader(raw))
        self.state = State.CLOSED
        self.verdict = Verdict.PROTOCOL_MISMATCH
        buf.clear()
        return True

    def _unmarshal(self, raw: bytes) -> Any:
        try:
            _consumed, _channel, method = frame.unmarshal(raw)
        except Exception as exc:  # pamqp raises several types on bad input
            # pamqp's decoders raise UnmarshalingException, ValueError, struct.error,
            # UnicodeDecodeError, KeyError or RecursionError on hostile tables;
            # all of them mean the same thing to us.
            raise self._fail(
                f"undecodable method frame ({type(exc).__name__}: {exc})", Verdict.NOT_AMQP
            ) from exc
        return method

    def _on_method(self, method: Any, events: list[Event]) -> None:
        if isinstance(method, Connection.Close):
            # Close is legal in every state (§2.3.7); reply Close-Ok and stop.
            during = self.state
            verdict = _close_verdict(during, method.reply_code)
            events.append(
                CloseReceived(
                    reply_code=int(method.reply_code or 0),
                    reply_text=str(method.reply_text or ""),
                    class_id=int(method.class_id or 0),
                    method_id=int(method.method_id or 0),
                    during=during,
                    verdict=verdict,
                )
            )
            self._queue(Connection.CloseOk())
            self.state = State.CLOSED
            self.verdict = verdict
            return
        expected = {
            State.AWAIT_START: Connection.Start,
            State.AWAIT_TUNE: Connection.Tune,
            State.AWAIT_OPEN_OK: Connection.OpenOk,
            State.AWAIT_CLOSE_OK: Connection.CloseOk,
        }.get(self.state)
        if expected is None or not isinstance(method, expected):
            wanted = expected.name if expected is not None else "nothing but heartbeats"
            raise self._fail(
                f"got {getattr(method, 'name', type(method).__name__)} in state "
                f"{self.state}, expected {wanted}",
                Verdict.NOT_AMQP,
            )
        if isinstance(method, Connection.Start):
            self._on_start(method, events)
        elif isinstance(method, Connection.Tune):
            self._on_tune(method, events)
        elif isinstance(method, Connection.OpenOk):
            self.state = State.OPEN
            self.verdict = Verdict.OK
            events.append(OpenOkReceived())
        else:
            self.state = State.CLOSED
            events.append(CloseOkReceived())

    def _on_start(self, start: Any, events: list[Event]) -> None:
        mechanisms = _words(start.mechanisms)
        self.server_properties = dict(start.server_properties or {})
        events.append(
            StartReceived(
                version=(int(start.version_major), int(start.version_minor)),
                server_properties=self.server_properties,
                mechanisms=mechanisms,
                locales=_words(start.locales),
            )
        )
        if "PLAIN" not in mechanisms:
            # PLAIN is the only mechanism we speak; a broker that allows only
            # EXTERNAL (client certificates) refuses us before any password is sent.
            raise self._fail(
                f"server offers SASL mechanisms {mechanisms}, not PLAIN", Verdict.AUTH_FAILED
            )
        # SASL PLAIN (RFC 4616): authzid NUL authcid NUL passwd.
        response = f"\0{self.username}\0{self.password}"
        self._queue(
            Connection.StartOk(
                client_properties=self.client_properties,
                mechanism="PLAIN",
                response=response,
                locale="en_US",
            )
        )
        self.state = State.AWAIT_TUNE

    def _on_tune(self, tune: Any, events: list[Event]) -> None:
        # Connection.Tune fields, 0 meaning "no limit" (amqp0-9-1.xml): take the
        # lower of both sides, and never more than our own frame cap.
        server_frame_max = int(tune.frame_max or 0)
        frame_max = min(server_frame_max or MAX_FRAME_SIZE, MAX_FRAME_SIZE)
        frame_max = max(frame_max, constants.FRAME_MIN_SIZE)
        channel_max = min(int(tune.channel_max or 0) or self.channel_max, self.channel_max)
        heartbeat = int(tune.heartbeat or 0) if self.heartbeat is None else self.heartbeat
        self.tuned = {"channel_max": channel_max, "frame_max": frame_max, "heartbeat": heartbeat}
        events.append(
            TuneReceived(
                channel_max=int(tune.channel_max or 0),
                frame_max=server_frame_max,
                heartbeat=int(tune.heartbeat or 0),
                negotiated=dict(self.tuned),
            )
        )
        # Tune-Ok then Open, back to back, as every client does (§2.2.4).
        self._queue(Connection.TuneOk(channel_max, frame_max, heartbeat))
        self._queue(Connection.Open(virtual_host=self.vhost))
        self.state = State.AWAIT_OPEN_OK

    @staticmethod
    def _garbage_verdict(first: int) -> Verdict:
        return Verdict.TLS_REQUIRED if first in _TLS_RECORD_TYPES else Verdict.NOT_AMQP

    def _describe_garbage(self, first: int, sample: bytes | None = None) -> str:
        if first in _TLS_RECORD_TYPES and self.state is State.AWAIT_START:
            return (
                f"the peer sent a TLS {_TLS_RECORD_TYPES[first]} record "
                f"(first byte 0x{first:02x}): the port speaks TLS"
            )
        if first in _TLS_RECORD_TYPES:
            return f"unexpected byte 0x{first:02x} where a frame type was expected"
        shown = sample if sample is not None else bytes(self._buffer[:16])
        guess = " (looks like HTTP)" if bytes(shown[:5]) == b"HTTP/"[: len(shown[:5])] else ""
        return (
            f"the peer's first byte is 0x{first:02x}, not an AMQP frame type: "
            f"{bytes(shown[:16])!r}{guess}"
        )


def _close_verdict(during: State, reply_code: int | None) -> Verdict:
    """What a server's Connection.Close means at a given handshake step."""
    code = int(reply_code or 0)
    if during is State.AWAIT_TUNE and code == REPLY_ACCESS_REFUSED:
        # Start-Ok carried the credentials; RabbitMQ answers 403 ACCESS_REFUSED.
        return Verdict.AUTH_FAILED
    if during is State.AWAIT_OPEN_OK and code in (REPLY_NOT_ALLOWED, REPLY_ACCESS_REFUSED):
        # RabbitMQ: 530 "vhost x not found" / "access to vhost 'x' refused for user 'y'".
        return Verdict.VHOST_DENIED
    if during is State.AWAIT_CLOSE_OK or during is State.OPEN:
        return Verdict.OK if code == REPLY_SUCCESS else Verdict.CLOSED
    return Verdict.CLOSED


def _words(value: Any) -> list[str]:
    if isinstance(value, bytes | bytearray):
        value = value.decode("utf-8", "replace")
    return str(value or "").split()


def heartbeat_frame() -> bytes:
    """One heartbeat frame (§4.2.7), for peers and tests that need to send one."""
    return heartbeat.Heartbeat.marshal()
