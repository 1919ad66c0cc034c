"""The prometheus-alerts scenario's bookkeeping, on recorded /api/v1/alerts answers (no root)."""

from __future__ import annotations

import pytest

from hangproof.errors import HangproofError
from hangproof.lab.scenarios import SCENARIOS, needs_lab
from hangproof.lab.scenarios.prometheus_alerts import (
    AlertWatch,
    _parse_time,
    bounds,
    planned_seconds,
    prometheus_config,
    run_alerts,
)


def alert(name: str, state: str, active_at: str) -> dict[str, object]:
    return {"labels": {"alertname": name}, "state": state, "activeAt": active_at}


def test_episodes_pending_firing_resolved() -> None:
    watch = AlertWatch("hpalrt-c", 9090)
    t0 = _parse_time("2026-12-02T03:00:00.5Z")
    assert t0 is not None
    watch.record([alert("A", "pending", "2026-12-02T03:00:00.5Z")], t0 + 1)
    watch.record([alert("A", "firing", "2026-12-02T03:00:00.5Z")], t0 + 30)
    watch.record([alert("A", "firing", "2026-12-02T03:00:00.5Z")], t0 + 31)
    watch.record([], t0 + 40)
    ep = watch.firing_since("A", t0 - 1)
    assert ep == {"pending_at": t0, "firing_at": t0 + 30, "resolved_at": t0 + 40}
    # A second episode is separate; firing_since picks the one after the fault.
    watch.record([alert("A", "firing", "2026-12-02T03:01:00Z")], t0 + 70)
    assert watch.firing_since("A", t0 + 50)["firing_at"] == t0 + 70  # type: ignore[index]
    assert watch.firing_since("B", t0) is None


def test_two_series_of_one_alert_count_once_at_their_most_advanced_state() -> None:
    watch = AlertWatch("hpalrt-c", 9090)
    watch.record(
        [
            alert("A", "firing", "2026-12-02T03:00:05Z"),
            alert("A", "pending", "2026-12-02T03:00:01Z"),
        ],
        100.0,
    )
    (ep,) = watch.episodes["A"]
    assert ep["firing_at"] == 100.0
    assert ep["pending_at"] == _parse_time("2026-12-02T03:00:01Z")


def test_registered_builds_its_own_bed_and_refuses_a_too_short_max_seconds() -> None:
    assert "prometheus-alerts" in SCENARIOS and needs_lab("prometheus-alerts") is False
    assert planned_seconds(1.0) > 600 > planned_seconds(0.1)
    with pytest.raises(HangproofError, match="--max-seconds"):
        run_alerts(1.0, 600.0)


def test_every_bound_covers_the_alerts_for() -> None:
    from hangproof import alerting

    for a in alerting.ALERTS:
        phase, fire, resolve = bounds(1.0)[a.name]
        assert fire >= a.for_seconds and resolve >= 0 and phase


def test_prometheus_config_scrapes_both_targets_every_second() -> None:
    text = prometheus_config(__import__("pathlib").Path("/x/rules.yml"))
    assert "127.0.0.1:9808" in text and "127.0.0.1:9809" in text
    assert "evaluation_interval: 1s" in text and "- /x/rules.yml" in text
