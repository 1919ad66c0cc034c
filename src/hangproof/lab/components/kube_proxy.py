"""kube-proxy emulation: the rules each kube-proxy mode writes, and the 1.9 port holder.

kube-proxy itself is not packaged here, so the lab writes the same chains and
rule shapes kube-proxy writes, the way it writes them, and (in the 1.9-1.23
iptables mode only) runs a process named ``kube-proxy`` that holds the
NodePort open (``openLocalPort``) and never accepts. The modes
(``lab up --kube-proxy-mode``):

- ``iptables-holder``: 1.9-1.23 iptables mode (pkg/proxy/iptables/proxier.go),
  ``iptables-restore``, plus the port holder. The incident's system.
- ``iptables``: >= 1.24 iptables mode: no port holder (kubernetes PR 108496),
  KUBE-EXT-* chains, ``--or-mark``/``--xor-mark`` masquerading; the NodePort
  jump is still ``-m addrtype --dst-type LOCAL``.
- ``nftables-all``: nftables mode (pkg/proxy/nftables/proxier.go) with
  ``--nodeport-addresses`` unset/all: NodePorts on every local address via
  ``fib daddr type local``, loaded with ``nft -f``.
- ``nftables-primary``: nftables mode with ``--nodeport-addresses primary``
  (its default since 1.31): NodePorts only on the node's primary address, a
  static ``@nodeport-ips`` set, so a secondary address (the VIP) serves none.

IPVS mode is not emulated: this kernel is built without ``CONFIG_IP_VS``.

    >>> text = nat_rules("openstack/rabbitmq:amqp", 32672, [("198.19.1.2", 5672)])
    >>> "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS" in text
    True
"""

from __future__ import annotations

import base64
import hashlib
import sys
from collections.abc import Sequence

#: The modes ``lab up --kube-proxy-mode`` offers; the first is the default.
MODES = ("iptables-holder", "iptables", "nftables-all", "nftables-primary")
#: Older topology names, kept so existing topology files still load.
MODE_ALIASES = {"legacy": "iptables-holder", "modern": "iptables"}
#: What each mode stands for, for docs and ``--help``.
MODE_DESCRIPTIONS = {
    "iptables-holder": "iptables mode of kube-proxy 1.9-1.23, with the NodePort port holder",
    "iptables": "iptables mode of kube-proxy >= 1.24 (PR 108496: no port holder)",
    "nftables-all": "nftables mode, --nodeport-addresses all (fib daddr type local)",
    "nftables-primary": "nftables mode, --nodeport-addresses primary (the default since 1.31)",
}
#: The nftables table kube-proxy owns.
NFT_TABLE = "kube-proxy"


def canonical_mode(mode: str) -> str:
    """A mode name with the old aliases resolved.

    >>> canonical_mode("legacy"), canonical_mode("nftables-all")
    ('iptables-holder', 'nftables-all')
    """
    return MODE_ALIASES.get(mode, mode)


def has_port_holder(mode: str) -> bool:
    """Only 1.9-1.23 iptables mode holds NodePorts open."""
    return canonical_mode(mode) == "iptables-holder"


def uses_nftables(mode: str) -> bool:
    return canonical_mode(mode).startswith("nftables")


#: kube-proxy's masquerade mark (--iptables-masquerade-bit 14 -> 0x4000).
MASQ_MARK = "0x4000/0x4000"
#: Name the port holder shows in ss/lsof, as in the report ("hyperkube" there).
PORT_HOLDER_NAME = "kube-proxy"


def chain_hash(prefix: str, *parts: str) -> str:
    """kube-proxy's chain names: prefix + first 16 chars of base32(sha256(parts)).

    As in proxier.go ``servicePortChainName`` / ``servicePortEndpointChainName``.

    >>> chain_hash("KUBE-SVC-", "openstack/rabbitmq:amqp", "tcp")
    'KUBE-SVC-C7OFWSPJGLYUNNUI'
    """
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def nat_rules(service: str, node_port: int, endpoints: Sequence[tuple[str, int]]) -> str:
    """The nat table as kube-proxy 1.9 writes it for one NodePort service.

    The last KUBE-SERVICES rule jumps to KUBE-NODEPORTS only for destinations
    that are local *when the connection's first packet is seen*: the crux of the
    incident (nat is consulted once per conntrack entry).
    """
    comment = f'-m comment --comment "{service}"'
    svc = chain_hash("KUBE-SVC-", service, "tcp")
    seps = [chain_hash("KUBE-SEP-", service, "tcp", f"{ip}:{port}") for ip, port in endpoints]
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-MARK-DROP - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        f":{svc} - [0:0]",
        *(f":{sep} - [0:0]" for sep in seps),
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000",
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        f"-m mark --mark {MASQ_MARK} -j MASQUERADE",
        f"-A KUBE-NODEPORTS -p tcp {comment} -m tcp --dport {node_port} -j KUBE-MARK-MASQ",
        f"-A KUBE-NODEPORTS -p tcp {comment} -m tcp --dport {node_port} -j {svc}",
    ]
    # statistic random: endpoint i of n is taken with probability 1/(n-i),
    # formatted as kube-proxy 1.9's computeProbability does ("%0.5f").
    n = len(seps)
    for i, sep in enumerate(seps):
        if i < n - 1:
            lines.append(
                f"-A {svc} {comment} -m statistic --mode random "
                f"--probability {1.0 / (n - i):.5f} -j {sep}"
            )
        else:
            lines.append(f"-A {svc} {comment} -j {sep}")
    for (ip, port), sep in zip(endpoints, seps, strict=True):
        lines.append(f"-A {sep} -s {ip}/32 {comment} -j KUBE-MARK-MASQ")
        lines.append(f"-A {sep} -p tcp {comment} -m tcp -j DNAT --to-destination {ip}:{port}")
    lines.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
        'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nat_rules_124(service: str, node_port: int, endpoints: Sequence[tuple[str, int]]) -> str:
    """The nat table as kube-proxy >= 1.24 (iptables mode) writes it for one NodePort service.

    Differences from 1.9 that matter here: no port holder (not in these rules),
    the NodePort goes through a KUBE-EXT-* chain, masquerading uses
    ``--or-mark``/``--xor-mark``. The gate is unchanged: the last
    KUBE-SERVICES rule, ``-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS``.

    >>> "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS" in nat_rules_124("a/b:c", 32672, [])
    True
    """
    svc = chain_hash("KUBE-SVC-", service, "tcp")
    ext = chain_hash("KUBE-EXT-", service, "tcp")
    seps = [chain_hash("KUBE-SEP-", service, "tcp", f"{ip}:{port}") for ip, port in endpoints]
    comment = f'-m comment --comment "{service}"'
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        f":{ext} - [0:0]",
        f":{svc} - [0:0]",
        *(f":{sep} - [0:0]" for sep in seps),
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK.split('/')[0]}",
        f"-A KUBE-NODEPORTS {comment} -m tcp -p tcp --dport {node_port} -j {ext}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK.split('/')[0]}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f'-A {ext} -m comment --comment "masquerade traffic for {service} external destinations" '
        "-j KUBE-MARK-MASQ",
        f"-A {ext} -j {svc}",
    ]
    n = len(seps)
    for i, ((ip, port), sep) in enumerate(zip(endpoints, seps, strict=True)):
        target = f'-m comment --comment "{service} -> {ip}:{port}"'
        if i < n - 1:
            lines.append(
                f"-A {svc} {target} -m statistic --mode random "
                f"--probability {1.0 / (n - i):.10f} -j {sep}"
            )
        else:
            lines.append(f"-A {svc} {target} -j {sep}")
    for (ip, port), sep in zip(endpoints, seps, strict=True):
        lines.append(f"-A {sep} {comment} -s {ip}/32 -j KUBE-MARK-MASQ")
        lines.append(f"-A {sep} {comment} -m tcp -p tcp -j DNAT --to-destination {ip}:{port}")
    lines.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
        'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _nft_hash(*parts: str) -> str:
    """The 8-character base32 prefix nftables-mode chain names carry."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:8]


def nft_rules(
    service: str,
    node_port: int,
    endpoints: Sequence[tuple[str, int]],
    *,
    nodeport_addresses: Sequence[str] | None = None,
) -> str:
    """``nft -f`` input as kube-proxy's nftables mode writes it for one NodePort service.

    ``nodeport_addresses=None`` is ``--nodeport-addresses`` all: NodePorts on
    every address that is local *when the first packet is seen* (``fib daddr
    type local``), the same gate as iptables' addrtype LOCAL. A list (``primary``
    resolves to the node's primary address) fills the static ``nodeport-ips``
    set instead: an address outside it serves no NodePort.

    >>> "fib daddr type local" in nft_rules("a/b:c", 32672, [("198.19.1.2", 5672)])
    True
    >>> "@nodeport-ips" in nft_rules("a/b:c", 32672, [], nodeport_addresses=["198.18.0.1"])
    True
    """
    ns_name, _, port_name = service.partition(":")
    readable = f"{ns_name}/tcp/{port_name}"
    svc = f"service-{_nft_hash(readable)}-{readable}"
    ext = f"external-{_nft_hash(readable)}-{readable}"
    eps = [
        (f"endpoint-{_nft_hash(readable, ip, str(port))}-{readable}__{ip}/{port}", ip, port)
        for ip, port in endpoints
    ]
    t = f"ip {NFT_TABLE}"
    lines = [
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f"flush table {t}",
        f'add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}',
        f"add set {t} nodeport-ips {{ type ipv4_addr ; "
        'comment "IPs that accept NodePort traffic" ; }',
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
        f"add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : "
        'verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }',
        f"add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "NodePort traffic" ; }',
        f"add chain {t} filter-input {{ type filter hook input priority 0 ; }}",
        f"add chain {t} filter-output {{ type filter hook output priority 0 ; }}",
        f"add chain {t} mark-for-masquerade",
        f"add chain {t} masquerading",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add chain {t} nodeport-endpoints-check",
        f"add chain {t} service-endpoints-check",
        f"add chain {t} services",
        f"add rule {t} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {t} filter-input ct state new jump service-endpoints-check",
        f"add rule {t} filter-output ct state new jump service-endpoints-check",
        f"add rule {t} mark-for-masquerade mark set mark or 0x4000",
        f"add rule {t} masquerading mark and 0x4000 == 0 return",
        f"add rule {t} masquerading mark set mark xor 0x4000",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport "
        "vmap @no-endpoint-services",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
    ]
    if nodeport_addresses is None:
        match = "fib daddr type local ip daddr != 127.0.0.0/8"
        lines += [
            f"add rule {t} nodeport-endpoints-check {match} meta l4proto . th dport "
            "vmap @no-endpoint-nodeports",
            f"add rule {t} services {match} meta l4proto . th dport vmap @service-nodeports "
            'comment "NodePort traffic"',
        ]
    else:
        lines += [
            f"add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . "
            "th dport vmap @no-endpoint-nodeports",
            f"add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport "
            "vmap @service-nodeports",
        ]
        if nodeport_addresses:
            lines.append(f"add element {t} nodeport-ips {{ {', '.join(nodeport_addresses)} }}")
    # Chains before the rules that jump to them, as kube-proxy's transaction does.
    lines += [f"add chain {t} {name}" for name in (ext, svc, *(e[0] for e in eps))]
    lines += [
        f"add rule {t} {ext} jump mark-for-masquerade",
        f"add rule {t} {ext} goto {svc}",
    ]
    if eps:
        vmap = ", ".join(f"{i} : goto {name}" for i, (name, _, _) in enumerate(eps))
        lines.append(f"add rule {t} {svc} numgen random mod {len(eps)} vmap {{ {vmap} }}")
    for name, ip, port in eps:
        lines += [
            f"add rule {t} {name} ip saddr {ip} jump mark-for-masquerade",
            f"add rule {t} {name} meta l4proto tcp dnat to {ip}:{port}",
        ]
    lines.append(f"add element {t} service-nodeports {{ tcp . {node_port} : goto {ext} }}")
    return "\n".join(lines) + "\n"


#: The port holder: listens on *:node_port, never accepts, like kube-proxy's
#: openLocalPort. Its kernel completes handshakes into the accept queue.
PORT_HOLDER_CODE = r"""
import ctypes, signal, socket, sys, time
ctypes.CDLL(None).prctl(15, b"%(name)s", 0, 0, 0)  # PR_SET_NAME: show as kube-proxy
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", %(port)d))
s.listen(4096)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("listening", flush=True)
while True:
    time.sleep(3600)
"""


def port_holder_argv(node_port: int) -> list[str]:
    """argv of a process named ``kube-proxy`` holding ``node_port`` open."""
    return [sys.executable, "-c", PORT_HOLDER_CODE % {"name": PORT_HOLDER_NAME, "port": node_port}]
