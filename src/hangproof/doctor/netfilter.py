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


# -- nftables (kube-proxy's nftables mode) ------------------------------------
#: kube-proxy's nftables map from (protocol . port) to the NodePort's chain.
NFT_NODEPORT_MAP_TYPE = ["inet_proto", "inet_service"]


def _nft_objects(ruleset: str | dict[str, Any]) -> list[dict[str, Any]]:
    data = json.loads(ruleset) if isinstance(ruleset, str) else ruleset
    items = data.get("nftables", []) if isinstance(data, dict) else []
    return [i for i in items if isinstance(i, dict)]


def _is_fib_local(expr: dict[str, Any]) -> bool:
    """``fib daddr type local`` (what kube-proxy writes for --nodeport-addresses all)."""
    m = expr.get("match")
    if not isinstance(m, dict) or m.get("op") not in ("==", "in"):
        return False
    fib = (m.get("left") or {}).get("fib") if isinstance(m.get("left"), dict) else None
    if not isinstance(fib, dict) or fib.get("result") != "type":
        return False
    flags = fib.get("flags") or []
    flags = [flags] if isinstance(flags, str) else flags
    right = m.get("right")
    if isinstance(right, dict):
        right = right.get("set", [])
    rights = [right] if isinstance(right, str) else list(right or [])
    return "daddr" in flags and "local" in rights


def _daddr_set(expr: dict[str, Any]) -> str | None:
    """The set name of ``ip daddr @SET``."""
    m = expr.get("match")
    if not isinstance(m, dict) or m.get("op") not in ("==", "in"):
        return None
    left = m.get("left")
    payload = left.get("payload") if isinstance(left, dict) else None
    right = m.get("right")
    if (
        isinstance(payload, dict)
        and payload.get("field") == "daddr"
        and isinstance(right, str)
        and right.startswith("@")
    ):
        return right[1:]
    return None


def _targets(exprs: list[Any]) -> list[str]:
    """Chains a rule's expressions jump or go to (verdicts and verdict maps)."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("jump", "goto"):
                v = node.get(key)
                if isinstance(v, dict) and isinstance(v.get("target"), str):
                    out.append(v["target"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(exprs)
    return out


def _elements(obj: dict[str, Any]) -> list[Any]:
    elems = obj.get("elem") or []
    return [
        e.get("elem", {}).get("val", e) if isinstance(e, dict) and "elem" in e else e for e in elems
    ]


def _rejects_undnat_nft(exprs: list[Any]) -> tuple[bool, int | None]:
    """``ct status != dnat ... reject|drop`` (mitigation 2 written in nftables), and its port."""
    undnat = False
    port: int | None = None
    verdict = False
    for e in exprs:
        if not isinstance(e, dict):
            continue
        m = e.get("match")
        if isinstance(m, dict):
            left = m.get("left") if isinstance(m.get("left"), dict) else {}
            ct = left.get("ct") if isinstance(left, dict) else None
            right = m.get("right")
            rights = right if isinstance(right, list) else [right]
            if isinstance(ct, dict) and ct.get("key") == "status" and "dnat" in rights:
                undnat = m.get("op") == "!="
            payload = left.get("payload") if isinstance(left, dict) else None
            if isinstance(payload, dict) and payload.get("field") == "dport":
                if isinstance(right, int):
                    port = right
        if "reject" in e or "drop" in e:
            verdict = True
    return undnat and verdict, port


def parse_nft_ruleset(ruleset: str | dict[str, Any]) -> NodePortGate | None:
    """kube-proxy's NodePort path from ``nft -j list ruleset``; None if there is none.

    The gate is the rule that sends traffic to the NodePort verdict map (type
    ``inet_proto . inet_service``): ``fib daddr type local`` is the incident's
    gate (judged on a connection's first packet, like addrtype LOCAL), ``ip
    daddr @nodeport-ips`` is a static list (``--nodeport-addresses primary``).

    >>> rs = {"nftables": [
    ...   {"map": {"family": "ip", "table": "kube-proxy", "name": "service-nodeports",
    ...            "type": ["inet_proto", "inet_service"], "map": "verdict",
    ...            "elem": [[{"concat": ["tcp", 32672]}, {"goto": {"target": "external-X"}}]]}},
    ...   {"chain": {"family": "ip", "table": "kube-proxy", "name": "nat-output",
    ...              "type": "nat", "hook": "output", "prio": -100}},
    ...   {"rule": {"family": "ip", "table": "kube-proxy", "chain": "nat-output",
    ...             "expr": [{"jump": {"target": "services"}}]}},
    ...   {"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "expr": [
    ...     {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
    ...                "right": "local"}},
    ...     {"vmap": {"key": {}, "data": "@service-nodeports"}}]}}]}
    >>> gate = parse_nft_ruleset(rs)
    >>> gate.local_gate is not None, gate.reached_from_output, [r.port for r in gate.node_ports]
    (True, True, [32672])
    """
    objs = _nft_objects(ruleset)
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    sets: dict[tuple[str, str, str], dict[str, Any]] = {}
    for item in objs:
        for kind in ("set", "map"):
            if kind in item:
                o = item[kind]
                sets[(o.get("family", ""), o.get("table", ""), o.get("name", ""))] = o
        if "chain" in item:
            c = item["chain"]
            chains[(c.get("family", ""), c.get("table", ""), c.get("name", ""))] = c
        if "rule" in item:
            r = item["rule"]
            key = (r.get("family", ""), r.get("table", ""), r.get("chain", ""))
            rules.setdefault(key, []).append(r)
    gate_rule: dict[str, Any] | None = None
    gate_kind = ""
    static: tuple[str, ...] | None = None
    ports: dict[int, NodePortRule] = {}
    for (family, table, chain), chain_rules in rules.items():
        for r in chain_rules:
            exprs = r.get("expr") or []
            vmaps = [
                e["vmap"] for e in exprs if isinstance(e, dict) and isinstance(e.get("vmap"), dict)
            ]
            maps = [
                sets.get((family, table, str(v.get("data", ""))[1:]))
                for v in vmaps
                if str(v.get("data", "")).startswith("@")
            ]
            nodeport_maps = [
                m
                for m in maps
                if m is not None
                and m.get("type") == NFT_NODEPORT_MAP_TYPE
                and m.get("map") == "verdict"
                and "endpoint" not in m.get("name", "")
                and m.get("name") != "no-endpoint-nodeports"
            ]
            if not nodeport_maps:
                continue
            if any(_is_fib_local(e) for e in exprs if isinstance(e, dict)):
                kind = "local"
            else:
                set_name = next(
                    (n for e in exprs if isinstance(e, dict) and (n := _daddr_set(e))), None
                )
                if set_name is None:
                    continue
                kind = "static"
                elems = _elements(sets.get((family, table, set_name), {}))
                static = tuple(str(x) for x in elems if isinstance(x, str))
            if gate_rule is None or kind == "local":
                gate_rule, gate_kind = {**r, "_where": (family, table, chain)}, kind
            for elem in _elements(nodeport_maps[0]):
                key = elem[0] if isinstance(elem, list) and elem else None
                concat = key.get("concat") if isinstance(key, dict) else None
                port = next((x for x in concat or [] if isinstance(x, int)), None)
                if port is not None and port not in ports:
                    target = _targets(elem[1:])
                    ports[port] = NodePortRule(
                        port,
                        target[0] if target else "",
                        f"nft: {family} {table} {nodeport_maps[0].get('name')} "
                        f"{{ tcp . {port} : {target[0] if target else '?'} }}",
                    )
    if gate_rule is None:
        return None
    family, table, chain = gate_rule["_where"]
    # Which chains the nat output hook reaches (jump/goto, bounded depth).
    starts = [k for k, c in chains.items() if c.get("hook") == "output" and c.get("type") == "nat"]
    seen = set(starts)
    frontier = list(starts)
    for _ in range(_MAX_CHAIN_DEPTH):
        nxt = []
        for key in frontier:
            for r in rules.get(key, []):
                for target in _targets(r.get("expr") or []):
                    k = (key[0], key[1], target)
                    if k not in seen:
                        seen.add(k)
                        nxt.append(k)
        if not nxt:
            break
        frontier = nxt
    text = (
        f"nft: table {family} {table} chain {chain}: "
        + ("fib daddr type local" if gate_kind == "local" else "ip daddr @nodeport-ips")
        + " ... vmap (NodePorts)"
        + (f' comment "{gate_rule["comment"]}"' if gate_rule.get("comment") else "")
    )
    reject_ports: set[int] = set()
    reject_all = False
    for key, c in chains.items():
        if c.get("hook") != "input":
            continue
        for r in rules.get(key, []):
            hit, port = _rejects_undnat_nft(r.get("expr") or [])
            if hit and port is None:
                reject_all = True
            elif hit and port is not None:
                reject_ports.add(port)
    return NodePortGate(
        local_gate=text if gate_kind == "local" else None,
        reached_from_output=(family, table, chain) in seen,
        node_ports=tuple(sorted(ports.values(), key=lambda r: r.port)),
        reject_undnat_ports=frozenset(reject_ports),
        reject_undnat_all=reject_all,
        source="nftables",
        static_addresses=static if gate_kind == "static" else None,
    )


def merge_gates(iptables: NodePortGate | None, nft: NodePortGate | None) -> NodePortGate | None:
    """One view of the NodePort path when rules come from both iptables-save and nft.

    The locality gate is taken from whichever has one (iptables first); NodePorts
    and reject-undnat protections from both (iptables-nft rules show up in both).
    """
    if nft is None:
        return iptables
    if iptables is None:
        return nft
    primary = iptables if iptables.local_gate or not nft.local_gate else nft
    ports = {r.port: r for r in (*nft.node_ports, *iptables.node_ports)}
    return NodePortGate(
        local_gate=primary.local_gate,
        reached_from_output=primary.reached_from_output,
        node_ports=tuple(sorted(ports.values(), key=lambda r: r.port)),
        reject_undnat_ports=iptables.reject_undnat_ports | nft.reject_undnat_ports,
        reject_undnat_all=iptables.reject_undnat_all or nft.reject_undnat_all,
        source=primary.source if iptables.local_gate or nft.local_gate else "iptables+nftables",
        static_addresses=nft.static_addresses,
    )
