"""The sans-IO handshake machine on recorded RabbitMQ bytes and on crafted ones.

The ``rabbitmq_*.bin`` files under tests/data/amqp are what a real RabbitMQ
3.10.8 (Erlang/OTP 25.2.3) sent, recorded once with tests/data/amqp/record.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pamqp import commands, frame

from hangproof.amqp import (
    MAX_BUFFERED,
    MAX_FRAME_SIZE,
    PROTOCOL_HEADER,
    ClientHandshake,
    CloseOkReceived,
    CloseReceived,
    Event,
    HeartbeatReceived,
    OpenOkReceived,
    PeerClosed,
    ProtocolError,
    ServerProtocolHeader,
    StartReceived,
    State,
    TuneReceived,
    heartbeat_frame,
)
from hangproof.failure import Verdict

DATA = Path(__file__).resolve().parent.parent / "data" / "amqp"
C = commands.Connection


def recorded(name: str) -> bytes:
    return (DATA / f"rabbitmq_{name}.bin").read_bytes()


def method(m: object) -> bytes:
    return frame.marshal(m, 0)  # type: ignore[arg-type]


START = method(C.Start(server_properties={"product": "FakeMQ"}, mechanisms="PLAIN AMQPLAIN"))
TUNE = method(C.Tune(channel_max=2047, frame_max=131072, heartbeat=60))
OPEN_OK = method(C.OpenOk())


def new() -> ClientHandshake:
    hs = ClientHandshake(username="guest", password="guest", vhost="/")
    assert hs.initiate() == PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"
    return hs


def feed(hs: ClientHandshake, data: bytes, step: int | None = None) -> list[Event]:
    """Feed ``data`` whole or ``step`` bytes at a time; close once open (as the probe does)."""
    events: list[Event] = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        events += hs.receive_data(data[i : i + step])
        assert hs.buffered <= MAX_BUFFERED
        if hs.state is State.OPEN:
            hs.close()
    return events


def sent_methods(data: bytes) -> list[object]:
    out = []
    while data:
        n, channel, m = frame.unmarshal(data)
        assert channel == 0
        out.append(m)
        data = data[n:]
    return out


# -- recorded RabbitMQ -------------------------------------------------------
@pytest.mark.parametrize("step", [1, 2, 7])
def test_recorded_ok_handshake_fragmented(step: int) -> None:
    hs = new()
    events = feed(hs, recorded("ok"), step)
    kinds = [type(e) for e in events]
    assert kinds == [StartReceived, TuneReceived, OpenOkReceived, CloseOkReceived]
    assert hs.state is State.CLOSED and hs.verdict is Verdict.OK
    start = events[0]
    assert isinstance(start, StartReceived)
    assert start.server_properties["product"] == "RabbitMQ"
    assert "PLAIN" in start.mechanisms
    tune = events[1]
    assert isinstance(tune, TuneReceived)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
    assert tune.negotiated == {"channel_max": 2047, "frame_max": 131072, "heartbeat": 0}


def test_recorded_ok_handshake_in_one_chunk() -> None:
    data = recorded("ok")
    close_ok = method(C.CloseOk())
    assert data.endswith(close_ok)
    hs = new()
    events = hs.receive_data(data[: -len(close_ok)])
    assert [type(e) for e in events] == [StartReceived, TuneReceived, OpenOkReceived]
    assert hs.state is State.OPEN and hs.verdict is Verdict.OK
    hs.close()
    assert [type(e) for e in hs.receive_data(close_ok)] == [CloseOkReceived]
    # Close-Ok before we sent Close would be out of order:
    early = new()
    with pytest.raises(ProtocolError, match="expected nothing but heartbeats"):
        early.receive_data(data)


def test_replies_are_start_ok_tune_ok_open_close_in_order() -> None:
    hs = new()
    data = recorded("ok")
    replies: list[object] = []
    for i in range(len(data)):
        hs.receive_data(data[i : i + 1])
        replies += sent_methods(hs.data_to_send())
        if hs.state is State.OPEN:
            replies += sent_methods(hs.close())
    names = [type(m).__name__ for m in replies]
    assert names == ["StartOk", "TuneOk", "Open", "Close"]
    start_ok, tune_ok, open_, close = replies
    assert isinstance(start_ok, C.StartOk) and start_ok.mechanism == "PLAIN"
    assert start_ok.response == "\0guest\0guest"  # SASL PLAIN, RFC 4616
    assert start_ok.client_properties["product"] == "hangproof"
    assert start_ok.client_properties["capabilities"]["authentication_failure_close"] is True
    assert isinstance(tune_ok, C.TuneOk) and tune_ok.heartbeat == 0
    assert isinstance(open_, C.Open) and open_.virtual_host == "/"
    assert isinstance(close, C.Close) and close.reply_code == 200


@pytest.mark.parametrize(
    ("name", "verdict", "code", "during"),
    [
        ("auth_failed", Verdict.AUTH_FAILED, 403, State.AWAIT_TUNE),
        ("vhost_denied", Verdict.VHOST_DENIED, 530, State.AWAIT_OPEN_OK),
        ("vhost_missing", Verdict.VHOST_DENIED, 530, State.AWAIT_OPEN_OK),
    ],
)
def test_recorded_server_close_maps_to_verdict(
    name: str, verdict: Verdict, code: int, during: State
) -> None:
    for step in (None, 1):
        hs = new()
        events = feed(hs, recorded(name), step)
        close = events[-1]
        assert isinstance(close, CloseReceived)
        assert (close.reply_code, close.during, close.verdict) == (code, during, verdict)
        assert hs.state is State.CLOSED and hs.verdict is verdict
        # The machine answers Close with Close-Ok (§2.3.7).
        assert type(sent_methods(hs.data_to_send())[-1]) is C.CloseOk


def test_recorded_protocol_header_echo_is_protocol_mismatch() -> None:
    hs = new()
    events = feed(hs, recorded("protocol_mismatch"), 1)
    assert len(events) == 1 and isinstance(events[0], ServerProtocolHeader)
    assert events[0].version == "0-9-1"
    assert hs.verdict is Verdict.PROTOCOL_MISMATCH and hs.state is State.CLOSED


@pytest.mark.parametrize(
    ("header", "version"),
    [(b"AMQP\x01\x01\x00\x0a", "1-0-10 (protocol id 1)"), (b"AMQP\x00\x01\x00\x00", "1-0-0")],
)
def test_other_protocol_headers_are_protocol_mismatch(header: bytes, version: str) -> None:
    hs = new()
    (event,) = hs.receive_data(header)
    assert isinstance(event, ServerProtocolHeader) and event.version == version
    assert hs.verdict is Verdict.PROTOCOL_MISMATCH
    # The server closes next; end of stream keeps the verdict.
    assert isinstance(hs.receive_data(b"")[0], PeerClosed)
    assert hs.verdict is Verdict.PROTOCOL_MISMATCH


# -- heartbeats and end of stream ---------------------------------------------
def test_heartbeats_are_counted_and_are_not_progress() -> None:
    hs = new()
    hs.receive_data(START)
    events = hs.receive_data(heartbeat_frame() * 5)
    assert [e.count for e in events if isinstance(e, HeartbeatReceived)] == [1, 2, 3, 4, 5]
    assert hs.state is State.AWAIT_TUNE and hs.verdict is None
    assert hs.heartbeats_received == 5


def test_heartbeats_before_start_keep_waiting_for_start() -> None:
    hs = new()
    for _ in range(3):
        hs.receive_data(heartbeat_frame())
    assert hs.state is State.AWAIT_START and hs.heartbeats_received == 3


def test_end_of_stream_before_anything_is_closed() -> None:
    hs = new()
    (event,) = hs.receive_data(b"")
    assert isinstance(event, PeerClosed) and event.during is State.AWAIT_START
    assert hs.verdict is Verdict.CLOSED and hs.state is State.CLOSED


def test_end_of_stream_mid_frame_reports_buffered_bytes() -> None:
    hs = new()
    hs.receive_data(START[:10])
    (event,) = hs.receive_data(b"")
    assert isinstance(event, PeerClosed) and event.buffered == 10
    assert hs.buffered == 0


def test_end_of_stream_after_start_ok() -> None:
    # RabbitMQ without authentication_failure_close drops the socket on bad credentials.
    hs = new()
    hs.receive_data(START)
    (event,) = hs.receive_data(b"")
    assert isinstance(event, PeerClosed) and event.during is State.AWAIT_TUNE


# -- verdict mapping of Close -------------------------------------------------
@pytest.mark.parametrize(
    ("before", "code", "verdict"),
    [
        (b"", 320, Verdict.CLOSED),  # CONNECTION_FORCED before Start
        (START, 403, Verdict.AUTH_FAILED),
        (START, 530, Verdict.CLOSED),  # not a credentials refusal
        (START + TUNE, 403, Verdict.VHOST_DENIED),
        (START + TUNE, 530, Verdict.VHOST_DENIED),
        (START + TUNE, 541, Verdict.CLOSED),  # INTERNAL_ERROR
    ],
)
def test_close_reply_code_by_step(before: bytes, code: int, verdict: Verdict) -> None:
    hs = new()
    if before:
        hs.receive_data(before)
    events = hs.receive_data(method(C.Close(code, "nope", 10, 40)))
    assert isinstance(events[-1], CloseReceived) and events[-1].verdict is verdict
    assert hs.verdict is verdict


def test_data_after_close_is_ignored_not_an_error() -> None:
    hs = new()
    hs.receive_data(method(C.Close(320, "shutdown", 0, 0)))
    assert hs.receive_data(b"whatever follows") == []
    assert hs.verdict is Verdict.CLOSED


def test_tune_negotiation_caps_frame_max_and_can_take_server_heartbeat() -> None:
    hs = ClientHandshake("u", "p", "v", heartbeat=None)
    hs.initiate()
    hs.receive_data(START)
    (tune,) = hs.receive_data(method(C.Tune(channel_max=0, frame_max=0, heartbeat=30)))
    assert isinstance(tune, TuneReceived)
    # 0 means "no limit" from the server: we still never take more than our cap.
    assert tune.negotiated == {"channel_max": 2047, "frame_max": MAX_FRAME_SIZE, "heartbeat": 30}
    sent = sent_methods(hs.data_to_send())
    assert isinstance(sent[-1], C.Open) and sent[-1].virtual_host == "v"


# -- hostile or broken peers ---------------------------------------------------
def test_huge_announced_frame_is_refused_from_its_header_alone() -> None:
    hs = new()
    header = struct.pack(">BHI", 1, 0, 0xFFFFFFF0)  # "4 GiB are coming"
    with pytest.raises(ProtocolError) as info:
        hs.receive_data(header)
    assert info.value.verdict is Verdict.NOT_AMQP
    assert "more than our cap" in info.value.reason
    assert hs.state is State.FAILED and hs.buffered == 0


def test_frame_just_above_cap_refused_just_at_cap_buffered() -> None:
    at_cap = new()
    at_cap.receive_data(struct.pack(">BHI", 1, 0, MAX_FRAME_SIZE) + b"\0" * 100)
    assert at_cap.buffered == 107  # waiting for the rest of a frame it may accept
    above = new()
    with pytest.raises(ProtocolError):
        above.receive_data(struct.pack(">BHI", 1, 0, MAX_FRAME_SIZE + 1))


def test_a_huge_chunk_of_heartbeats_never_grows_the_buffer() -> None:
    hs = new()
    hs.receive_data(START)
    events = hs.receive_data(heartbeat_frame() * (MAX_BUFFERED // 8 * 3))
    assert hs.buffered == 0 and len(events) == MAX_BUFFERED // 8 * 3


@pytest.mark.parametrize(
    ("data", "verdict", "words"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", Verdict.NOT_AMQP, "looks like HTTP"),
        (b"\x15\x03\x03\x00\x02\x02\x46", Verdict.TLS_REQUIRED, "TLS alert"),
        (b"\x16\x03\x01\x00\x5c\x02\x00", Verdict.TLS_REQUIRED, "TLS handshake"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", Verdict.NOT_AMQP, "0x53"),
        (b"AMQX\x00\x00\x09\x01", Verdict.NOT_AMQP, "AMQX"),
        (b"\x00\x00\x00", Verdict.NOT_AMQP, "0x00"),
    ],
)
def test_garbage_first_bytes(data: bytes, verdict: Verdict, words: str) -> None:
    hs = new()
    with pytest.raises(ProtocolError) as info:
        feed(hs, data, 1)  # detected as early as possible, byte by byte
    assert info.value.verdict is verdict
    assert words in info.value.reason
    assert hs.state is State.FAILED and hs.verdict is verdict
    with pytest.raises(ProtocolError):  # stays failed
        hs.receive_data(b"\x08")


def test_bad_frame_end_octet() -> None:
    hs = new()
    with pytest.raises(ProtocolError, match="frame-end"):
        hs.receive_data(START[:-1] + b"\x00")


def test_frame_on_a_nonzero_channel() -> None:
    hs = new()
    with pytest.raises(ProtocolError, match="channel 1"):
        hs.receive_data(frame.marshal(C.Start(), 1))


def test_heartbeat_with_payload() -> None:
    hs = new()
    with pytest.raises(ProtocolError, match="heartbeat frame with"):
        hs.receive_data(struct.pack(">BHI", 8, 0, 1) + b"x\xce")


def test_out_of_order_method() -> None:
    hs = new()
    with pytest.raises(ProtocolError, match=r"expected Connection\.Start"):
        hs.receive_data(TUNE)


def test_content_frames_during_handshake() -> None:
    hs = new()
    with pytest.raises(ProtocolError):
        hs.receive_data(struct.pack(">BHI", 3, 0, 1) + b"x\xce")


def test_undecodable_method_payload() -> None:
    hs = new()
    payload = struct.pack(">I", 0x000A000A) + b"\x00\x09\xff\xff\xff\xff"  # table length 4 GiB
    with pytest.raises(ProtocolError, match="undecodable"):
        hs.receive_data(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")


def test_server_without_plain_is_auth_failed() -> None:
    hs = new()
    with pytest.raises(ProtocolError) as info:
        hs.receive_data(method(C.Start(mechanisms="EXTERNAL")))
    assert info.value.verdict is Verdict.AUTH_FAILED


def test_protocol_header_after_start_is_garbage() -> None:
    hs = new()
    hs.receive_data(START)
    with pytest.raises(ProtocolError):
        hs.receive_data(PROTOCOL_HEADER)


# -- API misuse is the caller's bug, not the peer's --------------------------------
def test_misuse_raises_runtime_error() -> None:
    hs = ClientHandshake()
    with pytest.raises(RuntimeError):
        hs.receive_data(b"x")
    hs.initiate()
    with pytest.raises(RuntimeError):
        hs.initiate()
    with pytest.raises(RuntimeError):
        hs.close()


def test_password_not_in_repr() -> None:
    assert "s3cret" not in repr(ClientHandshake("bob", "s3cret"))


def test_full_crafted_handshake_with_heartbeats_interleaved() -> None:
    hs = new()
    hb = heartbeat_frame()
    events = feed(hs, hb + START + hb + TUNE + hb + OPEN_OK + method(C.CloseOk()), 3)
    assert [type(e) for e in events if not isinstance(e, HeartbeatReceived)] == [
        StartReceived,
        TuneReceived,
        OpenOkReceived,
        CloseOkReceived,
    ]
    assert hs.heartbeats_received == 3 and hs.verdict is Verdict.OK
