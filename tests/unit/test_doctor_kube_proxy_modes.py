"""doctor's NodePort/VIP hazard rule on each kube-proxy mode's recorded rules (no root).

The files under tests/data/doctor/kube_proxy_modes/ were recorded from lab node
n1 after `hangproof lab up --kube-proxy-mode MODE` (`iptables-save` and
`nft -j list ruleset`, scripts/kube_proxy_modes.py measure). Exposed, as the
lab's races measure (docs/kube-proxy-modes.md): only iptables-holder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hangproof.doctor.model import FloatingAddress, HostView, ProcessRef, TcpSocket
from hangproof.doctor.netfilter import merge_gates, parse_iptables_save, parse_nft_ruleset
from hangproof.doctor.rules import NODEPORT_VIP_RACE_HAZARD, diagnose
from hangproof.failure import Severity
from hangproof.lab.components.kube_proxy import MODES, has_port_holder
from hangproof.lab.scenarios.kube_proxy_docs import render_markdown

DATA = Path(__file__).parent.parent / "data" / "doctor" / "kube_proxy_modes"
VIP, NODE_PORT = "198.18.0.100", 32672


def recorded_view(mode: str) -> HostView:
    """n1 as recorded in ``mode``, holding the VIP; the holder's listener if the mode has one."""
    ipt = parse_iptables_save((DATA / f"{mode}.iptables-save.txt").read_text())
    nft = parse_nft_ruleset((DATA / f"{mode}.nft.json").read_text())
    sockets, owners = [], {}
    if has_port_holder(mode):
        sockets = [TcpSocket("LISTEN", "*", NODE_PORT, "0.0.0.0", 0, inode=55)]
        owners = {55: [ProcessRef(640, "kube-proxy", 3)]}
    view = HostView(sockets=sockets, owners=owners)
    view.node_port_gate = merge_gates(ipt, nft)
    view.floating = [FloatingAddress(VIP, "ip addr: /32 beside 198.18.0.1/24 on eth0", True)]
    return view


def hazards(view: HostView) -> list:
    return [f for f in diagnose(view) if f.kind == NODEPORT_VIP_RACE_HAZARD]


@pytest.mark.parametrize("mode", MODES)
def test_only_the_port_holder_mode_is_flagged(mode: str) -> None:
    found = hazards(recorded_view(mode))
    flagged = [f for f in found if f.is_problem]
    assert bool(flagged) == (mode == "iptables-holder")
    if flagged:
        assert flagged[0].severity == Severity.WARNING
        assert flagged[0].evidence["port_holders"][0]["owner"] == "kube-proxy"


@pytest.mark.parametrize("mode", ["iptables-holder", "iptables", "nftables-all"])
def test_locality_gated_modes_are_seen_with_their_nodeport(mode: str) -> None:
    (hazard,) = hazards(recorded_view(mode))
    assert [p["port"] for p in hazard.evidence["node_ports"]] == [NODE_PORT]
    assert hazard.evidence["reached_from_output"] is True
    if mode != "iptables-holder":
        assert hazard.severity == Severity.INFO
        assert hazard.evidence["mitigations"]["port_holders_absent"] is True


def test_iptables_modes_have_no_nftables_kube_proxy() -> None:
    for mode in ("iptables-holder", "iptables"):
        assert parse_nft_ruleset((DATA / f"{mode}.nft.json").read_text()) is None
        gate = parse_iptables_save((DATA / f"{mode}.iptables-save.txt").read_text())
        assert gate.local_gate is not None and "--dst-type LOCAL" in gate.local_gate


def test_nftables_all_gate_is_fib_local_read_from_nft_json() -> None:
    gate = parse_nft_ruleset((DATA / "nftables-all.nft.json").read_text())
    assert gate is not None and gate.source == "nftables"
    assert gate.local_gate is not None and "fib daddr type local" in gate.local_gate
    assert gate.reached_from_output and gate.static_addresses is None
    assert [r.port for r in gate.node_ports] == [NODE_PORT]
    # iptables-save there shows no kube-proxy NodePort rules at all.
    assert (
        parse_iptables_save((DATA / "nftables-all.iptables-save.txt").read_text()).local_gate
        is None
    )


def test_nftables_primary_serves_nodeports_only_on_the_primary_address() -> None:
    gate = parse_nft_ruleset((DATA / "nftables-primary.nft.json").read_text())
    assert gate is not None and gate.local_gate is None
    assert gate.static_addresses == ("198.18.0.1",)
    assert [r.port for r in gate.node_ports] == [NODE_PORT]
    assert hazards(recorded_view("nftables-primary")) == []


def test_a_port_holder_in_nftables_all_mode_would_be_flagged() -> None:
    # The rule keys on what the node does, not on a mode name: the same fib gate
    # with a listener on the NodePort is the incident again.
    view = recorded_view("nftables-all")
    view.sockets = [TcpSocket("LISTEN", "*", NODE_PORT, "0.0.0.0", 0, inode=55)]
    view.owners = {55: [ProcessRef(640, "kube-proxy", 3)]}
    (hazard,) = hazards(view)
    assert hazard.is_problem


def test_reject_undnat_in_iptables_protects_an_nftables_mode_node() -> None:
    view = recorded_view("nftables-all")
    view.sockets = [TcpSocket("LISTEN", "*", NODE_PORT, "0.0.0.0", 0, inode=55)]
    ipt = parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 32672 -m conntrack "
        "! --ctstate DNAT -j REJECT --reject-with tcp-reset\nCOMMIT\n"
    )
    nft = parse_nft_ruleset((DATA / "nftables-all.nft.json").read_text())
    view.node_port_gate = merge_gates(ipt, nft)
    (hazard,) = hazards(view)
    assert not hazard.is_problem and hazard.evidence["mitigations"]["reject_undnat_ports"] == [
        NODE_PORT
    ]


def test_nft_reject_undnat_is_read_from_an_input_hook_chain() -> None:
    data = json.loads((DATA / "nftables-all.nft.json").read_text())
    data["nftables"] += [
        {"chain": {"family": "inet", "table": "fw", "name": "input", "type": "filter",
                   "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "fw", "chain": "input", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": NODE_PORT}},
            {"match": {"op": "!=", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"reject": {"type": "tcp reset"}}]}},
    ]  # fmt: skip
    gate = parse_nft_ruleset(data)
    assert gate is not None and gate.reject_undnat_ports == frozenset({NODE_PORT})


def test_docs_table_renders_every_mode_and_says_which_hang() -> None:
    race = {"races": [{"outcome": "hang", "evidence": {"fresh_connect": "answered"}}] * 2}
    md = render_markdown(
        {
            "races": {"iptables-holder": {"none": race}},
            "races_per_cell": 2,
            "versions": {"commit": "abc"},
        }
    )
    assert "| `iptables-holder` | hang 2/2 | not measured | not measured | answered 2/2 |" in md
    assert all(f"`{m}`" in md for m in MODES)
    assert "Races ended in a hang only in: `iptables-holder`" in md


def test_published_table_is_what_the_raw_json_renders() -> None:
    root = Path(__file__).parent.parent.parent
    raw = json.loads((root / "docs" / "data" / "kube-proxy-modes.json").read_text())
    assert (root / "docs" / "kube-proxy-modes.md").read_text() == render_markdown(raw)
    # Every mode x mitigation cell was measured with the stated number of races.
    for mode in MODES:
        for mitigation in ("none", "reject-undnat", "conntrack-flush"):
            assert len(raw["races"][mode][mitigation]["races"]) == raw["races_per_cell"] >= 10
