"""The seed's race, for real: namespaces, kube-proxy rules, a real RabbitMQ."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hangproof.lab.engine import network, processes
from hangproof.lab.engine.lab import Lab
from hangproof.lab.engine.state import LabState
from hangproof.lab.engine.topology import Topology
from hangproof.lab.scenarios.race import run_race

pytestmark = pytest.mark.lab


def test_up_builds_the_system_and_is_idempotent(seed_lab: Lab) -> None:
    status = seed_lab.status()
    assert status["up"] is True
    assert all(status["namespaces"].values()) and len(status["namespaces"]) == 7
    assert [b["answers_amqp"] for b in status["brokers"]] == [True]
    assert seed_lab.listener_owner("n1") == "kube-proxy"
    pids = sorted(p.pid for p in seed_lab.state.processes)
    seed_lab.up()  # again: nothing new is started
    assert sorted(p.pid for p in seed_lab.state.processes) == pids


def test_raw_client_hangs_with_the_reports_evidence(seed_lab: Lab) -> None:
    r = run_race(seed_lab, client="raw", window=5.0)
    assert r["outcome"] == "hang"
    assert r["connect_seconds"] is not None and r["connect_seconds"] < 5.0
    ev = r["evidence"]
    assert ev["client_socket"]["state"] == "ESTAB"
    assert ev["client_socket"]["remote"] == "198.18.0.100:32672"
    assert ev["client_socket"]["bytes_received"] == 0
    assert ev["peer_socket"]["unread_bytes"] == 8
    assert ev["peer_socket"]["owner"] is None
    assert ev["listener_owner"] == "kube-proxy"
    assert ev["conntrack"]["dnat"] is False
    assert ev["conntrack"]["reply_src"] == "198.18.0.100"
    hooks = {(h["hook"], h["interface"]) for h in ev["hooks"]}
    assert {("OUTPUT", "eth0"), ("OUTPUT", "lo"), ("INPUT", "lo")} <= hooks
    # The race leaves the lab as it found it: the VIP is nowhere.
    assert seed_lab.vip_holders() == []


@pytest.mark.parametrize(
    ("mitigation", "expected"),
    [("conntrack-flush", "connected"), ("reject-undnat", "reset"), ("no-port-holder", "reset")],
)
def test_each_mitigation_ends_the_hang(seed_lab: Lab, mitigation: str, expected: str) -> None:
    r = run_race(seed_lab, client="raw", mitigation=mitigation, window=5.0)
    assert r["outcome"] == expected, r
    if mitigation == "conntrack-flush":
        assert r["evidence"]["conntrack"]["dnat"] is True
    # The mitigation is removed afterwards: the port holder is back.
    assert seed_lab.listener_owner("n1") == "kube-proxy"


def test_keep_leaves_the_wedged_client_for_doctor(seed_lab: Lab) -> None:
    r = run_race(seed_lab, client="raw", window=3.0, keep=True)
    try:
        assert r["outcome"] == "hang"
        assert processes.pid_alive(r["client_pid"])
        assert [p.pid for p in seed_lab.state.find("race-client")] == [r["client_pid"]]
    finally:
        processes.stop_pid(r["client_pid"], grace=1.0)
        seed_lab.state.untrack(r["client_pid"])


def test_down_removes_everything_and_is_idempotent() -> None:
    lab = Lab(Topology.seed("hpt2"))
    lab.up(brokers=False)
    pids = [p.pid for p in lab.state.processes]
    assert pids and all(processes.pid_alive(p) for p in pids)
    # A namespace with the lab's prefix that the lab did not make (the state
    # file lists each namespace before creating it, so a crash cannot leave an
    # unlisted one): it is not the lab's to delete (issue 9).
    subprocess.run(["ip", "netns", "add", "hpt2-stray"], check=True)
    try:
        removed = lab.down()
        assert "hpt2-n1" in removed and "hpt2-stray" not in removed
        assert network.leftovers("hpt2") == ["hpt2-stray"]
    finally:
        subprocess.run(["ip", "netns", "delete", "hpt2-stray"], check=False)
    assert not any(processes.pid_alive(p) for p in pids)
    assert LabState.load("hpt2") is None
    assert lab.down() == []  # idempotent


def test_doctor_finds_nothing_wedged_on_a_healthy_lab(seed_lab: Lab, tmp_path: Path) -> None:
    """A real client connected through the NodePort (DNAT to the pod) is healthy."""
    from hangproof.doctor.scan import ScanRequest, run_scan

    ready = tmp_path / "connected"
    code = (
        "import amqp, pathlib, sys, time\n"
        "c = amqp.Connection('198.18.0.1:32672', connect_timeout=10)\n"
        "c.connect()\n"
        f"pathlib.Path({str(ready)!r}).write_text('ok')\n"
        "time.sleep(60)\n"
    )
    proc = processes.spawn([sys.executable, "-c", code], netns=seed_lab.topo.ns("n1"))
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.1)
        assert ready.exists(), "the healthy client did not connect through the NodePort"
        time.sleep(2.0)  # older than --min-silence below, so a wedge would show
        report = run_scan(ScanRequest(netns=seed_lab.topo.ns("n1"), min_silence=1.0))
        kinds = [f.kind for f in report.findings]
        assert "handshake-unanswered" not in kinds
        assert len(report.view.sockets) >= 2  # the client's socket and the listener
    finally:
        processes.stop_pid(proc.pid, grace=2.0)
