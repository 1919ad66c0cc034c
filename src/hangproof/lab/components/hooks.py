"""Which netfilter hooks saw the client's SYNs: the report's LOG lines, as counters.

The report added iptables LOG rules and saw the first SYN leave through OUTPUT
with OUT=br-roller, and the retransmission two seconds later leave with OUT=lo
and arrive in INPUT. LOG output from a non-initial namespace is off by default
(net.netfilter.nf_log_all_netns), and we never change the root namespace, so
the lab counts the same packets with counting-only rules in the mangle table.

    >>> rules = trace_rules("198.18.0.100", 32672, ["eth0"])
    >>> "-A HP-TRACE-OUT -o eth0" in rules
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

TRACE_OUT = "HP-TRACE-OUT"
TRACE_IN = "HP-TRACE-IN"


def trace_rules(vip: str, node_port: int, uplinks: Sequence[str]) -> str:
    """iptables-restore text (mangle, --noflush) counting SYNs to ``vip:node_port``.

    mangle OUTPUT runs before nat OUTPUT, so it sees the original destination
    whether or not the connection is then DNATed.
    """
    match = f"-d {vip}/32 -p tcp -m tcp --dport {node_port} --tcp-flags FIN,SYN,RST,ACK SYN"
    lines = [
        "*mangle",
        f":{TRACE_OUT} - [0:0]",
        f":{TRACE_IN} - [0:0]",
        f"-I OUTPUT 1 {match} -j {TRACE_OUT}",
        f"-I INPUT 1 {match} -j {TRACE_IN}",
    ]
    for ifname in [*uplinks, "lo"]:
        lines.append(f"-A {TRACE_OUT} -o {ifname}")
        lines.append(f"-A {TRACE_IN} -i {ifname}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class HookCount:
    """SYNs counted at one hook on one interface."""

    hook: str  # "OUTPUT" or "INPUT"
    interface: str
    packets: int

    def to_dict(self) -> dict[str, object]:
        return {"hook": self.hook, "interface": self.interface, "packets": self.packets}


_COUNTER_RULE = re.compile(
    r"^\[(?P<pkts>\d+):(?P<bytes>\d+)\] -A (?P<chain>HP-TRACE-(?:OUT|IN)) -(?P<dir>[io]) (?P<ifname>\S+)\s*$"
)


def parse_trace_counters(iptables_save_c: str) -> list[HookCount]:
    """Counters of our trace chains from ``iptables-save -c -t mangle`` output.

    >>> parse_trace_counters("[1:60] -A HP-TRACE-OUT -o eth0\\n[0:0] -A HP-TRACE-IN -i lo\\n")
    [HookCount(hook='OUTPUT', interface='eth0', packets=1), HookCount(hook='INPUT', interface='lo', packets=0)]
    """
    counts = []
    for line in iptables_save_c.splitlines():
        m = _COUNTER_RULE.match(line.strip())
        if m:
            hook = "OUTPUT" if m["chain"] == TRACE_OUT else "INPUT"
            counts.append(HookCount(hook, m["ifname"], int(m["pkts"])))
    return counts


def seen(counts: Sequence[HookCount]) -> list[dict[str, object]]:
    """Only the hooks that saw at least one SYN, in path order (OUTPUT then INPUT)."""
    order = {"OUTPUT": 0, "INPUT": 1}
    hit = [c for c in counts if c.packets > 0]
    return [c.to_dict() for c in sorted(hit, key=lambda c: (order[c.hook], c.interface == "lo"))]
