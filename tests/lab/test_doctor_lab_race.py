"""doctor diagnoses the seed's real race, produced by ``hangproof lab race --keep`` (root).

The lab builds the report's system (kube-proxy 1.9 rules, port holder, keepalived
VIP, RabbitMQ) in ``hplab-*`` namespaces; ``race --keep`` leaves the wedged raw
client running. doctor must then say what the report's authors found by hand.
The finalizer runs ``hangproof lab down`` even when the test fails.

A lab that is already up belongs to someone else (another session, a demo): the
test skips rather than race in it or tear it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = "hplab"


def _hangproof(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hangproof.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def lab() -> Iterator[None]:
    if os.path.exists(f"/run/netns/{LAB}-n1"):
        pytest.skip(f"a lab named {LAB} is already up; not racing in someone else's lab")
    try:
        up = _hangproof("lab", "up", timeout=600)
        assert up.returncode == 0, up.stderr[-2000:]
        yield
    finally:
        _hangproof("lab", "down", timeout=300)


def _doctor(netns: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hangproof.doctor",
            "--netns",
            netns,
            "--min-silence",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    return json.loads(done.stdout)


def test_doctor_explains_the_wedge_left_by_lab_race(lab: None) -> None:
    race = _hangproof("lab", "race", "--keep", "--json", timeout=300)
    result = json.loads(race.stdout)
    assert result["outcome"] == "hang", race.stderr[-2000:]
    node_ns = f"{LAB}-{result['client_node']}"

    report = _doctor(node_ns)

    kinds = [f["kind"] for f in report["findings"]]
    assert "nodeport-vip-race-hazard" in kinds
    wedged = [f for f in report["findings"] if f["kind"] == "handshake-unanswered"]
    assert len(wedged) == 1, report
    (finding,) = wedged
    if result.get("client_pid"):
        assert finding["pid"] == result["client_pid"]
    assert finding["silent_seconds"] >= 1
    ev = finding["evidence"]
    assert ev["peer_owner"] == "kube-proxy"
    assert ev["peer_unread_bytes"] == 8
    assert ev["peer_accepted"] is False
    assert ev["dnat"] is False
