"""Evidence the way the report gathered it: ss, conntrack, iptables counters.

Parsers here are pure (text in, dicts out) and tested on recorded output.

    >>> parse_conntrack_line(
    ...     "tcp      6 119 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=40000 dport=32672 "
    ...     "src=198.18.0.100 dst=198.18.0.1 sport=32672 dport=40000 [ASSURED] mark=0 use=1")["dnat"]
    False
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


_CT_FIELD = re.compile(r"(src|dst|sport|dport)=(\S+)")


def parse_conntrack_line(line: str) -> dict[str, Any]:
    """A ``conntrack -L`` line -> original/reply tuples, state, and ``dnat``.

    ``dnat`` is true when the reply comes from somewhere other than the
    original destination: the connection was NATed to a pod.
    """
    fields = _CT_FIELD.findall(line)
    orig = dict(fields[:4])
    reply = dict(fields[4:8])
    tokens = line.split()
    state = next((t for t in tokens[3:5] if t.isupper() and "=" not in t), None)
    return {
        "state": state,
        "original": orig,
        "reply": reply,
        "dnat": bool(reply)
        and (reply.get("src"), reply.get("sport")) != (orig.get("dst"), orig.get("dport")),
        "snat": bool(reply)
        and (reply.get("dst"), reply.get("dport")) != (orig.get("src"), orig.get("sport")),
        "raw": line.strip(),
    }


def parse_conntrack(text: str) -> list[dict[str, Any]]:
    return [parse_conntrack_line(line) for line in text.splitlines() if "src=" in line]
