"""Turn a :class:`Topology` into namespaces, veths, a bridge and routes, and back.

Nothing here touches the root namespace's network configuration: the bridge
lives in its own ``<lab>-sw`` namespace and every veth is created with both
ends already inside lab namespaces (``ip -n A link add ... peer ... netns B``).

Ownership: a namespace is the lab's only if the state file lists it *and* its
loopback carries the lab's mark, an interface alias ``hangproof-lab <lab>
<token>`` with the lab's random token, set right after ``ip netns add``.
A namespace that merely has the lab's name (a container runtime's, another
tool's, one re-created under the same name) has no such alias and is never
deleted, nor are its processes signalled. Names are written to the state file
*before* the namespace is created, so a crash can never leave one unlisted.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable

from hangproof.errors import HangproofError
from hangproof.lab.engine import processes
from hangproof.lab.engine.state import LabState
from hangproof.lab.engine.topology import LinkTopology, Topology

#: Node uplink name inside each node namespace (the report's was br-roller).
UPLINK = "eth0"
POD_LINK = "pod0"

Progress = Callable[[str], None]


def ip_batch(netns: str | None, commands: list[str]) -> None:
    """Run ``ip -batch`` (inside ``netns``); raise with ip's own message on failure."""
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    result = subprocess.run(
        argv, input="\n".join(commands) + "\n", capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError(f"ip -n {netns} -batch failed: {result.stderr.strip()}")


def existing_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def owner_mark(state: LabState) -> str:
    """The alias the lab puts on each of its namespaces' loopback."""
    return f"hangproof-lab {state.name} {state.owner_token}"


def namespace_mark(name: str) -> str | None:
    """The alias of ``lo`` in namespace ``name`` (None if unset or no such namespace)."""
    result = subprocess.run(
        ["ip", "-n", name, "-j", "link", "show", "dev", "lo"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if result.returncode != 0:
        return None
    try:
        return json.loads(result.stdout)[0].get("ifalias") or None
    except (ValueError, IndexError, AttributeError):
        return None


def add_owned_namespace(state: LabState, name: str) -> None:
    """Create namespace ``name`` for ``state``'s lab: listed first, then made, then marked.

    Refuses (one line) a namespace that already exists: it is not ours to adopt.
    """
    if name in existing_namespaces():
        raise HangproofError(
            f"namespace {name} already exists and is not one this lab made; "
            f"remove it (`ip netns delete {name}`) or pick another lab --name"
        )
    if name not in state.namespaces:
        state.namespaces.append(name)
        state.save()
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    subprocess.run(
        ["ip", "-n", name, "link", "set", "dev", "lo", "alias", owner_mark(state)],
        check=True,
        timeout=10,
    )


def owned(state: LabState, name: str) -> bool:
    """True if namespace ``name`` is listed by ``state`` and carries its mark."""
    return name in state.namespaces and namespace_mark(name) == owner_mark(state)


def build(topo: Topology, state: LabState, progress: Progress) -> None:
    """Create the namespaces and links; record each in ``state`` before it is made."""

    def add_ns(name: str) -> None:
        add_owned_namespace(state, name)

    sw = topo.switch_ns
    bridge = f"{topo.name}-br"
    add_ns(sw)
    ip_batch(sw, ["link set lo up", f"link add {bridge} type bridge", f"link set {bridge} up"])
    for node in topo.nodes:
        ns, pod_ns = topo.ns(node.name), topo.pod_ns(node.name)
        progress(
            f"node {node.name}: namespace {ns}, {node.address} on {bridge}, pod {node.pod_address}"
        )
        add_ns(ns)
        add_ns(pod_ns)
        port = f"{topo.name}-{node.name}"
        ip_batch(
            sw,
            [
                f"link add {port} type veth peer name {UPLINK} netns {ns}",
                f"link set {port} master {bridge} up",
            ],
        )
        ip_batch(
            ns,
            [
                "link set lo up",
                f"addr add {node.address}/24 dev {UPLINK}",
                f"link set {UPLINK} up",
                f"link add {POD_LINK} type veth peer name eth0 netns {pod_ns}",
                f"addr add {node.pod_gateway}/24 dev {POD_LINK}",
                f"link set {POD_LINK} up",
            ],
        )
        ip_batch(
            pod_ns,
            [
                "link set lo up",
                f"addr add {node.pod_address}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {node.pod_gateway}",
            ],
        )
        # A node routes for its pod. No ICMP redirects: the old VIP holder
        # forwarding a stray SYN must not teach the client a new route.
        processes.run(
            [
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                f"net.ipv4.conf.{UPLINK}.send_redirects=0",
            ],
            netns=ns,
            timeout=10,
        )
    # host-gw style: every node routes each other node's pod CIDR via that node.
    for node in topo.nodes:
        routes = [
            f"route add {other.pod_cidr} via {other.address}"
            for other in topo.nodes
            if other.name != node.name
        ]
        if routes:
            ip_batch(topo.ns(node.name), routes)


def link_commands(topo: LinkTopology) -> list[tuple[str | None, list[str]]]:
    """The ``ip``/``sysctl`` commands that wire ``topo``'s namespaces, in order: (netns, argv).

    Run after the namespaces exist with their loopback up. Each veth is made
    with both ends already in lab namespaces (run from the root namespace,
    which it does not change).

        >>> from hangproof.lab.engine.topology import Link
        >>> t = LinkTopology(("b", "c"), (Link("b", "b0", "198.18.200.1", "c", "c0", "198.18.200.2"),))
        >>> for netns, argv in link_commands(t): print(netns, " ".join(argv))
        None ip link add b0 netns b type veth peer name c0 netns c
        b ip addr add 198.18.200.1/30 dev b0
        b ip link set b0 up
        c ip addr add 198.18.200.2/30 dev c0
        c ip link set c0 up
    """
    out: list[tuple[str | None, list[str]]] = []
    for link in topo.links:
        out.append(
            (None, ["ip", "link", "add", link.a_iface, "netns", link.a_ns,
                    "type", "veth", "peer", "name", link.b_iface, "netns", link.b_ns])
        )  # fmt: skip
        for ns, iface, addr in (
            (link.a_ns, link.a_iface, link.a_ip),
            (link.b_ns, link.b_iface, link.b_ip),
        ):
            out.append((ns, ["ip", "addr", "add", f"{addr}/{link.prefixlen}", "dev", iface]))
            out.append((ns, ["ip", "link", "set", iface, "up"]))
    for route in topo.routes:
        out.append((route.ns, ["ip", "route", "add", f"{route.dest}/32", "via", route.via]))
    for ns in topo.forwarding:
        # net.* sysctls are per network namespace: this forwards in ``ns`` only.
        out.append((ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
    return out


def build_links(topo: LinkTopology, state: LabState) -> None:
    """Create ``topo``'s namespaces for ``state``'s lab (listed, made, marked), then wire them."""
    for ns in topo.validated().namespaces:
        add_owned_namespace(state, ns)
        processes.run(["ip", "link", "set", "lo", "up"], netns=ns, timeout=15)
    for netns, argv in link_commands(topo):
        processes.run(argv, netns=netns, timeout=15)


def destroy_namespaces(state: LabState, progress: Progress) -> list[str]:
    """Delete ``state``'s namespaces that exist and carry its mark (reverse order).

    Returns those deleted. A listed namespace without the lab's mark is left
    alone, with one line saying so.
    """
    present = set(existing_namespaces())
    deleted = []
    for name in reversed(state.namespaces):
        if name not in present:
            continue
        if not owned(state, name):
            progress(
                f"namespace {name} left alone: it does not carry lab {state.name}'s mark "
                "(not made by this lab)"
            )
            continue
        if name in present:
            # Processes can keep a namespace alive; stop those still inside
            # (they can only be ours: the namespace is provably the lab's).
            for pid in namespace_pids(name):
                processes.stop_pid(pid, grace=3.0)
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(["ip", "netns", "delete", name], check=True, timeout=10)
                deleted.append(name)
                progress(f"deleted namespace {name}")
    return deleted


def namespace_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def leftovers(lab_name: str) -> list[str]:
    """Namespaces named with this lab's prefix (reported by ``lab status``, never deleted)."""
    return [n for n in existing_namespaces() if n.startswith(f"{lab_name}-")]
