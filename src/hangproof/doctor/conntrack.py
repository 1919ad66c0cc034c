"""Parse ``conntrack -L -p tcp`` output (plain or ``-o extended``) into entries.

The incident's tell: the wedged connection's entry has no DNAT, its reply
source is the VIP itself, not the pod.

>>> line = ("ipv4 2 tcp 6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=40000 "
...         "dport=32672 src=198.18.0.100 dst=198.18.0.1 sport=32672 dport=40000 [ASSURED] use=1")
>>> entry = parse_conntrack(line)[0]
>>> entry.original.dport, entry.dnat, entry.flags
(32672, False, ('ASSURED',))
"""

from __future__ import annotations

from hangproof.doctor.model import ConntrackEntry, ConntrackTuple

_TUPLE_KEYS = ("src", "dst", "sport", "dport")
_TCP_STATES = {
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
    "NONE",
}


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    """All TCP entries in ``text``; summary lines and non-TCP entries are skipped."""
    out: list[ConntrackEntry] = []
    for line in text.splitlines():
        entry = parse_conntrack_line(line)
        if entry is not None:
            out.append(entry)
    return out


def parse_conntrack_line(line: str) -> ConntrackEntry | None:
    """One entry, or None. The first src/dst/sport/dport group is the original
    direction, the second the reply (conntrack prints them in that order)."""
    tokens = line.split()
    if "tcp" not in tokens:
        return None
    groups: list[dict[str, str]] = [{}]
    state = ""
    flags: list[str] = []
    for token in tokens:
        if token.startswith("[") and token.endswith("]"):
            flags.append(token[1:-1])
            continue
        if token in _TCP_STATES:
            state = token
            continue
        key, sep, value = token.partition("=")
        if not sep or key not in _TUPLE_KEYS:
            continue
        if key in groups[-1]:
            if len(groups) == 2:
                break  # a third group (e.g. zone/labels variants): ignore the rest
            groups.append({})
        groups[-1][key] = value
    if len(groups) != 2 or any(len(g) != 4 for g in groups):
        return None
    try:
        original, reply = (
            ConntrackTuple(g["src"], g["dst"], int(g["sport"]), int(g["dport"])) for g in groups
        )
    except ValueError:
        return None
    return ConntrackEntry(original, reply, state, tuple(flags), line.strip())


def find_entry(
    entries: list[ConntrackEntry], src: str, sport: int, dst: str, dport: int
) -> ConntrackEntry | None:
    """The entry whose original direction is exactly this client's connect.

    >>> find_entry([], "198.18.0.1", 40000, "198.18.0.100", 32672) is None
    True
    """
    for entry in entries:
        o = entry.original
        if (o.src, o.sport, o.dst, o.dport) == (src, sport, dst, dport):
            return entry
    # A connection seen from its DNATed side: match the reply direction instead.
    for entry in entries:
        r = entry.reply
        if (r.dst, r.dport, r.src, r.sport) == (src, sport, dst, dport):
            return entry
    return None
