"""`lab race --report` and `lab run fault-matrix --report`, for real: files written, content true.

~70 s on 2 cores: lab up (~8 s), two raw races (~14 s each, their 5 s window
included; the second fixed by conntrack-flush), lab down (~10 s), one fault-matrix cell (broker-kill x kombu+guard,
~25 s with its testbed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hangproof.lab.engine.lab import Lab
from hangproof.report.events import LANE_CONNTRACK, LANE_HOOKS, LANE_VIP, EventLog

pytestmark = pytest.mark.lab

HANGPROOF = [str(Path(sys.executable).with_name("hangproof"))]


def _hangproof(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HANGPROOF, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def _assert_report_files(directory: Path) -> EventLog:
    html, png, events = (directory / f"timeline.{ext}" for ext in ("html", "png", "json"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    text = html.read_text()
    assert "vegaEmbed" in text and "<script src" not in text
    return EventLog.load(events)


def test_lab_race_report_shows_the_reports_evidence(seed_lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "race"
    r = _hangproof("lab", "race", "--name", seed_lab.topo.name, "--window", "5", "--report",
                   str(out), "--json", timeout=120)  # fmt: skip
    assert r.returncode == 1, r.stderr  # 1: the hang was found
    result = json.loads(r.stdout)
    assert result["outcome"] == "hang"
    assert result["report"]["html"] == str(out / "timeline.html")
    assert f"timeline: {out / 'timeline.html'}" in r.stderr  # where it went, on stderr
    log = _assert_report_files(out)
    client = [e.kind for e in log.events if e.lane == "client raw"]
    assert client[0] == "syn" and client[-1] == "wedged"
    assert {"estab", "header-sent", "syn-retransmit"} <= set(client)
    at = {e.kind: e.at for e in reversed(log.events)}  # first occurrence of each kind
    assert at["inject"] < at["syn"] <= at["vip-master"] < at["syn-retransmit"] <= at["estab"]
    hooks = [e.label.split(" (")[0] for e in log.events if e.lane == LANE_HOOKS]
    assert hooks == ["OUTPUT via eth0", "OUTPUT via lo", "INPUT via lo"]
    nat = [e for e in log.events if e.lane == LANE_CONNTRACK]
    assert nat and all("no DNAT" in e.label for e in nat) and "dport=32672" in nat[0].evidence
    assert [e.label for e in log.events if e.lane == LANE_VIP and e.kind == "vip-held"] == [
        "n2 holds the VIP",
        "n1 holds the VIP",
    ]
    assert log.markers == []  # the raw client never noticed: no time-to-detect to show


def test_a_fixed_race_draws_the_whole_handshake(seed_lab: Lab, tmp_path: Path) -> None:
    """With a mitigation the client reaches the broker: Start, Tune and Open-Ok are drawn, in order."""
    out = tmp_path / "race-fixed"
    r = _hangproof("lab", "race", "--name", seed_lab.topo.name, "--window", "5", "--mitigation",
                   "conntrack-flush", "--report", str(out), "--json", timeout=120)  # fmt: skip
    result = json.loads(r.stdout)
    assert result["outcome"] == "connected", result
    log = _assert_report_files(out)
    at = {e.kind: e.at for e in reversed(log.events) if e.lane == "client raw"}
    assert at["header-sent"] <= at["start"] <= at["tune"] <= at["open-ok"], at
    assert [m.kind for m in log.markers][-1:] == ["resume"]


def test_fault_matrix_report_writes_heatmap_and_cell_timeline(tmp_path: Path) -> None:
    out = tmp_path / "fm"
    r = _hangproof("lab", "run", "fault-matrix", "--faults", "broker-kill", "--profiles",
                   "kombu+guard", "--report", str(out), "--json", timeout=600)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    result = json.loads(r.stdout)
    (cell,) = result["cells"]
    assert isinstance(cell["resume_s"], float), cell
    assert (out / "fault-matrix.html").exists() and (out / "fault-matrix.png").exists()
    heatmap = (out / "fault-matrix.html").read_text()
    assert 'href="cells/broker-kill--kombu+guard/timeline.html"' in heatmap
    log = _assert_report_files(out / "cells" / "broker-kill--kombu+guard")
    kinds = [e.kind for e in log.events]
    assert kinds.index("inject") < kinds.index("heal")
    marks = {m.kind: m for m in log.markers}
    assert marks["resume"].seconds == pytest.approx(cell["resume_s"], abs=0.01)
    if cell["detect_s"] is not None:
        assert marks["detect"].seconds == pytest.approx(cell["detect_s"], abs=0.01)
    assert sum(r.executed for r in log.rates) > 0  # tasks per second were sampled
    assert any(e.kind == "detect" for e in log.events if e.lane == "client kombu+guard")
