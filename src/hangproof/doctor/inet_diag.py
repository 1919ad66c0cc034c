"""NETLINK_SOCK_DIAG / inet_diag, as bytes in and records out (no sockets here).

We decode the kernel's messages with ``struct`` ourselves instead of through
pyroute2's generic NLA machinery: on 10,000 sockets pyroute2's ``DiagSocket``
took ~1.8 s, this takes a small fraction of that (see
``benchmarks/bench_doctor_scan.py``), and a pure decoder can be tested on
recorded dumps.

Layouts come from the kernel's uapi headers: ``linux/netlink.h`` (nlmsghdr,
nlattr), ``linux/inet_diag.h`` (inet_diag_req_v2, inet_diag_msg) and
``linux/tcp.h`` (tcp_info).

>>> len(build_request(2, seq=1))
72
>>> parse_dump(b"")
([], False)
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from hangproof.doctor.model import TcpSocket

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2  # part of a multi-part reply (every dump message)
#: The kernel's tables changed while it dumped them: the dump may miss or
#: repeat entries (linux/netlink.h; set when the dump's sequence check fails).
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
INET_DIAG_INFO = 2  # attribute carrying struct tcp_info

#: tcp_states.h order; index = kernel state number.
TCP_STATES = (
    "UNKNOWN",
    "ESTABLISHED",
    "SYN-SENT",
    "SYN-RECV",
    "FIN-WAIT-1",
    "FIN-WAIT-2",
    "TIME-WAIT",
    "UNCONN",  # TCP_CLOSE; ss prints UNCONN
    "CLOSE-WAIT",
    "LAST-ACK",
    "LISTEN",
    "CLOSING",
    "NEW-SYN-RECV",
)
ALL_STATES = (1 << len(TCP_STATES)) - 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid (ports and
# addresses in network order; ports go through ntohs), then if, cookie[2],
# expires, rqueue, wqueue, uid, inode. One unpack per message: this is the hot loop.
_MSG = struct.Struct("=BBBBHH16s16sI8sIIIII")
_NLA = struct.Struct("=HH")
_MSG_LEN = 72  # sizeof(struct inet_diag_msg)

# struct tcp_info offsets (linux/tcp.h). Older kernels send a shorter struct, so
# every field past the first block is read only if the attribute is long enough.
_TI_RETRANSMITS = 2
_TI_UNACKED = 24
_TI_LAST_DATA_SENT = 44
_TI_LAST_DATA_RECV = 52
_TI_LAST_ACK_RECV = 56
_TI_BYTES_ACKED = 120  # u64, Linux 4.1
_TI_BYTES_RECEIVED = 128  # u64, Linux 4.1
_TI_BYTES_SENT = 200  # u64, Linux 4.19
#: The fields we read, in one unpack, when tcp_info reaches tcpi_bytes_sent.
_TCP_INFO_FULL = struct.Struct("=24xI16xI4xII60xQQ64xQ")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


def build_request(family: int, *, seq: int, states: int = ALL_STATES) -> bytes:
    """One SOCK_DIAG_BY_FAMILY dump request for TCP sockets of ``family``, asking for tcp_info.

    >>> build_request(socket.AF_INET, seq=7)[:6]
    b'H\\x00\\x00\\x00\\x14\\x00'
    """
    ext = 1 << (INET_DIAG_INFO - 1)
    # inet_diag_req_v2: family, protocol, ext, pad, states, then an all-zero
    # inet_diag_sockid (ports and addresses are big-endian; zero matches all).
    body = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, ext, states) + b"\0" * 48
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


class NetlinkError(Exception):
    """The kernel answered a dump with an error (e.g. EPERM, or no inet_diag)."""

    def __init__(self, errno: int) -> None:
        super().__init__(f"netlink error {errno}")
        self.errno = errno


@dataclass
class DumpChunk:
    """What one ``recv`` of a dump held: sockets, whether the dump ended, and
    whether the kernel flagged it interrupted (``NLM_F_DUMP_INTR``)."""

    sockets: list[TcpSocket]
    done: bool
    interrupted: bool = False


def decode_chunk(data: bytes | memoryview) -> DumpChunk:
    """Decode one or more netlink messages (one ``recv``) into sockets and flags.

    Raises :class:`NetlinkError` on ``NLMSG_ERROR`` with a non-zero code.

    >>> decode_chunk(_NLMSGHDR.pack(20, NLMSG_DONE, NLM_F_MULTI | NLM_F_DUMP_INTR, 1, 0) + bytes(4))
    DumpChunk(sockets=[], done=True, interrupted=True)
    """
    view = memoryview(data)
    out: list[TcpSocket] = []
    interrupted = False
    offset = 0
    end = len(view)
    while offset + _NLMSGHDR.size <= end:
        length, mtype, flags, _seq, _pid = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > end:
            break  # truncated: the caller's buffer was too small; never read past it
        interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
        if mtype == NLMSG_DONE:
            return DumpChunk(out, True, interrupted)
        if mtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", view, offset + _NLMSGHDR.size)
            if code != 0:
                raise NetlinkError(-code)
            return DumpChunk(out, True, interrupted)
        if mtype == SOCK_DIAG_BY_FAMILY and length >= _NLMSGHDR.size + _MSG_LEN:
            out.append(_parse_msg(view, offset + _NLMSGHDR.size, offset + length))
        offset += (length + 3) & ~3
    return DumpChunk(out, False, interrupted)


def parse_dump(data: bytes | memoryview) -> tuple[list[TcpSocket], bool]:
    """Decode one ``recv`` into sockets and whether the dump is complete (``NLMSG_DONE``).

    :func:`decode_chunk` also reports ``NLM_F_DUMP_INTR``.

    >>> parse_dump(_NLMSGHDR.pack(20, NLMSG_DONE, 2, 1, 0) + b"\\0" * 4)
    ([], True)
    """
    chunk = decode_chunk(data)
    return chunk.sockets, chunk.done


def _parse_msg(view: memoryview, start: int, stop: int) -> TcpSocket:
    (
        family,
        state,
        _timer,
        retrans,
        sport,
        dport,
        src_raw,
        dst_raw,
        _if,
        _cookie,
        _expires,
        rqueue,
        wqueue,
        uid,
        inode,
    ) = _MSG.unpack_from(view, start)
    if family == socket.AF_INET:
        src = socket.inet_ntop(socket.AF_INET, src_raw[:4])
        dst = socket.inet_ntop(socket.AF_INET, dst_raw[:4])
    else:
        src = _ipv6(src_raw)
        dst = _ipv6(dst_raw)
    state_name = TCP_STATES[state] if state < len(TCP_STATES) else str(state)
    if state_name == "LISTEN" and src in ("0.0.0.0", "::"):
        src = "*"  # as ss prints a wildcard listener
    info: tuple[int, ...] | None = None
    attr = start + _MSG_LEN
    nla = _NLA.unpack_from
    while attr + 4 <= stop:
        alen, atype = nla(view, attr)
        if alen < 4:
            break
        if atype & 0x3FFF == INET_DIAG_INFO:
            info = _parse_tcp_info(view, attr + 4, min(attr + alen, stop))
            break  # nothing after tcp_info is needed
        attr += (alen + 3) & ~3
    if info is None:
        tcp: tuple[int, ...] = ()  # no tcp_info: the model's defaults, flagged below
    else:
        unacked, last_sent, last_recv, last_ack, acked, received, sent = info
        tcp = (received, acked, sent, last_recv, last_sent, last_ack, unacked)
    return TcpSocket(
        state_name,
        src,
        socket.ntohs(sport),
        dst,
        socket.ntohs(dport),
        rqueue,
        wqueue,
        inode,
        uid,
        *tcp,
        retransmits=retrans,
        has_tcp_info=info is not None,
    )


def _parse_tcp_info(view: memoryview, start: int, stop: int) -> tuple[int, ...]:
    """(unacked, last_data_sent, last_data_recv, last_ack_recv, bytes_acked,
    bytes_received, bytes_sent); bytes_sent is None on kernels before 4.19."""
    size = stop - start
    if size >= _TCP_INFO_FULL.size:
        return _TCP_INFO_FULL.unpack_from(view, start)

    # Older kernels send a shorter struct: read field by field, what is there.
    def u32(off: int) -> int:
        return _U32.unpack_from(view, start + off)[0] if off + 4 <= size else 0

    def u64(off: int) -> int | None:
        return _U64.unpack_from(view, start + off)[0] if off + 8 <= size else None

    return (
        u32(_TI_UNACKED),
        u32(_TI_LAST_DATA_SENT),
        u32(_TI_LAST_DATA_RECV),
        u32(_TI_LAST_ACK_RECV),
        u64(_TI_BYTES_ACKED) or 0,
        u64(_TI_BYTES_RECEIVED) or 0,
        u64(_TI_BYTES_SENT),
    )  # type: ignore[return-value]


def _ipv6(raw: bytes) -> str:
    # Show IPv4-mapped addresses as plain IPv4, so tuples match conntrack's view.
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse_dumps(chunks: Iterable[bytes]) -> list[TcpSocket]:
    """Decode a recorded sequence of ``recv`` results (several families, each ending in DONE).

    >>> parse_dumps([])
    []
    """
    out: list[TcpSocket] = []
    for chunk in chunks:
        out.extend(parse_dump(chunk)[0])
    return out
