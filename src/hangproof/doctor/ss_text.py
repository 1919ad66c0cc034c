"""Parse ``ss -tinpeHOa`` text into the same records the netlink path gives.

The fallback when netlink inet_diag is not usable, and a way to read what a
user pastes from a node. One line per socket (``-O``), no header (``-H``).

>>> rec = parse_ss('ESTAB 8 0 127.0.0.1:32672 127.0.0.1:41440 ino:0 sk:1 <-> bytes_received:8')[0]
>>> rec.socket.recv_q, rec.socket.inode, rec.socket.bytes_received
(8, 0, 8)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hangproof.doctor.model import ProcessRef, TcpSocket

_USERS = re.compile(r"users:\((.*?)\)\s")
_USER = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+),fd=(\d+)\)')
_STATE = {"ESTAB": "ESTABLISHED", "UNCONN": "UNCONN"}
_INT_KEYS = {
    "ino": "inode",
    "uid": "uid",
    "bytes_received": "bytes_received",
    "bytes_acked": "bytes_acked",
    "bytes_sent": "bytes_sent",
    "lastrcv": "last_data_recv_ms",
    "lastsnd": "last_data_sent_ms",
    "lastack": "last_ack_recv_ms",
    "unacked": "unacked",
}


@dataclass(frozen=True, slots=True)
class SsRecord:
    """One ss line: the socket and the processes ss named as its users."""

    socket: TcpSocket
    users: tuple[ProcessRef, ...]


def split_endpoint(text: str) -> tuple[str, int]:
    """``'[::1]:5672'`` -> ``('::1', 5672)``; a ``*`` port becomes 0.

    >>> split_endpoint("[::ffff:127.0.0.1]:5672"), split_endpoint("0.0.0.0:*")
    (('127.0.0.1', 5672), ('0.0.0.0', 0))
    """
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]  # drop an interface scope (fe80::1%eth0)
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(port) if port.isdigit() else 0


def parse_ss(text: str) -> list[SsRecord]:
    """Parse every line of ``ss -tinpeHOa`` output; lines that do not parse are skipped."""
    out: list[SsRecord] = []
    for line in text.splitlines():
        record = parse_ss_line(line)
        if record is not None:
            out.append(record)
    return out


def parse_ss_line(line: str) -> SsRecord | None:
    """One line, or None if it is not a socket line (warnings, blank lines)."""
    users: tuple[ProcessRef, ...] = ()
    match = _USERS.search(line + " ")
    if match:
        users = tuple(
            ProcessRef(int(pid), name, int(fd)) for name, pid, fd in _USER.findall(match.group(1))
        )
        line = line[: match.start()] + line[match.end() - 1 :]
    tokens = line.split()
    if len(tokens) < 5 or not tokens[1].isdigit() or not tokens[2].isdigit():
        return None
    state = _STATE.get(tokens[0], tokens[0])
    local_addr, local_port = split_endpoint(tokens[3])
    remote_addr, remote_port = split_endpoint(tokens[4])
    if state == "LISTEN" and local_addr in ("0.0.0.0", "::", "*"):
        local_addr = "*"
    fields: dict[str, int] = {}
    for token in tokens[5:]:
        key, sep, value = token.partition(":")
        if sep and key in _INT_KEYS and value.isdigit():
            fields[_INT_KEYS[key]] = int(value)
    sock = TcpSocket(
        state=state,
        local_addr=local_addr,
        local_port=local_port,
        remote_addr=remote_addr,
        remote_port=remote_port,
        recv_q=int(tokens[1]),
        send_q=int(tokens[2]),
        has_tcp_info="<->" in tokens or "->" in tokens or "<-" in tokens or "<?>" in tokens,
        **fields,  # type: ignore[arg-type]
    )
    if sock.bytes_sent is None and "bytes_sent" not in fields and sock.has_tcp_info:
        # ss omits zero counters; with tcp_info present, a missing bytes_sent is 0.
        sock = _with(sock, bytes_sent=0)
    return SsRecord(sock, users)


def _with(sock: TcpSocket, **changes: int) -> TcpSocket:
    from dataclasses import replace

    return replace(sock, **changes)
