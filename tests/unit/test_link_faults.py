"""The link faults' pure parts: which rules, which counters, which bed; and the promise judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from hangproof.errors import HangproofError
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.faults import FaultTarget, fault_bed, flow_state, one_way_loss
from hangproof.lab.faults.flow_state import FlowStateLoss
from hangproof.lab.faults.one_way_loss import OneWayLoss
from hangproof.lab.scenarios.fault_matrix import judge_promise

IPTABLES_L = """Chain OUTPUT (policy ACCEPT 0 packets, 0 bytes)
    pkts      bytes target     prot opt in     out     source               destination
      54     8123 DROP       tcp  --  *      hpf-b0  0.0.0.0/0            0.0.0.0/0            tcp spt:5672 /* hpfault-one-way-loss */
       3      180 ACCEPT     tcp  --  *      *       0.0.0.0/0            0.0.0.0/0
"""


def _target(tmp_path: Path, router: str | None = None) -> FaultTarget:
    node = RabbitNode("fault", tmp_path / "rabbit", host="198.18.200.1", netns="hpfault-b")
    return FaultTarget(node, "hpfault-b", "hpf-b0", router_netns=router, client_ip="198.18.200.6")


def test_one_way_loss_drops_exactly_one_direction(tmp_path: Path) -> None:
    inbound = OneWayLoss(_target(tmp_path), "in")._rules()
    outbound = OneWayLoss(_target(tmp_path), "out")._rules()
    assert [r[:5] for r in inbound] == [["OUTPUT", "-o", "hpf-b0", "-p", "tcp"]]
    assert "--sport" in inbound[0] and "--dport" not in inbound[0]
    assert [r[:5] for r in outbound] == [["INPUT", "-i", "hpf-b0", "-p", "tcp"]]
    assert "--dport" in outbound[0] and "--sport" not in outbound[0]
    with pytest.raises(ValueError):
        OneWayLoss(_target(tmp_path), "both")


def test_the_drop_counter_is_read_from_our_rule_only() -> None:
    found = one_way_loss._PKTS.search(IPTABLES_L)
    assert found is not None and found.group(1) == "54"
    forward = IPTABLES_L.replace("hpfault-one-way-loss", "hpfault-flow-state")
    found = flow_state._PKTS.search(forward)
    assert found is not None and found.group(1) == "54"
    assert flow_state._PKTS.search(IPTABLES_L) is None


def test_flow_state_faults_need_the_router_bed(tmp_path: Path) -> None:
    assert fault_bed("flow-state-expiry") == fault_bed("flow-state-rst") == "testbed-router"
    assert fault_bed("one-way-loss-in") == fault_bed("one-way-loss-out") == "testbed"
    with pytest.raises(HangproofError):
        FlowStateLoss(_target(tmp_path), "expiry")
    drop = FlowStateLoss(_target(tmp_path, "hpfault-r"), "expiry")._rules()[0]
    rst = FlowStateLoss(_target(tmp_path, "hpfault-r"), "rst")._rules()[0]
    assert drop[0] == "FORWARD" and "INVALID" in drop and drop[-2:] == ["-j", "DROP"]
    assert rst[-4:] == ["-j", "REJECT", "--reject-with", "tcp-reset"]


def test_the_promise_judge_names_each_miss() -> None:
    # A link-fault cell (one-way-loss-in, stall_timeout 10 s: publish_timeout 5 s), judged by
    # the matrix's one judge.
    kept = {"fault": "one-way-loss-in", "detect_s": 6.0, "resume_s": 14.9, "hold_s": 20.0,
            "heal_s": 20.3, "lost": 0, "worker_alive": True, "consumers_after_heal": 1,
            "publish_during_fault": "error 5.6s OperationalError", "publish_verdict": "error"}  # fmt: skip

    def misses(cell: dict[str, object]) -> list[str]:
        return judge_promise(cell, 10.0, 5.0)["failures"]

    assert misses(kept) == []
    assert misses({**kept, "detect_s": None}) == ["never detected (promise <= 10 s)"]
    assert misses({**kept, "resume_s": 15.1}) == ["resume 15.1 s after heal > 15 s"]
    assert misses({**kept, "false_ok": True, "publish_during_fault": "ok 0.1s"}) == [
        "false ok: ok 0.1s"
    ]
    # An ok that held its caller 20.6 s is a miss even though the message ran.
    late_ok = {
        **kept,
        "publish_during_fault": "ok 20.6s (executed)",
        "publish_verdict": "ok+queued",
    }
    assert misses(late_ok) == ["publish took 20.6 s (promise <= publish_timeout 5 s + 1 s)"]
    assert misses({**kept, "resume_s": "EXIT", "worker_alive": False}) == [
        "resume EXIT (promise <= 15 s after heal)",
        "the worker exited",
    ]


def test_the_link_faults_share_one_injection_in_the_matrix(tmp_path: Path) -> None:
    from hangproof.lab.faults import make_fault
    from hangproof.lab.scenarios.fault_matrix import _fault_parallel

    # parallel is read from the registered class (one_way_loss_in/_out), inherited from OneWayLoss.
    for name in ("one-way-loss-in", "one-way-loss-out"):
        assert _fault_parallel(name, make_fault(name, _target(tmp_path))) is True, name
    # client-freeze acts on one consumer's pid: one cell at a time.
    assert _fault_parallel("client-freeze", make_fault("client-freeze", _target(tmp_path))) is False
