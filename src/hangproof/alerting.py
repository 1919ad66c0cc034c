"""Prometheus alert rules and a Grafana dashboard for the guard and doctor: one source.

Every alert is an :class:`Alert` in :data:`ALERTS`, with its ``for:`` delay and
the reason for that delay. The files under ``deploy/`` are rendered from here
and a unit test checks that the committed files are exactly what this module
renders, so the plain rules file, the PrometheusRule and the dashboard cannot
drift apart::

    python -m hangproof.alerting write deploy        # regenerate deploy/prometheus, deploy/grafana
    python -m hangproof.alerting rules --time-scale 0.1   # a lab override, on stdout

``--time-scale`` multiplies every ``for:`` and every range window; it exists
only so the Prometheus lab scenario can show each alert's life cycle in a few
minutes, and the scenario states it in its output. The shipped files are scale 1.

    >>> [a.name for a in ALERTS][:2]
    ['HangproofStallDetected', 'HangproofWorkerNotReady']
    >>> "for: 5m" in render_rules()
    True
    >>> "for: 30s" in render_rules(time_scale=0.1)
    True
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where the rendered files live, relative to the repository root.
RULES_PATH = Path("prometheus/hangproof-alerts.yml")
PROMTOOL_TESTS_PATH = Path("prometheus/tests/hangproof-alerts.test.yml")
PROMETHEUS_RULE_PATH = Path("prometheus/hangproof-prometheusrule.yaml")
DASHBOARD_PATH = Path("grafana/hangproof-dashboard.json")

GUARD_GROUP = "hangproof-guard"
DOCTOR_GROUP = "hangproof-doctor"


@dataclass(frozen=True)
class Alert:
    """One alert rule.

    ``expr`` may contain ``{window}``, replaced by :attr:`window_seconds`
    (scaled like ``for:``). ``why_for`` is written above the rule as a comment:
    why this delay avoids noise and restart storms.
    """

    name: str
    group: str
    expr: str
    for_seconds: int
    severity: str
    summary: str
    description: str
    runbook: str
    why_for: str
    window_seconds: int | None = None
    #: The metric a lab or a user makes move to fire it (for docs and tests).
    metric: str = ""


ALERTS: tuple[Alert, ...] = (
    Alert(
        name="HangproofStallDetected",
        group=GUARD_GROUP,
        metric="hangproof_stalls_detected_total",
        expr=(
            'increase(hangproof_stalls_detected_total{{detection!="connection-error"}}[{window}]) > 0'
        ),
        window_seconds=300,
        for_seconds=0,
        severity="warning",
        summary="hangproof guard on {{ $labels.instance }} detected a silent stall ({{ $labels.detection }})",
        description=(
            "The guarded worker {{ $labels.instance }} (job {{ $labels.job }}) noticed a broker "
            "link that went silent ({{ $labels.detection }}) in the last 5 minutes and "
            "reconnected. Stock Celery would have hung here. The guard already recovered; find out "
            "why the path went silent (broker paused, half-open link, VIP moved, NAT/conntrack "
            "expiry) before it happens again."
        ),
        runbook=(
            "hangproof probe amqp://USER@BROKER:PORT/ --json  (from the worker's host/pod: where "
            "does the handshake stall?); hangproof doctor --json on the worker's node; the "
            "worker's /healthz lists the last events."
        ),
        why_for=(
            "for: 0s. A stall is an event the guard has already acted on, not a state: the "
            "expression stays true for the 5m window after the last stall, which is the delay "
            "that matters (visible for 5 minutes, then resolves by itself). Severity warning, "
            "never a page: one stall per link failure is the guard working. Reset/refused "
            "(detection=connection-error) are loud failures Celery sees anyway and are left out."
        ),
    ),
    Alert(
        name="HangproofWorkerNotReady",
        group=GUARD_GROUP,
        metric="hangproof_ready",
        expr="hangproof_ready == 0",
        for_seconds=300,
        severity="warning",
        summary="hangproof guard on {{ $labels.instance }} has not been ready for 5 minutes",
        description=(
            "The worker {{ $labels.instance }} has had no working, consuming broker connection "
            "for 5 minutes (readiness fails). A restart will not help: the broker or the path "
            "to it is down. Tasks queue up (or publishers fail) until it comes back."
        ),
        runbook=(
            "hangproof probe amqp://USER@BROKER:PORT/ --json from the worker's pod or node "
            "(refused / unreachable / silent / stalled says where); the worker's /readyz gives "
            "the reason; check the broker's own health."
        ),
        why_for=(
            "for: 5m. Readiness drops during every broker restart and failover and comes back "
            "within stall_timeout plus a backoff step (the guard's promise) or a broker restart "
            "(about a minute for RabbitMQ). Five minutes is several times that, so a rolling "
            "broker upgrade never pages, while a real outage does, far sooner than "
            "celery-exporter's CeleryWorkerDown (15m), which waits for missing events."
        ),
    ),
    Alert(
        name="HangproofWorkerUnhealthy",
        group=GUARD_GROUP,
        metric="hangproof_healthy",
        expr="hangproof_healthy == 0",
        for_seconds=120,
        severity="critical",
        summary="hangproof guard on {{ $labels.instance }} has been unhealthy for 2 minutes",
        description=(
            "The worker {{ $labels.instance }} has failed its liveness check for 2 minutes "
            "(/healthz answers 503): it is wedged, or has had no broker connection for longer "
            "than recover_timeout, and nothing has restarted it. With a Kubernetes liveness "
            "probe on `hangproof check-worker` it would have been restarted already, so check "
            "that the probe is wired."
        ),
        runbook=(
            "hangproof check-worker --port LIVENESS_PORT --json (the reason); hangproof doctor "
            "--pid WORKER_PID --json (a wedged handshake, its stack); restart the worker."
        ),
        why_for=(
            "for: 2m. Liveness already waits recover_timeout (4 x stall_timeout, 60 s by "
            "default) without a connection before it fails, and a Kubernetes liveness probe "
            "(3 failures x 10 s) restarts the pod within about 30 s more; a restarted pod is a "
            "new series, so this only fires when the same process stays unhealthy for 2 minutes, "
            "i.e. when nothing restarts it. Shorter would page during every restart; the "
            "restart storm itself is KubePodCrashLooping's job, not this alert's."
        ),
    ),
    Alert(
        name="HangproofBrokerBlocked",
        group=GUARD_GROUP,
        metric="hangproof_broker_blocked",
        expr="hangproof_broker_blocked == 1",
        for_seconds=120,
        severity="critical",
        summary="the broker has blocked publishing from {{ $labels.instance }} for 2 minutes",
        description=(
            "RabbitMQ has sent connection.blocked (a memory or disk alarm) to a guarded "
            "connection of {{ $labels.instance }} and not lifted it for 2 minutes. Guarded "
            "publishes fail at once with BrokerBlocked (stock clients would hang): tasks are "
            "not being queued. Consumers keep consuming, which is what clears a memory alarm."
        ),
        runbook=(
            "rabbitmq-diagnostics alarms / rabbitmqctl status on the broker (memory, disk_free); "
            "drain or purge the queues that grew; hangproof check-worker --port LIVENESS_PORT "
            "--json shows 'blocked' (the broker's reason, and for how long)."
        ),
        why_for=(
            "for: 2m. A memory alarm during a burst clears in seconds once consumers catch up "
            "or the Erlang VM collects garbage; a real shortage (disk below the limit, a queue "
            "nobody consumes) lasts. Two minutes lets the short ones pass, and is still short "
            "enough that publishers failing for a web request is caught early."
        ),
    ),
    Alert(
        name="HangproofReconnectStorm",
        group=GUARD_GROUP,
        metric="hangproof_reconnects_total",
        expr="increase(hangproof_reconnects_total[{window}]) > 5",
        window_seconds=600,
        for_seconds=0,
        severity="warning",
        summary="hangproof guard on {{ $labels.instance }} reconnected more than 5 times in 10 minutes",
        description=(
            "The worker {{ $labels.instance }} keeps losing its broker connection and getting "
            "it back (more than 5 reconnects in 10 minutes): a flapping path "
            "(load balancer idle timeout, NAT table, a heartbeat the path cannot carry), or a "
            "broker that keeps closing it. Each reconnect redelivers unacknowledged tasks."
        ),
        runbook=(
            "the worker's /healthz events (reason of each disconnect); hangproof probe "
            "amqp://USER@BROKER:PORT/ --json repeatedly; the broker's connection log."
        ),
        why_for=(
            "for: 0s. The threshold over the window is the debounce: a rolling restart of a "
            "3-node cluster costs a worker at most 3 reconnects, so more than 5 in 10 minutes "
            "is a pattern, not maintenance. Waiting longer on top would only hide a storm "
            "that is already 5 reconnects deep."
        ),
    ),
    Alert(
        name="HangproofHandshakeUnanswered",
        group=DOCTOR_GROUP,
        metric="hangproof_doctor_findings",
        expr='sum without (severity) (hangproof_doctor_findings{kind="handshake-unanswered"}) > 0',
        for_seconds=60,
        severity="critical",
        summary="an AMQP handshake on {{ $labels.instance }} has gone unanswered for a minute",
        description=(
            "hangproof doctor on {{ $labels.instance }} sees a client that sent the AMQP "
            "protocol header and never heard back: the incident's wedge (a process stuck "
            "forever in connect, often `celery inspect ping` or a worker without a handshake "
            "deadline). It will not recover by itself."
        ),
        runbook=(
            "hangproof doctor --json on that node (names the pid, its peer, conntrack without "
            "DNAT, the listener owner and the Python stack); kill the wedged client; see "
            "hangproof lab race for the VIP/NodePort race behind it."
        ),
        why_for=(
            "for: 1m. doctor already requires --min-silence (5 s) of silence after the header; "
            "RabbitMQ itself gives up on a handshake after 10 s (handshake_timeout), so a "
            "header unanswered for a minute is never a slow broker. One minute also spans "
            "several doctor scans, so one odd scan does not page."
        ),
    ),
    Alert(
        name="HangproofNodePortVipRaceHazard",
        group=DOCTOR_GROUP,
        metric="hangproof_doctor_findings",
        expr=(
            "sum without (severity) "
            '(hangproof_doctor_findings{kind="nodeport-vip-race-hazard", severity!="info"}) > 0'
        ),
        for_seconds=600,
        severity="warning",
        summary="{{ $labels.instance }} is exposed to the NodePort/VIP race",
        description=(
            "hangproof doctor on {{ $labels.instance }} finds kube-proxy NodePort rules gated "
            "by addrtype LOCAL on a node that holds (or can take) a floating address, with no "
            "mitigation (reject-undnat, conntrack flush on VIP takeover, no port holder). A "
            "client that connects to the VIP while it moves can wedge forever. A hazard, not "
            "an incident: fix the configuration."
        ),
        runbook=(
            "hangproof doctor --json (the finding's remedy gives the exact rule or "
            "notify_master command); hangproof lab race shows the race on a lab."
        ),
        why_for=(
            "for: 10m. This is configuration, present for as long as the rules and the VIP "
            "are; a ticket, not a page. Ten minutes ignores the moments of a keepalived "
            "failover or a kube-proxy resync, when rules and addresses are briefly in between."
        ),
    ),
)


def duration(seconds: float) -> str:
    """A Prometheus duration: ``0s``, ``30s``, ``5m``, ``1m30s``.

    >>> duration(0), duration(30), duration(300), duration(90), duration(0.4)
    ('0s', '30s', '5m', '1m30s', '1s')
    """
    if seconds <= 0:
        return "0s"
    total = max(1, round(seconds))
    minutes, rest = divmod(total, 60)
    if minutes and rest:
        return f"{minutes}m{rest}s"
    return f"{minutes}m" if minutes else f"{rest}s"


def scaled(alert: Alert, time_scale: float = 1.0) -> dict[str, Any]:
    """``alert`` as a Prometheus rule dict, with ``for:`` and the window scaled."""
    expr = alert.expr
    if alert.window_seconds is not None:
        expr = expr.format(window=duration(alert.window_seconds * time_scale))
    return {
        "alert": alert.name,
        "expr": expr,
        "for": duration(alert.for_seconds * time_scale),
        "labels": {"severity": alert.severity, "component": alert.group.removeprefix("hangproof-")},
        "annotations": {
            "summary": alert.summary,
            "description": alert.description,
            "runbook": alert.runbook,
        },
    }


def rule_groups(time_scale: float = 1.0) -> list[dict[str, Any]]:
    """The rule groups as plain data (what both files contain under ``groups``)."""
    groups: list[dict[str, Any]] = []
    for name in (GUARD_GROUP, DOCTOR_GROUP):
        rules = [scaled(a, time_scale) for a in ALERTS if a.group == name]
        groups.append({"name": name, "rules": rules})
    return groups


def _wrap(text: str, width: int = 96) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def _q(value: str) -> str:
    # JSON strings are valid YAML double-quoted scalars (YAML 1.2 is a JSON superset).
    return json.dumps(value, ensure_ascii=False)


def _groups_yaml(time_scale: float, indent: str) -> list[str]:
    by_name = {a.name: a for a in ALERTS}
    out = [f"{indent}groups:"]
    for group in rule_groups(time_scale):
        out.append(f"{indent}  - name: {group['name']}")
        out.append(f"{indent}    rules:")
        for rule in group["rules"]:
            alert = by_name[rule["alert"]]
            why = alert.why_for
            if time_scale != 1.0:
                why += f" (Scaled by --time-scale {time_scale:g} for a lab run.)"
            out += [f"{indent}      # {line}" for line in _wrap(why)]
            out.append(f"{indent}      - alert: {rule['alert']}")
            out.append(f"{indent}        expr: {_q(rule['expr'])}")
            out.append(f"{indent}        for: {rule['for']}")
            out.append(f"{indent}        labels:")
            for key, value in rule["labels"].items():
                out.append(f"{indent}          {key}: {_q(value)}")
            out.append(f"{indent}        annotations:")
            for key, value in rule["annotations"].items():
                out.append(f"{indent}          {key}: {_q(value)}")
    return out


HEADER = (
    "# Generated by `python -m hangproof.alerting write deploy` from src/hangproof/alerting.py;\n"
    "# edit that module, not this file (tests/unit/test_alerting.py checks they agree).\n"
)


def render_rules(time_scale: float = 1.0) -> str:
    """The plain Prometheus rules file (``rule_files:``), with each ``for:`` justified."""
    head = HEADER + "# Check: promtool check rules deploy/prometheus/hangproof-alerts.yml\n"
    if time_scale != 1.0:
        head += f"# LAB OVERRIDE: every for: and window x {time_scale:g} (not for production)\n"
    return head + "\n".join(_groups_yaml(time_scale, "")) + "\n"


def render_prometheus_rule(time_scale: float = 1.0, namespace: str = "monitoring") -> str:
    """The same groups as a prometheus-operator ``PrometheusRule``."""
    head = HEADER + (
        "# kubectl apply -f deploy/prometheus/hangproof-prometheusrule.yaml\n"
        "# Add the label your Prometheus' ruleSelector matches (e.g. release: kube-prometheus-stack).\n"
    )
    body = [
        "apiVersion: monitoring.coreos.com/v1",
        "kind: PrometheusRule",
        "metadata:",
        "  name: hangproof",
        f"  namespace: {namespace}",
        "  labels:",
        "    app.kubernetes.io/name: hangproof",
        "    app.kubernetes.io/component: alerting",
        "spec:",
        *_groups_yaml(time_scale, "  "),
    ]
    return head + "\n".join(body) + "\n"


# -- the dashboard -----------------------------------------------------------

#: (title, unit, [(expr, legend)]) per panel; every expr uses exported metrics only.
PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Ready / healthy (guard)",
        "short",
        (
            ("hangproof_ready", "ready {{instance}}"),
            ("hangproof_healthy", "healthy {{instance}}"),
        ),
    ),
    (
        "Broker connection state (guard)",
        "short",
        (('hangproof_connection_state{hangproof_connection_state="connected"}', "{{instance}}"),),
    ),
    (
        "Stalls detected per detection (guard, increase over 5m)",
        "short",
        (("increase(hangproof_stalls_detected_total[5m])", "{{instance}} {{detection}}"),),
    ),
    (
        "Reconnects (guard, increase over 10m)",
        "short",
        (
            ("increase(hangproof_reconnects_total[10m])", "reconnects {{instance}}"),
            ("increase(hangproof_forced_reconnects_total[10m])", "forced {{instance}}"),
        ),
    ),
    (
        "Seconds since the last inbound frame / loop tick (guard)",
        "s",
        (
            ("hangproof_last_inbound_frame_age_seconds", "frame age {{instance}}"),
            ("hangproof_event_loop_tick_age_seconds", "loop tick age {{instance}}"),
        ),
    ),
    (
        "Broker blocked publishing (guard)",
        "short",
        (
            ("hangproof_broker_blocked", "blocked {{instance}}"),
            ("increase(hangproof_broker_blocked_events_total[10m])", "blocked events {{instance}}"),
        ),
    ),
    (
        "doctor findings by kind and severity",
        "short",
        (("hangproof_doctor_findings", "{{instance}} {{kind}} {{severity}}"),),
    ),
    (
        "doctor scans",
        "short",
        (
            ("hangproof_doctor_scanned_sockets", "sockets {{instance}}"),
            ("hangproof_doctor_scan_seconds", "scan seconds {{instance}}"),
            ("rate(hangproof_doctor_scans_total[5m])", "scans/s {{instance}}"),
            ("increase(hangproof_doctor_scan_errors_total[10m])", "scan errors {{instance}}"),
        ),
    ),
)


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard (schema 39): one timeseries panel per :data:`PANELS` entry
    plus the alert list."""
    panels: list[dict[str, Any]] = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(targets)
                ],
            }
        )
    panels.append(
        {
            "id": len(PANELS) + 1,
            "type": "alertlist",
            "title": "hangproof alerts",
            "gridPos": {"h": 8, "w": 24, "x": 0, "y": 8 * ((len(PANELS) + 1) // 2)},
            "options": {
                "alertName": "Hangproof",
                "showOptions": "current",
                "stateFilter": {"firing": True, "pending": True},
            },
        }
    )
    return {
        "title": "hangproof: guard and doctor",
        "uid": "hangproof",
        "tags": ["hangproof", "celery", "rabbitmq"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }


def render_dashboard() -> str:
    """The dashboard as the committed JSON text."""
    return json.dumps(dashboard(), indent=2) + "\n"


#: A metric name inside a PromQL expression (what tests check against the exposition).
METRIC_NAME = re.compile(r"\b(hangproof_[a-z_]+)\b")


def metric_names(expr: str) -> set[str]:
    """The hangproof metric names an expression reads (label names excluded).

    >>> sorted(metric_names('increase(hangproof_reconnects_total[5m]) > 0'))
    ['hangproof_reconnects_total']
    >>> sorted(metric_names('hangproof_connection_state{hangproof_connection_state="connected"}'))
    ['hangproof_connection_state']
    """
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    return set(METRIC_NAME.findall(without_labels))


# -- promtool unit tests -------------------------------------------------------


@dataclass(frozen=True)
class RuleCase:
    """Input series for one alert and what must be firing when.

    ``evals`` is ``(minute, firing)``: at that minute the alert is firing (with
    the series' labels) or not at all. Together they show: does not fire
    before its ``for:``, fires after it, resolves.
    """

    alert: str
    series: tuple[tuple[str, str], ...]
    evals: tuple[tuple[int, bool], ...]
    #: Labels of the firing alert beyond the rule's own (from the firing series).
    labels: tuple[tuple[str, str], ...]


GUARD = (("instance", "worker-1:9808"), ("job", "hangproof-guard"))
DOCTOR = (("instance", "node-1:9809"), ("job", "hangproof-doctor"))


def _series(metric: str, labels: tuple[tuple[str, str], ...]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels)
    return f"{metric}{{{inner}}}"


RULE_CASES: tuple[RuleCase, ...] = (
    RuleCase(
        "HangproofStallDetected",
        (
            # One watchdog detection at minute 3; connection errors never count.
            (
                _series("hangproof_stalls_detected_total", (("detection", "link-silent"), *GUARD)),
                "0 0 0 1 1 1 1 1 1 1 1 1 1",
            ),
            (
                _series(
                    "hangproof_stalls_detected_total", (("detection", "connection-error"), *GUARD)
                ),
                "0 1 2 3 4 5 6 7 8 9 10 11 12",
            ),
        ),
        ((2, False), (3, True), (7, True), (9, False)),
        (("detection", "link-silent"), *GUARD),
    ),
    RuleCase(
        "HangproofWorkerNotReady",
        ((_series("hangproof_ready", GUARD), "1 1 0 0 0 0 0 0 0 1 1 1"),),
        ((3, False), (6, False), (7, True), (8, True), (9, False)),
        GUARD,
    ),
    RuleCase(
        "HangproofWorkerUnhealthy",
        ((_series("hangproof_healthy", GUARD), "1 1 0 0 0 0 1 1 1"),),
        ((2, False), (3, False), (4, True), (5, True), (6, False)),
        GUARD,
    ),
    RuleCase(
        "HangproofBrokerBlocked",
        ((_series("hangproof_broker_blocked", GUARD), "0 1 1 1 1 0 0 1 0 0"),),
        # Blocked 1..4 fires at 3; the one-minute block at 7 never does.
        ((2, False), (3, True), (4, True), (5, False), (7, False), (8, False)),
        GUARD,
    ),
    RuleCase(
        "HangproofReconnectStorm",
        # Quiet for 10 minutes, then one reconnect a minute up to 7.
        ((_series("hangproof_reconnects_total", GUARD), "0x10 1 2 3 4 5 6 7 7x20"),),
        ((10, False), (14, False), (16, True), (20, True), (28, False)),
        GUARD,
    ),
    RuleCase(
        "HangproofHandshakeUnanswered",
        (
            (
                _series(
                    "hangproof_doctor_findings",
                    (("kind", "handshake-unanswered"), ("severity", "critical"), *DOCTOR),
                ),
                "0 0 1 1 1 1 0 0",
            ),
            (
                _series(
                    "hangproof_doctor_findings",
                    (("kind", "handshake-unanswered"), ("severity", "warning"), *DOCTOR),
                ),
                "0 0 0 0 0 0 0 0",
            ),
        ),
        ((2, False), (3, True), (5, True), (6, False)),
        (("kind", "handshake-unanswered"), *DOCTOR),
    ),
    RuleCase(
        "HangproofNodePortVipRaceHazard",
        (
            (
                _series(
                    "hangproof_doctor_findings",
                    (("kind", "nodeport-vip-race-hazard"), ("severity", "warning"), *DOCTOR),
                ),
                "1x12 0 0",
            ),
            # A mitigated hazard (severity info) never fires.
            (
                _series(
                    "hangproof_doctor_findings",
                    (
                        ("kind", "nodeport-vip-race-hazard"),
                        ("severity", "info"),
                        ("instance", "node-2:9809"),
                        ("job", "hangproof-doctor"),
                    ),
                ),
                "1x14",
            ),
        ),
        ((9, False), (10, True), (12, True), (13, False)),
        (("kind", "nodeport-vip-race-hazard"), *DOCTOR),
    ),
)


def _expand(template: str, labels: dict[str, str]) -> str:
    """Expand ``{{ $labels.X }}`` as Prometheus' template engine does (all we use)."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def render_promtool_tests(rules_file: str = "../hangproof-alerts.yml") -> str:
    """The ``promtool test rules`` file: every alert fires after its for:, not before, resolves."""
    by_name = {a.name: a for a in ALERTS}
    covered = {c.alert for c in RULE_CASES}
    if covered != set(by_name):
        raise ValueError(f"alerts without a promtool case: {sorted(set(by_name) - covered)}")
    out = [
        HEADER.rstrip("\n"),
        "# Run: promtool test rules deploy/prometheus/tests/hangproof-alerts.test.yml",
        "rule_files:",
        f"  - {rules_file}",
        "evaluation_interval: 1m",
        "tests:",
    ]
    for case in RULE_CASES:
        rule = scaled(by_name[case.alert])
        labels = dict(case.labels)
        out += [f"  # {case.alert} (for: {rule['for']})", "  - interval: 1m", "    input_series:"]
        for series, values in case.series:
            out += [f"      - series: {_q(series)}", f"        values: {_q(values)}"]
        out.append("    alert_rule_test:")
        for minute, firing in case.evals:
            out += [f"      - eval_time: {minute}m", f"        alertname: {case.alert}"]
            if not firing:
                out.append("        exp_alerts: []")
                continue
            out += ["        exp_alerts:", "          - exp_labels:"]
            for key, value in {**labels, **rule["labels"]}.items():
                out.append(f"              {key}: {_q(value)}")
            out.append("            exp_annotations:")
            for key, value in rule["annotations"].items():
                out.append(f"              {key}: {_q(_expand(value, labels))}")
    return "\n".join(out) + "\n"


def rendered_files(time_scale: float = 1.0) -> dict[Path, str]:
    """Relative path under ``deploy/`` -> text."""
    return {
        RULES_PATH: render_rules(time_scale),
        PROMETHEUS_RULE_PATH: render_prometheus_rule(time_scale),
        PROMTOOL_TESTS_PATH: render_promtool_tests(),
        DASHBOARD_PATH: render_dashboard(),
    }


def markdown_table() -> str:
    """The alerts as the markdown table of docs/alerting.md (name, for:, severity, expr).

    >>> markdown_table().splitlines()[0]
    '| alert | for: | severity | expression | runbook |'
    """
    rows = ["| alert | for: | severity | expression | runbook |", "|---|---|---|---|---|"]
    for alert in ALERTS:
        rule = scaled(alert)
        expr = rule["expr"].replace("|", "\\|")
        rows.append(
            f"| `{alert.name}` | {rule['for']} | {alert.severity} | `{expr}` | {alert.runbook} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``write DIR`` | ``rules`` | ``prometheusrule`` | ``dashboard`` | ``table``."""
    parser = argparse.ArgumentParser(prog="python -m hangproof.alerting")
    parser.add_argument("what", choices=("write", "rules", "prometheusrule", "dashboard", "table"))
    parser.add_argument("directory", nargs="?", default="deploy")
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.time_scale <= 0:
        print("--time-scale must be > 0", file=sys.stderr)
        return 2
    files = rendered_files(args.time_scale)
    if args.what == "table":
        sys.stdout.write(markdown_table())
        return 0
    if args.what == "write":
        if args.time_scale != 1.0:
            print("write renders the shipped files: --time-scale must be 1", file=sys.stderr)
            return 2
        for rel, text in files.items():
            path = Path(args.directory) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path, file=sys.stderr)
        return 0
    key = {"rules": RULES_PATH, "prometheusrule": PROMETHEUS_RULE_PATH}.get(
        args.what, DASHBOARD_PATH
    )
    sys.stdout.write(files[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
