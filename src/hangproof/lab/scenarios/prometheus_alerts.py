"""prometheus-alerts: a real Prometheus evaluates the shipped rules while the lab injects faults.

On the faults' two-namespace testbed (:mod:`hangproof.lab.beds.testbed`, own
prefix ``hpalrt-``), inside the clients' namespace:

- a guarded Celery worker (:mod:`hangproof.lab.clients.celery_app`, ``harden(app,
  liveness_port=9808)``, threads pool, ``stall_timeout`` 6 s);
- ``hangproof doctor --watch 2 --metrics-port 9809`` on that namespace;
- ``/usr/bin/prometheus`` (Debian's), on 127.0.0.1:9090 of that namespace, its data
  in the lab state directory, scraping both every second and evaluating the rules
  (:func:`hangproof.alerting.render_rules`) every second.

Every process is started by pid under ``timeout`` (a hard bound even if this
process dies) and stopped by pid in ``finally``. Then, in order:

1. **hazard** (held the whole run): kube-proxy 1.9's NodePort rules, its port holder
   and a /32 floating address on the client node -> ``HangproofNodePortVipRaceHazard``;
   healed by removing the address (the VIP moved away).
2. **broker-freeze** (SIGSTOP of beam.smp), plus a stock ``celery inspect ping``
   with no connect timeout started during it (the report's waiter) ->
   ``HangproofStallDetected``, ``HangproofHandshakeUnanswered``,
   ``HangproofWorkerUnhealthy``, ``HangproofWorkerNotReady``; held until all four fire.
3. **memory-alarm** while a task of the worker publishes -> ``HangproofBrokerBlocked``.
4. **storm** (last; the reconnects of earlier phases would otherwise still be in its
   window and fire it a second time): ``rabbitmqctl close_all_connections`` 7 times ->
   ``HangproofReconnectStorm``.

Alerts are read only through Prometheus' HTTP API (``/api/v1/alerts``), polled
every second. Per alert the JSON gives fault -> pending, fault -> firing and heal
-> resolved, the bound it was held to (its ``for:`` plus the time the signal
needs: detection, recover_timeout, doctor's min-silence, the storm's own length)
and whether it met it.

``time_scale`` (``--time-scale``) multiplies every ``for:`` and window (the
documented lab override of :mod:`hangproof.alerting`); 1 runs the shipped rules
as they are; since the storm runs last it needs ``--max-seconds 1400``
(:func:`planned_seconds`; the storm's 10-minute window comes after every other phase).

``--faults vip-race`` runs :func:`run_vip_race` instead: the report's own
wedge on the seed lab, for doctor's ``HangproofHandshakeUnanswered``.

    hangproof lab run prometheus-alerts --time-scale 0.1 --json
    hangproof lab run prometheus-alerts --faults vip-race --json
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hangproof import alerting
from hangproof.errors import HangproofError
from hangproof.lab.beds.testbed import BROKER_IP, CLIENT_IFACE, FaultBed
from hangproof.lab.components.kube_proxy import nat_rules, port_holder_argv
from hangproof.lab.engine import processes
from hangproof.lab.engine.state import state_root
from hangproof.lab.faults import make_fault

if TYPE_CHECKING:
    from collections.abc import Callable

    from hangproof.lab.engine.lab import Lab
    from hangproof.lab.scenarios import RunOptions

NAME = "prometheus-alerts"
NEEDS_LAB = False
HELP = "a real Prometheus with the shipped rules: each alert fires during its fault, resolves after"

PREFIX = "hpalrt-"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
WORKER_PORT = 9808
DOCTOR_PORT = 9809
PROMETHEUS_PORT = 9090
#: Scrape and evaluate every second: the alert delays we measure are then the
#: rules' own, plus at most ~2 s.
INTERVAL = 1
#: The worker's guard budget (heartbeat 3 s, recover_timeout 24 s).
STALL_TIMEOUT = 6.0
DOCTOR_WATCH = 2.0
DOCTOR_MIN_SILENCE = 5.0
VIP = "198.18.200.100"
NODE_PORT = 32672
STORM_CLOSES = 7
#: Alerts on an event count (increase over a window): they resolve their window
#: after the last event, which for a stall is the detection itself (it fired
#: then), not the heal; the broker-freeze may well outlast the window.
RESOLVE_FROM_FIRING = frozenset({"HangproofStallDetected"})
#: Scrape + evaluation + poll + the 2-core box's hiccups, on top of every bound.
SLACK = 10.0
QUEUE = "alerts"


@dataclass
class AlertResult:
    """One alert's life in the run (times in seconds from its phase's fault / heal)."""

    alert: str
    phase: str
    for_s: float
    bound_s: float
    fault_to_pending_s: float | None = None
    fault_to_firing_s: float | None = None
    heal_to_resolved_s: float | None = None
    #: For event alerts (RESOLVE_FROM_FIRING): firing -> resolved, held to the window.
    firing_to_resolved_s: float | None = None
    resolve_bound_s: float = 0.0
    fired_within_bound: bool = False
    resolved: bool = False
    notes: list[str] = field(default_factory=list)


class AlertWatch:
    """Polls ``/api/v1/alerts`` every second from a thread; keeps each alert's episodes."""

    def __init__(self, netns: str, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/api/v1/alerts"
        self.netns = netns
        self.episodes: dict[str, list[dict[str, float | None]]] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        for _ in range(100_000):  # ~1 s each; the scenario's max_seconds ends it first
            if self._stop.wait(1.0):
                return
            try:
                alerts = prom_get(self.netns, self.url)["data"]["alerts"]
            except Exception:
                self.errors += 1
                continue
            self.record(alerts, time.time())

    def record(self, alerts: list[dict[str, Any]], now: float) -> None:
        """Fold one /api/v1/alerts answer into the episodes (open, pending/firing, resolved)."""
        active: dict[str, tuple[str, float]] = {}
        for a in alerts:
            name = a["labels"]["alertname"]
            at = _parse_time(a.get("activeAt")) or now
            # Several series of one alert: the most advanced state, the earliest start.
            state = a["state"]
            if name in active and (active[name][0] == "firing" or state != "firing"):
                at = min(at, active[name][1])
                state = active[name][0] if active[name][0] == "firing" else state
            active[name] = (state, at)
        for name, (state, at) in active.items():
            eps = self.episodes.setdefault(name, [])
            if not eps or eps[-1]["resolved_at"] is not None:
                eps.append({"pending_at": at, "firing_at": None, "resolved_at": None})
            if state == "firing" and eps[-1]["firing_at"] is None:
                eps[-1]["firing_at"] = now
        for name, eps in self.episodes.items():
            if name not in active and eps and eps[-1]["resolved_at"] is None:
                eps[-1]["resolved_at"] = now

    def firing_since(self, name: str, since: float) -> dict[str, float | None] | None:
        """The first episode of ``name`` that fired at or after ``since``."""
        for ep in self.episodes.get(name, []):
            if ep["firing_at"] is not None and ep["firing_at"] >= since:
                return ep
        return None


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    with contextlib.suppress(ValueError):
        # Prometheus writes RFC 3339 with nanoseconds; fromisoformat takes microseconds.
        head, _, frac = text.rstrip("Z").partition(".")
        frac = (frac + "000000")[:6]
        return datetime.fromisoformat(f"{head}.{frac}+00:00").timestamp()
    return None


def prom_get(netns: str, url: str) -> dict[str, Any]:
    """GET a Prometheus API URL inside ``netns`` (curl, 2 s bound); the parsed JSON."""
    done = processes.run(["curl", "-sS", "--max-time", "2", url], netns=netns, timeout=5)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _wait(predicate: Any, bound: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + bound
    for _ in range(int(bound / step) + 2):
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return bool(predicate())


def prometheus_config(rules: Path, *, guard: bool = True) -> str:
    """prometheus.yml: the hangproof targets every second (doctor; the guard unless
    ``guard`` is False), our rules."""
    text = (
        f"global:\n  scrape_interval: {INTERVAL}s\n  scrape_timeout: {INTERVAL}s\n"
        f"  evaluation_interval: {INTERVAL}s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n"
        f"  - job_name: hangproof-doctor\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{DOCTOR_PORT}']\n"
    )
    if guard:
        text += (
            f"  - job_name: hangproof-guard\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{WORKER_PORT}']\n"
        )
    return text


def _start_doctor_and_prometheus(
    ns: str, work: Path, bounded: Callable[[list[str]], list[str]]
) -> dict[str, subprocess.Popen[bytes]]:
    """Start ``hangproof doctor --watch`` and Prometheus in ``ns``, by pid, each bounded.

    Prometheus reads ``work/prometheus.yml`` and keeps its data under ``work``.
    """
    doctor = processes.spawn(
        bounded([*_hangproof_argv(), "doctor", "--watch", str(DOCTOR_WATCH),
                 "--metrics-port", str(DOCTOR_PORT), "--min-silence", str(DOCTOR_MIN_SILENCE),
                 "--no-stacks"]),
        netns=ns, log=work / "doctor.log",
    )  # fmt: skip
    prometheus = processes.spawn(
        bounded([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                 f"--storage.tsdb.path={work / 'prometheus-data'}",
                 f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                 "--storage.tsdb.retention.time=2h", "--log.level=warn"]),
        netns=ns, log=work / "prometheus.log",
    )  # fmt: skip
    return {"doctor": doctor, "prometheus": prometheus}


def bounds(time_scale: float) -> dict[str, tuple[str, float, float]]:
    """alert -> (phase, fault->firing bound, heal->resolved bound), in seconds.

    Each firing bound is the rule's ``for:`` plus what the signal needs before
    the expression turns true; each resolve bound what it needs to turn false.
    """
    policy_recover = 4 * STALL_TIMEOUT  # Policy.recover_timeout
    for_s = {a.name: a.for_seconds * time_scale for a in alerting.ALERTS}
    window = {a.name: (a.window_seconds or 0) * time_scale for a in alerting.ALERTS}
    storm_len = STORM_CLOSES * 4.0
    reconnect = STALL_TIMEOUT + 5.0  # back within stall_timeout + one backoff step
    doctor = DOCTOR_MIN_SILENCE + 2 * DOCTOR_WATCH + 2.0  # the waiter starts 2 s in
    return {
        "HangproofNodePortVipRaceHazard": ("hazard", for_s["HangproofNodePortVipRaceHazard"]
                                           + DOCTOR_WATCH, DOCTOR_WATCH),
        "HangproofReconnectStorm": ("storm", storm_len, window["HangproofReconnectStorm"]),
        # An event alert: it resolves its window after the stall, fault or not.
        "HangproofStallDetected": ("broker-freeze", STALL_TIMEOUT,
                                   window["HangproofStallDetected"]),
        "HangproofHandshakeUnanswered": ("broker-freeze",
                                         for_s["HangproofHandshakeUnanswered"] + doctor,
                                         DOCTOR_WATCH + 3.0),
        "HangproofWorkerUnhealthy": ("broker-freeze", STALL_TIMEOUT + policy_recover
                                     + for_s["HangproofWorkerUnhealthy"], reconnect),
        "HangproofWorkerNotReady": ("broker-freeze", STALL_TIMEOUT
                                    + for_s["HangproofWorkerNotReady"], reconnect),
        "HangproofBrokerBlocked": ("memory-alarm", 2.0 + for_s["HangproofBrokerBlocked"], 3.0),
    }  # fmt: skip


def planned_seconds(time_scale: float) -> float:
    """A generous estimate of the run's length (setup, phases, the slowest resolve)."""
    b = bounds(time_scale)
    freeze = max(b[n][1] for n in b if b[n][0] == "broker-freeze")
    alarm = b["HangproofBrokerBlocked"][1] + 4 * SLACK
    storm = 4 * STORM_CLOSES + b["HangproofReconnectStorm"][1] + SLACK
    phases = 90 + freeze + alarm + storm  # setup, then the phases in run order (storm last)
    hazard = 90 + b["HangproofNodePortVipRaceHazard"][1]
    storm_resolved = phases + b["HangproofReconnectStorm"][2]  # its window after the last phase
    return max(hazard, storm_resolved) + 60 + 4 * SLACK


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("hangproof", "celery", "kombu", "amqp", "prometheus_client"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def _hangproof_argv() -> list[str]:
    script = Path(sys.executable).with_name("hangproof")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hangproof.cli"]


def run(lab: Lab | None, options: RunOptions) -> dict[str, Any]:
    """Scenario entry point; ``options.extra["time_scale"]`` (default 1), ``max_seconds``."""
    given = options.extra.get("time_scale")
    time_scale = 1.0 if given is None else float(given)
    progress = options.extra.get("progress_line") or (lambda msg: print(msg, file=sys.stderr))
    faults = options.extra.get("faults") or "testbed"
    if faults == "vip-race":
        return run_vip_race(time_scale, options.max_seconds, progress=progress)
    if faults != "testbed":
        raise HangproofError(
            f"prometheus-alerts --faults {faults!r}: choose testbed (the default: hazard, storm, "
            "broker-freeze, memory-alarm) or vip-race (the seed lab's race, doctor's alert)"
        )
    return run_alerts(time_scale, options.max_seconds, progress=progress)


def run_alerts(
    time_scale: float, max_seconds: float, *, progress: Any = None, prefix: str = PREFIX
) -> dict[str, Any]:
    """Run the whole scenario; everything it starts is stopped (by pid) before it returns."""
    say = progress or (lambda msg: None)
    if time_scale <= 0:
        raise HangproofError("--time-scale must be > 0")
    needed = planned_seconds(time_scale)
    if needed > max_seconds:
        raise HangproofError(
            f"prometheus-alerts at --time-scale {time_scale:g} needs up to {needed:.0f} s; "
            f"pass --max-seconds {needed:.0f} (or a smaller --time-scale)"
        )
    for tool in (PROMETHEUS, PROMTOOL):
        if not os.path.exists(tool):
            raise HangproofError(f"{tool} missing: apt-get install prometheus (scripts/setup.sh)")
    if shutil.which("curl") is None:
        raise HangproofError("curl missing: apt-get install curl")
    started = time.monotonic()
    hard_deadline = started + max_seconds
    work = state_root() / f"{prefix}run-{time.strftime('%Y%m%dT%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    rules = work / "hangproof-alerts.yml"
    rules.write_text(alerting.render_rules(time_scale))
    shipped = Path(__file__).resolve().parents[4] / "deploy" / alerting.RULES_PATH
    check = processes.run([PROMTOOL, "check", "rules", str(rules)], timeout=30, check=False)
    if check.returncode != 0:
        raise HangproofError(f"promtool check rules failed: {check.stdout}{check.stderr}"[:400])
    (work / "prometheus.yml").write_text(prometheus_config(rules))
    report: dict[str, Any] = {
        "scenario": NAME,
        "time_scale": time_scale,
        "rules": str(rules),
        "rules_are_the_shipped_file": shipped.exists() and shipped.read_text() == rules.read_text(),
        "override": None
        if time_scale == 1.0
        else f"every for: and window x {time_scale:g} (hangproof.alerting --time-scale)",
        "scrape_interval_s": INTERVAL,
        "evaluation_interval_s": INTERVAL,
        "stall_timeout": STALL_TIMEOUT,
        "doctor": {"watch_s": DOCTOR_WATCH, "min_silence_s": DOCTOR_MIN_SILENCE},
        "prometheus_version": (
            processes.run([PROMETHEUS, "--version"], check=False, timeout=10).stdout
            + processes.run([PROMETHEUS, "--version"], check=False, timeout=10).stderr
        )
        .strip()
        .splitlines()[:1],
        "versions": _versions(),
        "work": str(work),
    }
    bed = FaultBed(work / "bed", prefix)
    ns = bed.client_netns
    procs: dict[str, subprocess.Popen[bytes]] = {}
    watch: AlertWatch | None = None
    freeze = alarm = None
    phase_at: dict[str, dict[str, float]] = {}
    life = max(60, int(max_seconds))

    def bounded(argv: list[str]) -> list[str]:
        # The hard bound even if this process is killed before its finally runs.
        return ["timeout", "-k", "5", str(life), *argv]

    def remaining() -> float:
        return max(0.0, hard_deadline - time.monotonic())

    try:
        say("building the testbed (broker + client namespaces)")
        bed.up()
        env = {
            "HANGPROOF_BROKER_URL": bed.client_url,
            "HANGPROOF_GUARD": "1",
            "HANGPROOF_STALL_TIMEOUT": str(STALL_TIMEOUT),
            "HANGPROOF_LIVENESS_PORT": str(WORKER_PORT),
            "HANGPROOF_PREFETCH": "1",
        }
        worker_log = work / "worker.log"
        procs["worker"] = processes.spawn(
            bounded([sys.executable, "-m", "celery", "-A", "hangproof.lab.clients.celery_app", "worker",
                     "-P", "threads", "-c", "2", "-Q", QUEUE, "-n", "alerts@%h",
                     "--loglevel=INFO", "--without-mingle", "--without-gossip"]),
            netns=ns, env=env, log=worker_log,
        )  # fmt: skip
        procs.update(_start_doctor_and_prometheus(ns, work, bounded))
        report["pids"] = {k: p.pid for k, p in procs.items()}
        base = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1"

        def targets_up() -> bool:
            with contextlib.suppress(Exception):
                data = prom_get(ns, f"{base}/query?query=up")["data"]["result"]
                return len(data) == 2 and all(r["value"][1] == "1" for r in data)
            return False

        def worker_ready() -> bool:
            with contextlib.suppress(Exception):
                q = prom_get(ns, f"{base}/query?query=hangproof_ready")["data"]["result"]
                return bool(q) and q[0]["value"][1] == "1"
            return False

        say("waiting for the worker, doctor and Prometheus (both targets up, worker ready)")
        if not _wait(lambda: targets_up() and worker_ready(), min(120.0, remaining())):
            raise HangproofError(f"targets not up / worker not ready within 120 s; see {work}")
        watch = AlertWatch(ns, PROMETHEUS_PORT)
        watch.start()
        time.sleep(3 * INTERVAL)
        b = bounds(time_scale)

        def wait_firing(names: list[str], since: float, bound: float) -> bool:
            assert watch is not None
            return _wait(
                lambda: all(watch.firing_since(n, since) for n in names), min(bound, remaining())
            )

        # 1. hazard: kube-proxy 1.9 NodePort rules + port holder + a floating /32 (held).
        say("hazard: kube-proxy NodePort rules, port holder and a floating address on the node")
        processes.run(
            ["iptables-restore"], netns=ns,
            input=nat_rules("default/rabbitmq:amqp", NODE_PORT, [(BROKER_IP, 5672)]),
        )  # fmt: skip
        procs["port-holder"] = processes.spawn(bounded(port_holder_argv(NODE_PORT)), netns=ns)
        processes.run(["ip", "addr", "add", f"{VIP}/32", "dev", CLIENT_IFACE], netns=ns)
        phase_at["hazard"] = {"fault": time.time()}

        # 2. broker-freeze, and the report's waiter wedged in its handshake during it.
        freeze_alerts = [n for n, v in b.items() if v[0] == "broker-freeze"]
        say("broker-freeze: SIGSTOP beam.smp; a stock `celery inspect ping` waits on it")
        freeze = make_fault("broker-freeze", bed.target)
        phase_at["broker-freeze"] = {"fault": time.time()}
        freeze.inject()
        time.sleep(2.0)
        procs["waiter"] = processes.spawn(
            bounded([sys.executable, "-m", "celery", "-A", "hangproof.lab.clients.celery_app",
                     "inspect", "ping", "--timeout", "1"]),
            netns=ns, env={"HANGPROOF_BROKER_URL": bed.client_url,
                           "HANGPROOF_CONNECTION_TIMEOUT": "none"},
            log=work / "waiter.log",
        )  # fmt: skip
        longest = max(b[n][1] for n in freeze_alerts) + SLACK
        wait_firing(freeze_alerts, phase_at["broker-freeze"]["fault"], longest)
        freeze.heal()
        phase_at["broker-freeze"]["heal"] = time.time()
        say("broker-freeze healed (SIGCONT); waiting for the worker to be ready again")
        _wait(worker_ready, min(60.0, remaining()))

        # 3. memory alarm while a task of the worker publishes once a second.
        say("memory-alarm: a worker task publishes while the broker blocks publishers")
        hold = b["HangproofBrokerBlocked"][1] + SLACK
        processes.run(
            [sys.executable, "-c",
             "from hangproof.lab.clients.celery_app import app\n"
             f"app.send_task('hangproof.publish_for', args=('alerts-sink', {hold + 40:.0f}), "
             f"queue={QUEUE!r})\n"],
            netns=bed.broker_netns, env={"HANGPROOF_BROKER_URL": bed.producer_url}, timeout=30,
        )  # fmt: skip
        time.sleep(3.0)
        alarm = make_fault("memory-alarm", bed.target)
        phase_at["memory-alarm"] = {"fault": time.time()}
        alarm.inject()
        wait_firing(["HangproofBrokerBlocked"], phase_at["memory-alarm"]["fault"], hold)
        alarm.heal()
        phase_at["memory-alarm"]["heal"] = time.time()

        # The hazard is healed once its alert fired (the VIP leaves this node).
        wait_firing(["HangproofNodePortVipRaceHazard"], phase_at["hazard"]["fault"],
                    b["HangproofNodePortVipRaceHazard"][1] + SLACK)  # fmt: skip
        processes.run(["ip", "addr", "del", f"{VIP}/32", "dev", CLIENT_IFACE], netns=ns)
        phase_at["hazard"]["heal"] = time.time()

        # 4. storm, last: the broker closes the worker's connections again and again.
        # Last, because every reconnect a later phase causes (the freeze costs one or
        # two) would still be inside the storm's window and make it fire a second time:
        # a true alarm, but not the one the phase is about.
        say(f"storm: rabbitmqctl close_all_connections x {STORM_CLOSES}")
        phase_at["storm"] = {"fault": time.time()}
        for i in range(STORM_CLOSES):
            with contextlib.suppress(Exception):
                bed.node.ctl("close_all_connections", f"hangproof alert lab {i}", timeout=20)
            time.sleep(2.5)
        phase_at["storm"]["heal"] = time.time()
        wait_firing(["HangproofReconnectStorm"], phase_at["storm"]["fault"],
                    b["HangproofReconnectStorm"][1] + SLACK)  # fmt: skip

        say("waiting for every alert to resolve")

        def all_resolved() -> bool:
            assert watch is not None
            for n, v in b.items():
                ep = watch.firing_since(n, phase_at[v[0]]["fault"])
                if ep is not None and ep["resolved_at"] is None:
                    return False
            return True

        last_heal = max(p.get("heal", 0.0) for p in phase_at.values())
        resolve_by = max(phase_at[v[0]].get("heal", last_heal) + v[2] for v in b.values())
        resolve_by = max(resolve_by, phase_at["broker-freeze"]["fault"] + 2 * STALL_TIMEOUT
                         + b["HangproofStallDetected"][2])  # fmt: skip
        _wait(all_resolved, min(max(0.0, resolve_by - time.time()) + 2 * SLACK, remaining()))
        report["results"] = [asdict(r) for r in _results(watch, b, phase_at, time_scale)]
        report["phases"] = phase_at
        report["poll_errors"] = watch.errors
        report["unexpected_firing"] = _unexpected(watch, b, phase_at)
        report["waiter_exited"] = procs["waiter"].poll() is not None
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        ok = all(r["fired_within_bound"] and r["resolved"] for r in report["results"])
        report["outcome"] = "passed" if ok else "failed"
        return report
    finally:
        if watch is not None:
            watch.stop()
        for fault in (alarm, freeze):
            if fault is not None:
                with contextlib.suppress(Exception):
                    fault.heal()
        for proc in procs.values():
            processes.stop_pid(proc.pid, grace=5)
        bed.close()
        (work / "report.json").write_text(json.dumps(report, indent=2, default=str))


#: The seed-lab variant's own lab name (namespaces hpalv-*).
SEED_LAB_NAME = "hpalv"
SEED_WAIT_READY = 120.0


def run_vip_race(
    time_scale: float, max_seconds: float, *, progress: Any = None, name: str = SEED_LAB_NAME
) -> dict[str, Any]:
    """The report's own wedge -> ``HangproofHandshakeUnanswered``, on the seed lab.

    The seed lab (3 nodes, kube-proxy 1.9 rules and port holders, VIP on n2,
    broker in n1's pod); in n1's namespace a seed-like stock Celery worker
    (``broker_connection_timeout=None``) dialling VIP:32672, doctor and
    Prometheus. The vip-race fault lands the VIP on n1 while the worker's
    reconnect SYN is in flight: the retransmitted SYN reaches the port holder
    and the worker waits for Connection.Start forever. Nothing heals that by
    itself, so the heal is the runbook's: the wedged worker is stopped (by pid).
    Fault time is the end of ``inject()`` (the VIP landing), as in the fault matrix.
    """
    from hangproof.lab.beds.seed_bed import SeedBed
    from hangproof.lab.faults import close_fault, prepare_fault

    say = progress or (lambda msg: None)
    if time_scale <= 0:
        raise HangproofError("--time-scale must be > 0")
    alert_name = "HangproofHandshakeUnanswered"
    for_s = next(a.for_seconds for a in alerting.ALERTS if a.name == alert_name) * time_scale
    bound = for_s + DOCTOR_MIN_SILENCE + 2 * DOCTOR_WATCH
    needed = SEED_WAIT_READY + 90 + bound + 4 * SLACK
    if needed > max_seconds:
        raise HangproofError(
            f"prometheus-alerts --faults vip-race at --time-scale {time_scale:g} needs up to "
            f"{needed:.0f} s; pass --max-seconds {needed:.0f}"
        )
    for tool in (PROMETHEUS, PROMTOOL):
        if not os.path.exists(tool):
            raise HangproofError(f"{tool} missing: apt-get install prometheus (scripts/setup.sh)")
    started = time.monotonic()
    hard_deadline = started + max_seconds
    work = state_root() / f"{PREFIX}vip-race-{time.strftime('%Y%m%dT%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    rules = work / "hangproof-alerts.yml"
    rules.write_text(alerting.render_rules(time_scale))
    (work / "prometheus.yml").write_text(prometheus_config(rules, guard=False))
    report: dict[str, Any] = {
        "scenario": NAME,
        "faults": "vip-race",
        "time_scale": time_scale,
        "override": None
        if time_scale == 1.0
        else f"every for: and window x {time_scale:g} (hangproof.alerting --time-scale)",
        "scrape_interval_s": INTERVAL,
        "evaluation_interval_s": INTERVAL,
        "doctor": {"watch_s": DOCTOR_WATCH, "min_silence_s": DOCTOR_MIN_SILENCE},
        "versions": _versions(),
        "work": str(work),
    }
    life = max(60, int(max_seconds))
    bed = SeedBed(name, progress=lambda msg: say(f"seed lab: {msg}"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    watch: AlertWatch | None = None
    fault = None

    def bounded(argv: list[str]) -> list[str]:
        return ["timeout", "-k", "5", str(life), *argv]

    def remaining() -> float:
        return max(0.0, hard_deadline - time.monotonic())

    try:
        say("building the seed lab (3 nodes, kube-proxy rules, port holders, broker in n1's pod)")
        bed.up()
        ns = bed.client_netns
        fault = make_fault("vip-race", bed.target)
        prepare_fault(fault)  # the VIP on n2: the worker connects through n2's DNAT
        worker_log = work / "worker.log"
        procs["worker"] = processes.spawn(
            bounded([sys.executable, "-m", "celery", "-A", "hangproof.lab.clients.celery_app", "worker",
                     "-P", "prefork", "-c", "2", "-Q", QUEUE, "-n", "seed@%h", "--loglevel=INFO",
                     "--without-mingle", "--without-gossip"]),
            netns=ns, log=worker_log,
            env={"HANGPROOF_BROKER_URL": bed.client_url, "HANGPROOF_GUARD": "0",
                 "HANGPROOF_CONNECTION_TIMEOUT": "none"},
        )  # fmt: skip
        procs.update(_start_doctor_and_prometheus(ns, work, bounded))
        report["pids"] = {k: p.pid for k, p in procs.items()}
        base = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1"

        def ready() -> bool:
            if " ready." not in (worker_log.read_text() if worker_log.exists() else ""):
                return False
            with contextlib.suppress(Exception):
                data = prom_get(ns, f"{base}/query?query=up")["data"]["result"]
                return len(data) == 1 and data[0]["value"][1] == "1"
            return False

        say("waiting for the stock worker, doctor and Prometheus")
        if not _wait(ready, min(SEED_WAIT_READY, remaining())):
            raise HangproofError(f"worker/doctor/Prometheus not ready within 120 s; see {work}")
        watch = AlertWatch(ns, PROMETHEUS_PORT)
        watch.start()
        time.sleep(3 * INTERVAL)
        say("vip-race: the VIP leaves n2, the broker drops the worker, the VIP lands on n1 mid-SYN")
        fault.inject()
        fault_at = time.time()
        report["fault_detail"] = dict(getattr(fault, "detail", {}) or {})
        fired = _wait(
            lambda: watch is not None and watch.firing_since(alert_name, fault_at) is not None,
            min(bound + SLACK, remaining()),
        )
        report["evidence"] = fault.evidence() if fired else {}
        say("healing the runbook's way: the wedged worker is stopped")
        processes.stop_pid(procs.pop("worker").pid, grace=5)
        heal_at = time.time()
        _wait(
            lambda: (
                watch is not None
                and (ep := watch.firing_since(alert_name, fault_at)) is not None
                and ep["resolved_at"] is not None
            ),
            min(DOCTOR_WATCH + 3.0 + 2 * SLACK, remaining()),
        )
        phase_at = {"vip-race": {"fault": fault_at, "heal": heal_at}}
        b = {alert_name: ("vip-race", bound, DOCTOR_WATCH + 3.0)}
        report["results"] = [asdict(r) for r in _results(watch, b, phase_at, time_scale)]
        report["phases"] = phase_at
        hazard = watch.episodes.get("HangproofNodePortVipRaceHazard") or []
        # The VIP now on n1 makes the hazard true here too (pending; its for: is 10m x scale).
        report["hazard_pending_after_fault_s"] = (
            round(float(hazard[0]["pending_at"]) - fault_at, 1)
            if hazard and hazard[0]["pending_at"] is not None
            else None
        )
        report["poll_errors"] = watch.errors
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        ok = all(r["fired_within_bound"] and r["resolved"] for r in report["results"])
        report["outcome"] = "passed" if ok else "failed"
        return report
    finally:
        if watch is not None:
            watch.stop()
        for proc in procs.values():
            processes.stop_pid(proc.pid, grace=5)
        if fault is not None:
            with contextlib.suppress(Exception):
                close_fault(fault)
        bed.close()
        (work / "report.json").write_text(json.dumps(report, indent=2, default=str))


def _results(
    watch: AlertWatch,
    b: dict[str, tuple[str, float, float]],
    phase_at: dict[str, dict[str, float]],
    time_scale: float,
) -> list[AlertResult]:
    out = []
    for_s = {a.name: a.for_seconds * time_scale for a in alerting.ALERTS}
    for name, (phase, bound, resolve_bound) in b.items():
        times = phase_at.get(phase, {})
        r = AlertResult(name, phase, for_s[name], round(bound + SLACK, 1))
        r.resolve_bound_s = round(resolve_bound + SLACK, 1)
        fault, heal = times.get("fault"), times.get("heal")
        ep = watch.firing_since(name, fault) if fault else None
        if ep is None or fault is None:
            r.notes.append("never fired")
            out.append(r)
            continue
        pending, firing, resolved = ep["pending_at"], ep["firing_at"], ep["resolved_at"]
        if pending is not None:
            r.fault_to_pending_s = round(pending - fault, 1)
        if firing is not None:
            r.fault_to_firing_s = round(firing - fault, 1)
            r.fired_within_bound = r.fault_to_firing_s <= r.bound_s
        if pending is not None and pending < fault:
            r.notes.append("pending before the fault (a left-over episode)")
        if resolved is not None and heal is not None:
            r.heal_to_resolved_s = round(resolved - heal, 1)
            r.resolved = r.heal_to_resolved_s <= r.resolve_bound_s
            if name in RESOLVE_FROM_FIRING and firing is not None:
                r.firing_to_resolved_s = round(resolved - firing, 1)
                r.resolved = r.firing_to_resolved_s <= r.resolve_bound_s
            elif resolved < heal:
                r.notes.append("resolved before heal")
                r.resolved = False
        else:
            r.notes.append("not resolved within the run")
        out.append(r)
    return out


def _unexpected(
    watch: AlertWatch,
    b: dict[str, tuple[str, float, float]],
    phase_at: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """Episodes that reached firing outside their own phase's fault (false alarms)."""
    found = []
    for name, eps in watch.episodes.items():
        phase = b.get(name, ("?", 0.0, 0.0))[0]
        fault = phase_at.get(phase, {}).get("fault")
        expected = watch.firing_since(name, fault) if fault else None
        for ep in eps:
            if ep["firing_at"] is not None and ep is not expected:
                found.append({"alert": name, **ep})
    return found


def summary(result: dict[str, Any]) -> str:
    """The human output: one line per alert."""
    head = (
        f"prometheus-alerts: {result['outcome']} (time scale {result['time_scale']:g}"
        + (f"; {result['override']}" if result.get("override") else "; the shipped rules")
        + f"), {result['elapsed_s']} s"
    )
    rows = [head]
    for r in result["results"]:
        rows.append(
            f"  {r['alert']:32} {r['phase']:14} for {r['for_s']:>5.0f}s  pending "
            f"{r['fault_to_pending_s']}s  firing {r['fault_to_firing_s']}s (bound {r['bound_s']}s)"
            + (
                f"  resolved {r['firing_to_resolved_s']}s after firing (event window)"
                if r.get("firing_to_resolved_s") is not None
                else f"  resolved {r['heal_to_resolved_s']}s after heal"
            )
            + (
                ""
                if r["fired_within_bound"] and r["resolved"]
                else "  MISS " + "; ".join(r["notes"])
            )
        )
    if result.get("unexpected_firing"):
        rows.append(f"  unexpected firing: {result['unexpected_firing']}")
    return "\n".join(rows)


def markdown(result: dict[str, Any]) -> str:
    """The measured delays as the markdown table of docs/alerting.md.

    ``python -m hangproof.lab.scenarios.prometheus_alerts docs/alerting-run.json``
    """
    rows = [
        "| alert | fault | for: | fault -> pending | fault -> firing | bound | resolved | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        if r.get("firing_to_resolved_s") is not None:
            resolved = f"{r['firing_to_resolved_s']} s after firing (window)"
        else:
            resolved = f"{r['heal_to_resolved_s']} s after heal"
        met = "yes" if r["fired_within_bound"] and r["resolved"] else "NO: " + "; ".join(r["notes"])
        rows.append(
            f"| `{r['alert']}` | {r['phase']} | {r['for_s']:g} s | {r['fault_to_pending_s']} s "
            f"| {r['fault_to_firing_s']} s | {r['bound_s']} s | {resolved} | {met} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.stdout.write(markdown(json.load(f)))
