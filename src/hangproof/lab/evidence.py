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
    info: dict[str, Any] = {
        "state": state,
        "recv_q": int(recv_q),
        "send_q": int(send_q),
        "local": _plain_addr(local),
        "remote": _plain_addr(remote),
        "owner": users[0][0] if users else None,
        "pid": users[0][1] if users else None,
    }
    for key, value in _KV.findall(record):
        info[key] = _number(value)
    return info


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
