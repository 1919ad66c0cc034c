"""A real Prometheus evaluates the shipped rules (time scale 0.1) during real faults.

Runs ``prometheus-alerts`` (about 2 minutes): every alert must go pending/firing
during its own fault within its bound (its ``for:`` plus the signal's own
delay), resolve after heal (event alerts: after their window), and nothing may
fire outside its fault. Afterwards nothing the scenario started is left.
"""

from __future__ import annotations

import subprocess

import pytest

from hangproof import alerting
from hangproof.lab.engine import processes
from hangproof.lab.scenarios.prometheus_alerts import PREFIX, run_alerts, run_vip_race

pytestmark = pytest.mark.lab


@pytest.mark.timeout(600)
def test_each_alert_fires_during_its_fault_and_resolves_after_heal() -> None:
    report = run_alerts(0.1, 600.0, prefix=PREFIX)
    results = {r["alert"]: r for r in report["results"]}
    assert set(results) == {a.name for a in alerting.ALERTS}
    for name, r in results.items():
        assert r["fault_to_firing_s"] is not None, (name, r)
        assert r["fault_to_firing_s"] <= r["bound_s"], (name, r)
        # Not before its for: (pending -> firing takes at least for:, less one evaluation).
        if r["fault_to_pending_s"] is not None:
            assert r["fault_to_firing_s"] - r["fault_to_pending_s"] >= r["for_s"] - 1.5, (name, r)
        assert r["resolved"], (name, r)
    assert report["unexpected_firing"] == []
    assert report["outcome"] == "passed"
    assert report["override"] and "0.1" in report["override"]
    # Bounded life: every process it started is gone, and so are its namespaces.
    assert not any(processes.pid_alive(pid) for pid in report["pids"].values())
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert PREFIX not in names


@pytest.mark.timeout(600)
def test_the_reports_wedge_fires_handshake_unanswered_on_the_seed_lab() -> None:
    """vip-race wedges a seed-like stock worker on the port holder; doctor's alert fires."""
    report = run_vip_race(0.1, 600.0)
    (r,) = report["results"]
    assert r["alert"] == "HangproofHandshakeUnanswered"
    assert report["fault_detail"].get("wedged_sport") is not None, report["fault_detail"]
    assert r["fault_to_firing_s"] is not None and r["fault_to_firing_s"] <= r["bound_s"], r
    assert r["resolved"], r
    assert report["outcome"] == "passed"
    # The report's evidence: nothing received, the port holder owns the peer, no DNAT.
    ev = report["evidence"]
    assert ev["client_socket"]["bytes_received"] == 0
    assert ev["listener_owner"] == "kube-proxy"
    assert not any(processes.pid_alive(pid) for pid in report["pids"].values())
