"""kube-proxy emulation: the iptables-mode rules of kube-proxy 1.9, and its port holder.

kube-proxy itself is not packaged here, so the lab writes the same chains and
rule shapes kube-proxy 1.9 writes (pkg/proxy/iptables/proxier.go), with
``iptables-restore`` as kube-proxy does, and runs a process named
``kube-proxy`` that holds the NodePort open (``openLocalPort``) and never
accepts. ``modern`` mode has no port holder (kubernetes PR 108496).

    >>> text = nat_rules("openstack/rabbitmq:amqp", 32672, [("198.19.1.2", 5672)])
    >>> "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS" in text
    True
"""

from __future__ import annotations

import base64
import hashlib
import sys
from collections.abc import Sequence

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
