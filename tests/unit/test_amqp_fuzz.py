"""Fuzz the handshake machine: whatever a peer sends, it raises only ProtocolError
and never holds more than MAX_BUFFERED bytes.

Bounded so the unit suite stays fast (a few seconds): moderate ``max_examples``,
no deadline flakiness on a loaded 2-core box.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hangproof.amqp import MAX_BUFFERED, ClientHandshake, ProtocolError, State, heartbeat_frame

DATA = Path(__file__).resolve().parent.parent / "data" / "amqp"
RECORDED = [p.read_bytes() for p in sorted(DATA.glob("rabbitmq_*.bin"))]

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a failure reproduces
)


def frame_header(kind: int, channel: int, size: int) -> bytes:
    return struct.pack(">BHI", kind, channel, size)


# Plausible-looking pieces: valid frames, frame headers with wild sizes, TLS and
# HTTP openers, protocol headers, plus raw noise.
pieces = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([heartbeat_frame(), b"AMQP\x00\x00\x09\x01", b"\x16\x03\x01", b"HTTP/1.1"]),
    st.builds(
        frame_header,
        st.sampled_from([1, 2, 3, 8, 0x41]),
        st.integers(0, 3),
        st.integers(0, 2**32 - 1),
    ),
    st.sampled_from(RECORDED).flatmap(
        lambda rec: st.tuples(st.integers(0, len(rec)), st.integers(0, len(rec))).map(
            lambda ab: rec[min(ab) : max(ab)]
        )
    ),
)


def drive(chunks: list[bytes], close_when_open: bool = True) -> None:
    hs = ClientHandshake("guest", "guest", "/")
    hs.initiate()
    for chunk in chunks:
        try:
            hs.receive_data(chunk)
        except ProtocolError as exc:
            assert hs.state is State.FAILED and hs.verdict is exc.verdict
            assert hs.buffered == 0
            return
        assert hs.buffered <= MAX_BUFFERED
        hs.data_to_send()
        if close_when_open and hs.state is State.OPEN:
            hs.close()
        if hs.state is State.CLOSED:
            return


@FUZZ
@given(st.lists(pieces, max_size=12))
def test_structured_noise_only_raises_protocol_error(chunks: list[bytes]) -> None:
    drive(chunks)


@FUZZ
@given(st.binary(max_size=2048), st.integers(1, 64))
def test_raw_bytes_in_random_fragments(data: bytes, step: int) -> None:
    drive([data[i : i + step] for i in range(0, len(data), step)])


@FUZZ
@given(st.sampled_from(RECORDED), st.integers(0, 600), st.integers(0, 255))
def test_recorded_bytes_with_one_flipped_octet(data: bytes, where: int, value: int) -> None:
    mutated = bytearray(data)
    if mutated:
        mutated[where % len(mutated)] = value
    drive([bytes(mutated[i : i + 5]) for i in range(0, len(mutated), 5)])
