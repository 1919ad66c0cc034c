"""Pure analysis of iptables-save, ``ip -j addr`` and keepalived configuration.

Together they answer "can the incident's race happen on this node?":
kube-proxy's NodePort rules are gated by ``-m addrtype --dst-type LOCAL``
(judged once, on a connection's first packet), and the node can gain a floating
address (a VIP) while a SYN to it is in flight.

>>> gate = parse_iptables_save('''*nat
... :OUTPUT ACCEPT [0:0]
... -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
... -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
... -A KUBE-NODEPORTS -p tcp -m comment --comment "default/rabbitmq:amqp" -m tcp \\
...    --dport 32672 -j KUBE-MARK-MASQ
... COMMIT''')
>>> gate.local_gate is not None, gate.reached_from_output, [r.port for r in gate.node_ports]
(True, True, [32672])
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from hangproof.doctor.model import FloatingAddress, NodePortGate, NodePortRule

NODEPORTS_CHAIN = "KUBE-NODEPORTS"
#: Bound on chain traversal depth: kube-proxy nests 3 deep; more is a loop.
_MAX_CHAIN_DEPTH = 16


@dataclass
class IptablesRules:
    """``table -> chain -> list of rule token lists`` from iptables-save."""

    tables: dict[str, dict[str, list[list[str]]]] = field(default_factory=dict)

    def rules(self, table: str, chain: str) -> list[list[str]]:
        """The rules of one chain, in order (empty when absent)."""
        return self.tables.get(table, {}).get(chain, [])

    def reachable(self, table: str, start: str) -> set[str]:
        """Chains reachable by ``-j``/``-g`` from ``start`` (including it)."""
        seen = {start}
        frontier = [start]
        for _ in range(_MAX_CHAIN_DEPTH):
            nxt = []
            for chain in frontier:
                for tokens in self.rules(table, chain):
                    target = jump_target(tokens)
                    if target and target in self.tables.get(table, {}) and target not in seen:
                        seen.add(target)
                        nxt.append(target)
            if not nxt:
                break
            frontier = nxt
        return seen


def parse_iptables(text: str) -> IptablesRules:
    """Split iptables-save text into tables, chains and tokenised rules.

    >>> text = "*filter\\n:INPUT ACCEPT [0:0]\\n-A INPUT -j DROP\\nCOMMIT"
    >>> parse_iptables(text).rules("filter", "INPUT")
    [['-j', 'DROP']]
    """
    rules = IptablesRules()
    table: dict[str, list[list[str]]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = rules.tables.setdefault(line[1:], {})
        elif line == "COMMIT":
            table = None
        elif table is None:
            continue
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A ") or line.startswith("-I "):
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()  # an unbalanced quote in a comment; keep going
            if len(tokens) >= 2:
                table.setdefault(tokens[1], []).append(tokens[2:])
    return rules


def jump_target(tokens: list[str]) -> str | None:
    """The ``-j``/``-g`` target of a rule."""
    for flag in ("-j", "--jump", "-g", "--goto"):
        if flag in tokens:
            i = tokens.index(flag)
            if i + 1 < len(tokens):
                return tokens[i + 1]
    return None


def option(tokens: list[str], name: str) -> str | None:
    """The value after ``name`` in a rule, e.g. ``option(t, "--dport")``."""
    if name in tokens:
        i = tokens.index(name)
        if i + 1 < len(tokens):
            return tokens[i + 1]
    return None


def _negated(tokens: list[str], name: str) -> bool:
    i = tokens.index(name) if name in tokens else -1
    return i > 0 and tokens[i - 1] == "!"


def parse_iptables_save(text: str) -> NodePortGate:
    """kube-proxy's NodePort path and mitigation 2, from iptables-save text."""
    rules = parse_iptables(text)
    nat_chains = rules.tables.get("nat", {})
    local_gate: str | None = None
    gate_chain: str | None = None
    for chain, chain_rules in nat_chains.items():
        for tokens in chain_rules:
            if (
                jump_target(tokens) == NODEPORTS_CHAIN
                and option(tokens, "--dst-type") == "LOCAL"
                and not _negated(tokens, "--dst-type")
            ):
                local_gate = shlex.join(["-A", chain, *tokens])
                gate_chain = chain
                break
        if local_gate:
            break
    node_ports: dict[int, NodePortRule] = {}
    for tokens in rules.rules("nat", NODEPORTS_CHAIN):
        port = option(tokens, "--dport")
        if port and port.isdigit() and int(port) not in node_ports:
            node_ports[int(port)] = NodePortRule(
                int(port),
                option(tokens, "--comment") or "",
                shlex.join(["-A", NODEPORTS_CHAIN, *tokens]),
            )
    reached = gate_chain is not None and gate_chain in rules.reachable("nat", "OUTPUT")
    reject_ports: set[int] = set()
    reject_all = False
    for chain in rules.reachable("filter", "INPUT"):
        for tokens in rules.rules("filter", chain):
            if not _rejects_undnat(tokens):
                continue
            port = option(tokens, "--dport")
            if port and port.isdigit():
                reject_ports.add(int(port))
            elif port is None:
                reject_all = True
    return NodePortGate(
        local_gate=local_gate,
        reached_from_output=reached,
        node_ports=tuple(sorted(node_ports.values(), key=lambda r: r.port)),
        reject_undnat_ports=frozenset(reject_ports),
        reject_undnat_all=reject_all,
    )


def _rejects_undnat(tokens: list[str]) -> bool:
    # Mitigation 2: `-m conntrack ! --ctstate DNAT -j REJECT` (or DROP, which at
    # least does not complete a handshake with a port holder).
    state = option(tokens, "--ctstate")
    return (
        state is not None
        and "DNAT" in state.split(",")
        and _negated(tokens, "--ctstate")
        and jump_target(tokens) in ("REJECT", "DROP")
    )


def floating_from_ip_addr(ip_json: str | list[dict[str, Any]]) -> list[FloatingAddress]:
    """/32 IPv4 addresses beside a primary address on the same interface (``ip -j addr``).

    keepalived adds its VIP as such a /32; loopback's own 127/8 does not count.

    >>> floating_from_ip_addr([{"ifname": "eth0", "addr_info": [
    ...     {"family": "inet", "local": "198.18.0.1", "prefixlen": 24},
    ...     {"family": "inet", "local": "198.18.0.100", "prefixlen": 32}]}])[0].address
    '198.18.0.100'
    """
    links = json.loads(ip_json) if isinstance(ip_json, str) else ip_json
    out: list[FloatingAddress] = []
    for link in links or []:
        addrs = [a for a in link.get("addr_info", []) if a.get("family") == "inet"]
        primaries = [a for a in addrs if int(a.get("prefixlen", 32)) < 32]
        for a in addrs:
            local = a.get("local", "")
            if int(a.get("prefixlen", 0)) != 32 or not primaries or _is_loopback(local):
                continue
            beside = primaries[0]
            out.append(
                FloatingAddress(
                    local,
                    f"ip addr: /32 beside {beside.get('local')}/{beside.get('prefixlen')} "
                    f"on {link.get('ifname', '?')}",
                    held_here=True,
                )
            )
    return out


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class KeepalivedConfig:
    """The parts of a keepalived.conf doctor needs."""

    vips: tuple[str, ...]
    notify_master: tuple[str, ...]


_BLOCK = re.compile(r"virtual_ipaddress\s*\{([^}]*)\}", re.S)
_NOTIFY = re.compile(r"^\s*notify_master\s+(.+?)\s*$", re.M)


def parse_keepalived(text: str) -> KeepalivedConfig:
    """VIPs (``virtual_ipaddress`` blocks) and ``notify_master`` commands.

    >>> parse_keepalived('''vrrp_instance VI_1 {
    ...   virtual_ipaddress {
    ...     198.18.0.100/32 dev eth0
    ...   }
    ...   notify_master "/usr/sbin/conntrack -D -d 198.18.0.100"
    ... }''').vips
    ('198.18.0.100',)
    """
    text = re.sub(r"[#!].*$", "", text, flags=re.M)  # keepalived comments start with # or !
    vips: list[str] = []
    for block in _BLOCK.findall(text):
        for line in block.splitlines():
            words = line.split()
            if words:
                vips.append(words[0].split("/")[0])
    notify = tuple(m.strip().strip('"').strip("'") for m in _NOTIFY.findall(text))
    return KeepalivedConfig(tuple(dict.fromkeys(vips)), notify)


def flushes_conntrack(command_or_script: str) -> bool:
    """Whether a notify_master command (or the script text it runs) does mitigation 1.

    >>> flushes_conntrack("conntrack -D -d 198.18.0.100"), flushes_conntrack("logger up")
    (True, False)
    """
    return bool(re.search(r"\bconntrack\b[^\n]*\s(-D|--delete|-F|--flush)\b", command_or_script))
