"""The faults' testbed declared as a LinkTopology and built by the engine (issue 11, item 5).

FaultBed.up used to run its ``ip`` commands by hand. The expected sequences
below are those commands, in the order the removed code ran them (main
b122716, testbed.FaultBed.up and _link_router): the engine must build the
declared bed with exactly them. Recorded with add_owned_namespace and
processes.run replaced, so no root or namespace is needed.
"""

from __future__ import annotations

from typing import Any

import pytest

from hangproof.lab.beds.testbed import FaultBed, bed_topology
from hangproof.lab.engine import network
from hangproof.lab.engine.topology import Link, LinkTopology, Route, TopologyError

TWO_NAMESPACES = [
    ("own", "hpfault-b"),
    ("hpfault-b", "ip link set lo up"),
    ("own", "hpfault-c"),
    ("hpfault-c", "ip link set lo up"),
    (None, "ip link add hpf-b0 netns hpfault-b type veth peer name hpf-c0 netns hpfault-c"),
    ("hpfault-b", "ip addr add 198.18.200.1/30 dev hpf-b0"),
    ("hpfault-b", "ip link set hpf-b0 up"),
    ("hpfault-c", "ip addr add 198.18.200.2/30 dev hpf-c0"),
    ("hpfault-c", "ip link set hpf-c0 up"),
]

WITH_ROUTER = [
    ("own", "hpfault-b"),
    ("hpfault-b", "ip link set lo up"),
    ("own", "hpfault-c"),
    ("hpfault-c", "ip link set lo up"),
    ("own", "hpfault-r"),
    ("hpfault-r", "ip link set lo up"),
    (None, "ip link add hpf-b0 netns hpfault-b type veth peer name hpf-rb netns hpfault-r"),
    ("hpfault-b", "ip addr add 198.18.200.1/30 dev hpf-b0"),
    ("hpfault-b", "ip link set hpf-b0 up"),
    ("hpfault-r", "ip addr add 198.18.200.2/30 dev hpf-rb"),
    ("hpfault-r", "ip link set hpf-rb up"),
    (None, "ip link add hpf-c0 netns hpfault-c type veth peer name hpf-rc netns hpfault-r"),
    ("hpfault-c", "ip addr add 198.18.200.6/30 dev hpf-c0"),
    ("hpfault-c", "ip link set hpf-c0 up"),
    ("hpfault-r", "ip addr add 198.18.200.5/30 dev hpf-rc"),
    ("hpfault-r", "ip link set hpf-rc up"),
    ("hpfault-b", "ip route add 198.18.200.6/32 via 198.18.200.2"),
    ("hpfault-c", "ip route add 198.18.200.1/32 via 198.18.200.5"),
    ("hpfault-r", "sysctl -q -w net.ipv4.ip_forward=1"),
]


def _built(monkeypatch: pytest.MonkeyPatch, topo: LinkTopology) -> list[tuple[Any, str]]:
    done: list[tuple[Any, str]] = []
    monkeypatch.setattr(network, "add_owned_namespace", lambda state, ns: done.append(("own", ns)))

    def run(argv: list[str], *, netns: str | None = None, timeout: float = 30, **_: Any) -> None:
        assert timeout == 15  # the bed's bound on each command
        done.append((netns, " ".join(argv)))

    monkeypatch.setattr(network.processes, "run", run)
    network.build_links(topo, state=None)  # type: ignore[arg-type]
    return done


@pytest.mark.parametrize(("router", "expected"), [(False, TWO_NAMESPACES), (True, WITH_ROUTER)])
def test_the_engine_builds_the_declared_bed_with_the_commands_the_bed_ran(
    monkeypatch: pytest.MonkeyPatch, router: bool, expected: list[tuple[Any, str]]
) -> None:
    assert _built(monkeypatch, bed_topology(router=router)) == expected


def test_the_bed_declares_its_namespaces_by_prefix(tmp_path: Any) -> None:
    bed = FaultBed(tmp_path, prefix="hpfault-l", router=True)
    assert bed.topology.namespaces == (bed.broker_netns, bed.client_netns, bed.router_netns)
    assert bed.topology == bed_topology("hpfault-l", router=True)
    assert FaultBed(tmp_path).topology.namespaces == ("hpfault-b", "hpfault-c")


def test_a_link_topology_outside_the_lab_range_or_namespaces_is_refused() -> None:
    ok = Link("a", "a0", "198.18.200.1", "b", "b0", "198.18.200.2")
    with pytest.raises(TopologyError, match=r"links\[0\].b_ns: 'b' is not one of"):
        LinkTopology(("a",), (ok,)).validated()
    outside = Link("a", "a0", "10.0.0.1", "b", "b0", "198.18.200.2")
    with pytest.raises(TopologyError, match=r"links\[0\].a_ip: 10.0.0.1 is outside 198.18.0.0/15"):
        LinkTopology(("a", "b"), (outside,)).validated()
    long_name = Link("a", "a-very-long-iface", "198.18.200.1", "b", "b0", "198.18.200.2")
    with pytest.raises(TopologyError, match="1-15 bytes"):
        LinkTopology(("a", "b"), (long_name,)).validated()
    with pytest.raises(TopologyError, match=r"routes\[0\].ns"):
        LinkTopology(
            ("a", "b"), (ok,), routes=(Route("c", "198.18.200.6", "198.18.200.2"),)
        ).validated()
