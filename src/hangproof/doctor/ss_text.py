"""Parse ``ss`` text: the one reader of ss output, for the doctor and the lab.

The doctor reads ``ss -tinpeHOa`` (one line per socket, ``-O``; no header,
``-H``) when netlink inet_diag is not usable, and what a user pastes from a
node. The lab reads ``ss -Htanpie`` / ``ss -Htnpie`` live, where ss prints the
tcp_info fields on a continuation line; :func:`join_records` glues them back,
so both kinds of text parse the same way.

One record, two views of it: :class:`SsRecord` (the doctor's
:class:`~hangproof.doctor.model.TcpSocket`, same fields as the netlink path)
and :meth:`SsLine.as_dict` (the lab's evidence: ss's own state spelling, and a
field ss did not print is absent, not 0).

>>> rec = parse_ss('ESTAB 8 0 127.0.0.1:32672 127.0.0.1:41440 ino:0 sk:1 <-> bytes_received:8')[0]
>>> rec.socket.recv_q, rec.socket.inode, rec.socket.bytes_received
(8, 0, 8)
>>> [line] = read_records('ESTAB 0 0 198.18.0.1:40000 198.18.0.100:32672 users:(("celery",pid=9,fd=3))'
...                       '\\n\\t bytes_sent:8 bytes_acked:9 lastsnd:12000')
>>> d = line.as_dict()
>>> d["state"], d["owner"], d["pid"], d["fd"], d["bytes_sent"], "bytes_received" in d
('ESTAB', 'celery', 9, 3, 8, False)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hangproof.doctor.model import ProcessRef, TcpSocket

#: The ``users:(...)`` field of ``-p``: a list of ``("name",pid=N,fd=N)``. A name is
#: matched up to its ``",pid=``, so a process name may hold quotes, parentheses, spaces.
_USERS = re.compile(r'users:\(((?:\(".*?",pid=\d+,fd=\d+\),?)*)\)')
_USER = re.compile(r'\("(.*?)",pid=(\d+),fd=(\d+)\)')
_STATE = {"ESTAB": "ESTABLISHED", "UNCONN": "UNCONN"}
_TCP_INFO_MARKS = ("<->", "->", "<-", "<?>")
#: ss field -> TcpSocket field (the doctor's view; digits only).
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
#: The ss fields of the lab's evidence dict (:meth:`SsLine.as_dict`), under ss's names.
EVIDENCE_KEYS = frozenset(
    {
        "bytes_sent",
        "bytes_acked",
        "bytes_received",
        "bytes_retrans",
        "segs_out",
        "segs_in",
        "data_segs_out",
        "data_segs_in",
        "lastsnd",
        "lastrcv",
        "lastack",
        "unacked",
        "retrans",
        "ino",
        "rtt",
        "timer",
    }
)


@dataclass(frozen=True, slots=True)
class SsLine:
    """One ss record as ss printed it: its columns, its users, its ``key:value`` fields.

    ``local`` and ``remote`` are the endpoints as printed
    (``[::ffff:198.18.0.100]:32672``); ``fields`` maps each ``key:value`` token
    after them to its value text, in ss's order (a repeated key keeps its first
    place and its last value). ``tcp_info`` is whether ss printed a ``<->``
    mark, i.e. it had tcp_info for the socket. ``text`` is the record itself.
    """

    state: str
    recv_q: int
    send_q: int
    local: str
    remote: str
    users: tuple[ProcessRef, ...]
    fields: Mapping[str, str]
    tcp_info: bool
    text: str

    def as_dict(self) -> dict[str, Any]:
        """The lab's evidence record: state, queues, plain endpoints, first user, ss fields.

        Only :data:`EVIDENCE_KEYS` fields, as numbers where they are numbers
        (``rtt`` ``'0.05/0.02'`` and ``timer`` ``'(on,1.2sec,1)'`` stay text); a
        field ss did not print (``bytes_received`` before any byte came) is absent.

        >>> read_line('ESTAB 8 0 [::ffff:198.18.0.100]:32672 [::ffff:198.18.0.1]:40000 ino:0 sk:1').as_dict()
        ... # doctest: +NORMALIZE_WHITESPACE
        {'state': 'ESTAB', 'recv_q': 8, 'send_q': 0, 'local': '198.18.0.100:32672',
         'remote': '198.18.0.1:40000', 'owner': None, 'pid': None, 'fd': None, 'ino': 0}
        """
        first = self.users[0] if self.users else None
        info: dict[str, Any] = {
            "state": self.state,
            "recv_q": self.recv_q,
            "send_q": self.send_q,
            "local": plain_endpoint(self.local),
            "remote": plain_endpoint(self.remote),
            "owner": first.name if first else None,
            "pid": first.pid if first else None,
            "fd": first.fd if first else None,
        }
        for key, value in self.fields.items():
            if key in EVIDENCE_KEYS:
                info[key] = _number(value)
        return info


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


def plain_endpoint(text: str) -> str:
    """The lab's spelling of an endpoint: the host of :func:`split_endpoint`, the port as printed.

    >>> plain_endpoint("[::ffff:198.18.0.100]:32672"), plain_endpoint("*:*"), plain_endpoint("[::]:5672")
    ('198.18.0.100:32672', '*:*', ':::5672')
    """
    return f"{split_endpoint(text)[0]}:{text.rpartition(':')[2]}"


def parse_users(text: str) -> tuple[ProcessRef, ...]:
    """The processes of an ss record's ``users:(...)`` field (``-p``), in ss's order.

    >>> parse_users('LISTEN 0 4096 *:32672 *:* users:(("kube-proxy",pid=7,fd=3),("x) y",pid=8,fd=4))')
    (ProcessRef(pid=7, name='kube-proxy', fd=3), ProcessRef(pid=8, name='x) y', fd=4))
    """
    match = _USERS.search(text)
    if not match:
        return ()
    return tuple(ProcessRef(int(pid), name, int(fd)) for name, pid, fd in _USER.findall(match[1]))


def join_records(text: str) -> list[str]:
    """ss -i without -O prints tcp_info on a continuation line (leading tab); glue them back.

    >>> join_records("ESTAB 0 0 a:1 b:2 ino:5\\n\\t bytes_sent:8 \\n\\nLISTEN 0 5 *:3 *:*")
    ['ESTAB 0 0 a:1 b:2 ino:5 bytes_sent:8', 'LISTEN 0 5 *:3 *:*']
    """
    records: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t" and records:
            records[-1] += " " + line.strip()
        else:
            records.append(line.strip())
    return records


def read_line(record: str, state: str | None = None) -> SsLine | None:
    """One ss record (a line, or a line and its continuation glued), or None if it is not one.

    ``state``: the one state ss was asked for (``ss -Htn state syn-sent``); ss
    then leaves out the State column, and this puts it back.

    >>> read_line("0 1 198.18.0.1:40000 198.18.0.100:32672", state="SYN-SENT").local
    '198.18.0.1:40000'
    >>> read_line("Failed to find cgroup2 mount") is None
    True
    """
    users = parse_users(record)
    match = _USERS.search(record)
    rest = record[: match.start()] + " " + record[match.end() :] if match else record
    tokens = rest.split()
    if state is not None:
        tokens.insert(0, state)
    if len(tokens) < 5 or not tokens[1].isdigit() or not tokens[2].isdigit():
        return None
    fields: dict[str, str] = {}
    for token in tokens[5:]:
        key, sep, value = token.partition(":")
        if sep:
            fields[key] = value
    return SsLine(
        state=tokens[0],
        recv_q=int(tokens[1]),
        send_q=int(tokens[2]),
        local=tokens[3],
        remote=tokens[4],
        users=users,
        fields=fields,
        tcp_info=any(mark in tokens for mark in _TCP_INFO_MARKS),
        text=record,
    )


def read_records(text: str, state: str | None = None) -> list[SsLine]:
    """Every record of ss output (continuation lines glued); lines that are not records skipped."""
    out: list[SsLine] = []
    for record in join_records(text):
        line = read_line(record, state)
        if line is not None:
            out.append(line)
    return out


def parse_ss(text: str) -> list[SsRecord]:
    """Parse every record of ``ss -tinpeHOa`` output; lines that do not parse are skipped."""
    return [to_record(line) for line in read_records(text)]


def parse_ss_line(line: str) -> SsRecord | None:
    """One line, or None if it is not a socket line (warnings, blank lines)."""
    read = read_line(line)
    return to_record(read) if read is not None else None


def to_record(line: SsLine) -> SsRecord:
    """The doctor's view of a record: a :class:`TcpSocket`, as the netlink path builds it."""
    state = _STATE.get(line.state, line.state)
    local_addr, local_port = split_endpoint(line.local)
    remote_addr, remote_port = split_endpoint(line.remote)
    if state == "LISTEN" and local_addr in ("0.0.0.0", "::", "*"):
        local_addr = "*"
    fields = {
        _INT_KEYS[key]: int(value)
        for key, value in line.fields.items()
        if key in _INT_KEYS and value.isdigit()
    }
    sock = TcpSocket(
        state=state,
        local_addr=local_addr,
        local_port=local_port,
        remote_addr=remote_addr,
        remote_port=remote_port,
        recv_q=line.recv_q,
        send_q=line.send_q,
        has_tcp_info=line.tcp_info,
        **fields,  # type: ignore[arg-type]
    )
    if sock.bytes_sent is None and "bytes_sent" not in fields and sock.has_tcp_info:
        # ss omits zero counters; with tcp_info present, a missing bytes_sent is 0.
        sock = replace(sock, bytes_sent=0)
    return SsRecord(sock, line.users)


def _number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value
