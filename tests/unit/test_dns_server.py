"""The lab's DNS responder (dns-stall fault): answers on bytes, no sockets."""

from __future__ import annotations

import struct
from pathlib import Path

from hangproof.lab.components.dns_server import (
    RCODE_NXDOMAIN,
    answer_addresses,
    load_records,
    query_packet,
    respond,
)

RECORDS = {"broker.hangproof.test": "198.18.201.1"}


def rcode(packet: bytes) -> int:
    return struct.unpack("!H", packet[2:4])[0] & 0xF


def test_a_record_answer_matches_the_query_id_with_ttl_zero() -> None:
    reply = respond(query_packet(0xBEEF, "Broker.Hangproof.Test."), RECORDS)
    assert reply[:2] == b"\xbe\xef"
    assert rcode(reply) == 0
    assert answer_addresses(reply) == ["198.18.201.1"]
    assert reply[-10:-6] == b"\x00\x00\x00\x00"  # TTL 0: nothing caches the old address


def test_other_types_get_nodata_and_unknown_names_nxdomain() -> None:
    aaaa = respond(query_packet(1, "broker.hangproof.test", qtype=28), RECORDS)
    assert rcode(aaaa) == 0 and answer_addresses(aaaa) == []
    unknown = respond(query_packet(2, "nosuch.hangproof.test"), RECORDS)
    assert rcode(unknown) == RCODE_NXDOMAIN and answer_addresses(unknown) == []


def test_garbage_gets_formerr_not_a_crash() -> None:
    assert rcode(respond(b"\x00\x07\x01", RECORDS)) == 1


def test_records_file_is_reread_and_missing_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    assert load_records(path) == {}
    path.write_text('{"Broker.hangproof.test.": "198.18.200.1"}')
    assert load_records(path) == {"broker.hangproof.test": "198.18.200.1"}
