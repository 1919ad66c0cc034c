"""Evidence the way the report gathered it: ss text as the lab reads it live.

Parsers here are pure (text in, dicts out) and tested on recorded output.
conntrack text is parsed by :mod:`hangproof.doctor.conntrack`, the one place
for it.
"""

from __future__ import annotations

import re
from typing import Any

_USERS = re.compile(r'\("(?P<name>[^"]+)",pid=(?P<pid>\d+),fd=(?P<fd>\d+)\)')
_KV = re.compile(
    r"\b(bytes_sent|bytes_acked|bytes_received|bytes_retrans|segs_out|segs_in|"
    r"data_segs_out|data_segs_in|lastsnd|lastrcv|lastack|unacked|retrans|ino|"
    r"rtt|timer)[:=](\S+)"
)


def parse_ss_users(line: str) -> list[tuple[str, int]]:
    """``users:(("kube-proxy",pid=7,fd=3))`` -> ``[("kube-proxy", 7)]``."""
    return [(m["name"], int(m["pid"])) for m in _USERS.finditer(line)]


def join_ss_records(text: str) -> list[str]:
    """ss -i prints tcp_info on a continuation line (leading tab); glue them back."""
    records: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t" and records:
            records[-1] += " " + line.strip()
        else:
            records.append(line.strip())
    return records


def parse_ss_record(record: str) -> dict[str, Any]:
    """One ``ss -Htnpie`` record -> state, queues, addresses, owner, tcp_info fields.

    >>> r = parse_ss_record('ESTAB 8 0 [::ffff:198.18.0.100]:32672 [::ffff:198.18.0.1]:40000 ino:0 sk:1')
    >>> r["recv_q"], r["local"], r["remote"], r["owner"]
    (8, '198.18.0.100:32672', '198.18.0.1:40000', None)
    """
    parts = record.split()
    state, recv_q, send_q, local, remote = parts[0], parts[1], parts[2], parts[3], parts[4]
    users = parse_ss_users(record)
    first = _USERS.search(record)
    info: dict[str, Any] = {
        "state": state,
        "recv_q": int(recv_q),
        "send_q": int(send_q),
        "local": _plain_addr(local),
        "remote": _plain_addr(remote),
        "owner": users[0][0] if users else None,
        "pid": users[0][1] if users else None,
        "fd": int(first["fd"]) if first else None,
    }
    for key, value in _KV.findall(record):
        info[key] = _number(value)
    return info


#: A broker answers the 8-byte header with Connection.Start within milliseconds;
#: a socket that sent it and heard nothing for this long is the report's wedge.
WEDGE_IDLE_MS = 10_000


def stuck_handshakes(
    records: list[dict[str, Any]], vip: str, node_port: int, min_idle_ms: int = WEDGE_IDLE_MS
) -> list[dict[str, Any]]:
    """Client sockets of one node stuck the report's way, from its ``ss -Htanpie`` records.

    A client socket ESTAB to ``vip:node_port`` that sent bytes (the 8-byte AMQP
    header), received none, and sent nothing for ``min_idle_ms``, whose peer
    socket is in the same namespace (VIP:NodePort, not NATed to a pod) holding
    exactly those bytes unread (Recv-Q 8).

    >>> recs = [parse_ss_record(r) for r in (
    ...     'ESTAB 0 0 198.18.0.1:40000 198.18.0.100:32672 users:(("celery",pid=9,fd=3)) '
    ...     'bytes_sent:8 bytes_acked:9 lastsnd:12000',
    ...     'ESTAB 8 0 [::ffff:198.18.0.100]:32672 [::ffff:198.18.0.1]:40000 bytes_received:8')]
    >>> [(s["owner"], s["pid"], s["fd"], s["peer_recv_q"]) for s in stuck_handshakes(recs, "198.18.0.100", 32672)]
    [('celery', 9, 3, 8)]
    """
    target = f"{vip}:{node_port}"
    peers = {r["remote"]: r for r in records if r["state"] == "ESTAB" and r["local"] == target}
    stuck = []
    for r in records:
        if r["state"] != "ESTAB" or r["remote"] != target or r["pid"] is None:
            continue
        sent = r.get("bytes_sent") or 0
        idle = r.get("lastsnd")
        if not sent or r.get("bytes_received") or not isinstance(idle, int) or idle < min_idle_ms:
            continue
        peer = peers.get(r["local"])
        if peer is None or peer["recv_q"] != sent:
            continue
        stuck.append(
            {
                "owner": r["owner"],
                "pid": r["pid"],
                "fd": r["fd"],
                "local": r["local"],
                "remote": r["remote"],
                "bytes_sent": sent,
                "bytes_received": 0,
                "idle_ms": idle,
                "peer_recv_q": peer["recv_q"],
                "peer_owner": peer["owner"],
            }
        )
    return stuck


def _plain_addr(addr: str) -> str:
    """``[::ffff:1.2.3.4]:5`` / ``::ffff:1.2.3.4:5`` / ``1.2.3.4:5`` -> ``1.2.3.4:5``."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host.startswith("::ffff:"):
        host = host[len("::ffff:") :]
    return f"{host}:{port}"


def _number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value
