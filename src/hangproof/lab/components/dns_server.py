"""A tiny authoritative DNS responder for the lab's DNS faults (UDP, A records only).

The dns-stall fault (:mod:`hangproof.lab.faults.dns_stall`) runs it in the
broker's namespace and points the clients' namespace at it (its own
resolv.conf). It answers ``A`` queries for the names in a JSON records file
(``{"broker.hangproof.test": "198.18.200.1"}``), re-read on every query so a
record flips by rewriting the file; other types of a known name get an empty
answer (NODATA), unknown names NXDOMAIN. TTL 0: nothing on the way caches.
Every query is logged, one line each, so a test can prove the client asked
and what it was told.

    >>> q = query_packet(0x1234, "broker.hangproof.test")
    >>> parse_query(q)
    (4660, 'broker.hangproof.test', 1)
    >>> answer = respond(q, {"broker.hangproof.test": "198.18.201.1"})
    >>> answer_addresses(answer)
    ['198.18.201.1']

Run (inside a lab namespace)::

    python -m hangproof.lab.components.dns_server 198.18.200.1 53 records.json
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from pathlib import Path

TYPE_A = 1
CLASS_IN = 1
RCODE_NXDOMAIN = 3
RCODE_FORMERR = 1
#: Upper bound of the server's life, so a crashed run leaves nothing for long.
MAX_LIFETIME = 3600.0


def _name(data: bytes, offset: int) -> tuple[str, int]:
    labels = []
    for _ in range(128):  # bounded: a name has at most 127 labels
        length = data[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        if length & 0xC0:
            raise ValueError("compressed names are not expected in a question")
        labels.append(data[offset : offset + length].decode("ascii", "replace"))
        offset += length
    raise ValueError("name too long")


def parse_query(data: bytes) -> tuple[int, str, int]:
    """(id, lower-case name, qtype) of the first question of a DNS query packet."""
    if len(data) < 12:
        raise ValueError("short packet")
    ident, _flags, qdcount = struct.unpack("!HHH", data[:6])
    if qdcount < 1:
        raise ValueError("no question")
    name, offset = _name(data, 12)
    qtype, _qclass = struct.unpack("!HH", data[offset : offset + 4])
    return ident, name.lower().rstrip("."), qtype


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def query_packet(ident: int, name: str, qtype: int = TYPE_A) -> bytes:
    """A standard recursive query for ``name`` (what a stub resolver sends)."""
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    return header + _encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def respond(data: bytes, records: dict[str, str]) -> bytes:
    """The answer to query ``data`` from ``records`` (name -> IPv4 address)."""
    try:
        ident, name, qtype = parse_query(data)
    except (ValueError, struct.error, IndexError):
        ident = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 0
        return struct.pack("!HHHHHH", ident, 0x8180 | RCODE_FORMERR, 0, 0, 0, 0)
    end = 12 + len(_encode_name(name)) + 4
    question = data[12:end]
    address = records.get(name)
    if address is None:
        return struct.pack("!HHHHHH", ident, 0x8580 | RCODE_NXDOMAIN, 1, 0, 0, 0) + question
    if qtype != TYPE_A:  # NODATA: the name exists, no record of that type
        return struct.pack("!HHHHHH", ident, 0x8580, 1, 0, 0, 0) + question
    answer = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 0, 4) + socket.inet_aton(address)
    return struct.pack("!HHHHHH", ident, 0x8580, 1, 1, 0, 0) + question + answer


def answer_addresses(packet: bytes) -> list[str]:
    """The A addresses in a response made by :func:`respond` (for tests and the fault)."""
    _ident, _flags, qd, an = struct.unpack("!HHHH", packet[:8])
    offset = 12
    for _ in range(qd):
        _, offset = _name(packet, offset)
        offset += 4
    found = []
    for _ in range(an):
        offset += 2  # the name pointer
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", packet[offset : offset + 10])
        offset += 10
        if rtype == TYPE_A and length == 4:
            found.append(socket.inet_ntoa(packet[offset : offset + 4]))
        offset += length
    return found


def load_records(path: Path) -> dict[str, str]:
    """The records file (name -> address); empty if missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k).lower().rstrip("."): str(v) for k, v in data.items()}


def serve(host: str, port: int, records: Path, lifetime: float = MAX_LIFETIME) -> None:
    """Answer queries on ``host:port`` (UDP) until ``lifetime`` seconds have passed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(1.0)
    print(f"dns: listening on {host}:{port}", flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        reply = respond(data, load_records(records))
        sock.sendto(reply, peer)
        try:
            _, name, qtype = parse_query(data)
        except (ValueError, struct.error, IndexError):
            name, qtype = "?", 0
        answer = ",".join(answer_addresses(reply)) or "-"
        print(f"{time.time():.3f} query {peer[0]} {name} type={qtype} -> {answer}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``HOST PORT RECORDS``: serve until killed (or one hour)."""
    parser = argparse.ArgumentParser(prog="dns_server")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("records")
    args = parser.parse_args(argv)
    serve(args.host, args.port, Path(args.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
