"""Topology validation: the seed is valid, and a bad file names the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from hangproof.lab.engine.topology import Topology, TopologyError


def test_seed_is_the_reports_system() -> None:
    topo = Topology.seed()
    assert [n.address for n in topo.nodes] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    assert [n.pod_cidr for n in topo.nodes] == ["198.19.1.0/24", "198.19.2.0/24", "198.19.3.0/24"]
    assert (topo.vip, topo.node_port, topo.target_port) == ("198.18.0.100", 32672, 5672)
    assert topo.ns("n1") == "hplab-n1" and topo.pod_ns("n1") == "hplab-n1p"
    assert topo.broker_endpoints() == [("198.19.1.2", 5672)]


def test_round_trip_through_dict() -> None:
    topo = Topology.seed()
    assert Topology.from_dict(topo.to_dict()) == topo


def test_yaml_overrides(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("name: hpmylab\nvip: 198.18.0.200\nbrokers: [n1, n2, n3]\nkube_proxy: modern\n")
    topo = Topology.load(f)
    assert topo.name == "hpmylab" and topo.vip == "198.18.0.200"
    assert topo.brokers == ("n1", "n2", "n3") and topo.kube_proxy == "modern"
    assert len(topo.nodes) == 3


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("vip: 10.0.0.1\n", "vip"),
        ("vip: not-an-ip\n", "vip"),
        ("node_port: 80\n", "node_port"),
        ("target_port: 70000\n", "target_port"),
        ("name: Bad_Name\n", "name"),
        ("name: waytoolongname\n", "name"),
        ("brokers: [n9]\n", "brokers"),
        ("kube_proxy: ipvs\n", "kube_proxy"),
        (
            "nodes:\n  - {name: n1, address: 192.168.1.1, pod_cidr: 198.19.1.0/24}\n",
            "nodes[0].address",
        ),
        (
            "nodes:\n  - {name: n1, address: 198.18.0.1, pod_cidr: 198.19.1.0/16}\n",
            "nodes[0].pod_cidr",
        ),
        ("nodes:\n  - {name: n1, address: 198.18.0.1}\n", "nodes[0].pod_cidr"),
        (
            "nodes:\n  - {name: n1, address: 198.18.0.1, pod_cidr: 198.19.1.0/24}\n"
            "  - {name: n2, address: 198.18.0.1, pod_cidr: 198.19.2.0/24}\n",
            "nodes[1]",
        ),
        ("vipp: 198.18.0.100\n", "'vipp'"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_invalid_file_names_the_field(tmp_path: Path, yaml_text: str, field: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(TopologyError) as info:
        Topology.load(f)
    message = str(info.value)
    assert field in message
    assert str(f) in message
    assert "\n" not in message


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("nodes: [\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        Topology.load(f)
    with pytest.raises(TopologyError, match="cannot read"):
        Topology.load(tmp_path / "absent.yaml")
