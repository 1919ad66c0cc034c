"""doctor reads each kube-proxy mode's real rules and flags only the exposed one (root).

Each mode's lab is built without brokers (doctor reads rules, sockets and
addresses, not AMQP), the VIP is put on n1 as after a failover, and doctor
scans n1. Only ``iptables-holder`` (1.9-1.23: the port holder) is exposed;
``lab race`` measures the same (docs/kube-proxy-modes.md). ~25 s on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from hangproof.lab.components.kube_proxy import MODES
from hangproof.lab.engine import network, processes
from hangproof.lab.engine.lab import Lab
from hangproof.lab.engine.topology import Topology

pytestmark = pytest.mark.lab

LAB = "hptkpm"
HAZARD = "nodeport-vip-race-hazard"


def _doctor(netns: str) -> tuple[int, dict]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hangproof.doctor",
            "--netns",
            netns,
            "--json",
            "--min-silence",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("mode", MODES)
def test_doctor_flags_only_the_port_holder_mode(mode: str) -> None:
    topo = dataclasses.replace(Topology.seed(LAB), kube_proxy=mode).validated()
    lab = Lab(topo)
    try:
        lab.up(brokers=False)
        ns = topo.ns("n1")
        processes.run(["ip", "addr", "add", f"{topo.vip}/32", "dev", network.UPLINK], netns=ns)
        code, report = _doctor(ns)
    finally:
        lab.down()
    hazards = [f for f in report["findings"] if f["kind"] == HAZARD]
    problems = [f for f in report["findings"] if f["severity"] in ("warning", "critical")]
    if mode == "iptables-holder":
        assert code == 1 and [f["kind"] for f in problems] == [HAZARD], report
        assert hazards[0]["evidence"]["port_holders"][0]["owner"] == "kube-proxy"
    else:
        assert code == 0 and problems == [], report
    if mode in ("iptables", "nftables-all"):
        # Same locality gate, read from the mode's own rules; mitigated: no holder.
        (hazard,) = hazards
        assert hazard["severity"] == "info"
        assert hazard["evidence"]["mitigations"]["port_holders_absent"] is True
        assert [p["port"] for p in hazard["evidence"]["node_ports"]] == [topo.node_port]
        gate = hazard["evidence"]["local_gate"]
        assert ("fib daddr type local" in gate) == (mode == "nftables-all"), gate
    if mode == "nftables-primary":
        # NodePorts only on the primary address: the VIP is never gated by locality.
        assert hazards == [], report
