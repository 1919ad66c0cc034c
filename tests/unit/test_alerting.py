"""The shipped alert rules, PrometheusRule and dashboard: one source, real metric names, promtool.

- the files under deploy/ are exactly what :mod:`hangproof.alerting` renders, and the plain
  rules file and the PrometheusRule hold the same groups;
- every metric an alert or a dashboard panel reads is in the exposition text that
  prometheus_client really produces for the guard (:class:`GuardState`) and for doctor
  (:class:`DoctorMetrics`), counters with their ``_total``;
- ``promtool check rules`` and ``promtool test rules`` (Debian's prometheus package) pass: each
  alert does not fire before its ``for:``, fires after it, and resolves. Without promtool the
  test skips, unless HANGPROOF_REQUIRE_LAB=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hangproof import alerting
from hangproof.doctor.metrics import DoctorMetrics
from hangproof.failure import Policy
from hangproof.guard.runtime import GuardState

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def exposition_names() -> set[str]:
    """Sample names of the guard's and doctor's real /metrics text."""
    state = GuardState(Policy(stall_timeout=3))
    state.check()
    doctor = DoctorMetrics()
    doctor.update([], scanned=0, seconds=0.0)
    names: set[str] = set()
    for text in (generate_latest(state.registry), doctor.render()):
        for family in text_string_to_metric_families(text.decode()):
            names |= {sample.name for sample in family.samples}
    return names


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool missing: apt-get install prometheus (scripts/setup.sh installs it)"
        if os.environ.get("HANGPROOF_REQUIRE_LAB") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_committed_files_are_what_the_source_renders() -> None:
    for rel, text in alerting.rendered_files().items():
        committed = (DEPLOY / rel).read_text()
        assert committed == text, (
            f"deploy/{rel} is stale: python -m hangproof.alerting write deploy"
        )


def test_rules_file_and_prometheus_rule_hold_the_same_groups() -> None:
    plain = yaml.safe_load((DEPLOY / alerting.RULES_PATH).read_text())
    operator = yaml.safe_load((DEPLOY / alerting.PROMETHEUS_RULE_PATH).read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["apiVersion"] == "monitoring.coreos.com/v1"
    assert plain["groups"] == operator["spec"]["groups"] == alerting.rule_groups()
    names = [r["alert"] for g in plain["groups"] for r in g["rules"]]
    assert names == [a.name for a in alerting.ALERTS]


def test_each_alert_states_and_justifies_its_for_and_names_a_hangproof_command() -> None:
    text = (DEPLOY / alerting.RULES_PATH).read_text()
    for alert in alerting.ALERTS:
        rule = alerting.scaled(alert)
        # The comment above the rule starts with the rule's own delay.
        assert alert.why_for.startswith(f"for: {rule['for']}."), alert.name
        assert f"# for: {rule['for']}." in text
        assert re.search(
            r"hangproof (doctor|probe|check-worker|lab)", rule["annotations"]["runbook"]
        )
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_time_scale_shortens_for_and_windows_only() -> None:
    lab = {r["alert"]: r for g in alerting.rule_groups(0.1) for r in g["rules"]}
    assert lab["HangproofWorkerNotReady"]["for"] == "30s"
    assert "[1m]" in lab["HangproofReconnectStorm"]["expr"]
    assert "LAB OVERRIDE" in alerting.render_rules(0.1)
    assert "LAB OVERRIDE" not in alerting.render_rules()


def test_every_alert_reads_metrics_the_guard_or_doctor_exports() -> None:
    exported = exposition_names()
    # The names this file's docstring promises, as prometheus_client writes them.
    assert {
        "hangproof_stalls_detected_total",
        "hangproof_reconnects_total",
        "hangproof_broker_blocked",
        "hangproof_doctor_findings",
    } <= exported
    for alert in alerting.ALERTS:
        used = alerting.metric_names(alerting.scaled(alert)["expr"])
        assert used and used <= exported, (alert.name, used - exported)
        assert alert.metric in used


def test_dashboard_reads_only_exported_metrics() -> None:
    board = json.loads((DEPLOY / alerting.DASHBOARD_PATH).read_text())
    exported = exposition_names()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        used = alerting.metric_names(expr)
        assert used and used <= exported, (expr, used - exported)
    # Every alerting metric is on the dashboard.
    shown = set().union(*(alerting.metric_names(e) for e in exprs))
    assert {a.metric for a in alerting.ALERTS} <= shown
    assert any(p["type"] == "alertlist" for p in board["panels"])


def test_promtool_checks_both_files(tmp_path: Path) -> None:
    tool = promtool()
    operator = yaml.safe_load((DEPLOY / alerting.PROMETHEUS_RULE_PATH).read_text())
    spec = tmp_path / "spec.yml"
    spec.write_text(yaml.safe_dump(operator["spec"]))
    for path in (DEPLOY / alerting.RULES_PATH, spec):
        done = subprocess.run(
            [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(alerting.ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    tool = promtool()
    tests = DEPLOY / alerting.PROMTOOL_TESTS_PATH
    done = subprocess.run(
        [tool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_unit_tests_catch_a_shorter_for(tmp_path: Path) -> None:
    """The promtool cases can fail: the same tests against a rule with a shorter for: fail."""
    tool = promtool()
    rules = (DEPLOY / alerting.RULES_PATH).read_text().replace("for: 5m", "for: 4m")
    (tmp_path / "hangproof-alerts.yml").write_text(rules)
    (tmp_path / "tests").mkdir()
    tests = tmp_path / "tests" / "hangproof-alerts.test.yml"
    tests.write_text((DEPLOY / alerting.PROMTOOL_TESTS_PATH).read_text())
    done = subprocess.run(
        [tool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "HangproofWorkerNotReady" in done.stdout + done.stderr
