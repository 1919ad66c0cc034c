"""fault-matrix: every lab fault x client profile, measured on a real RabbitMQ.

For each cell (fault, profile), on the bed the fault needs: the faults'
two-namespace testbed (:mod:`hangproof.lab.faults.testbed`) or, for the VIP
faults, the seed lab itself (:mod:`hangproof.lab.faults.seed_bed`: clients on
n1 dial VIP:32672, the broker is in n1's pod):

1. a consumer of the profile starts in the client namespace, consuming a
   queue of its own; executions go to a ledger file. Celery profiles run a
   worker; kombu and aio-pika profiles run the small consumers of
   :mod:`hangproof.lab.matrix_clients`, which record in the same ledger;
2. a producer in the broker's namespace (so link and VIP faults do not touch
   it) publishes ``hangproof.record`` at a steady rate with publisher
   confirms: "published" means the broker confirmed it;
3. the fault is injected, held ``hold`` seconds, then healed; meanwhile one
   publish from the client namespace with the profile's own settings shows
   what a web request would see (``publish_during_fault``);
4. after heal a probe task is published; ``resume_s`` is heal -> probe
   executed, ``HANG`` if not within ``hang_bound`` (default 300 s, the
   issue's 5 minutes), or ``EXIT`` if the worker process died (it resumes
   only if a supervisor restarts it);
5. the producer stops, the queue drains (bounded), and the ledger gives
   executed / stranded (published, not executed, still in the queue: a
   restarted worker would run them) / lost (published, not executed, not in
   the queue) / duplicated (executed more than once).

``detect_s`` is inject -> the worker's first log line that shows it noticed
(the guard's ``disconnected``/``connection-error`` events, or Celery's own
``Connection to broker lost`` etc.); ``None`` when it never noticed.

The VIP faults have nothing to heal (the VIP stays where it moved), so they
are held 0 s and ``resume_s`` counts from the end of ``inject()``. For
vip-race that is the moment the VIP lands on the clients' node mid-SYN, and
``detect_s`` also counts from there: the broker closing the old connections
is the set-up, the wedged reconnect is the fault.

Stock cells are measured like the others, never assumed.

``--tls`` runs every cell over TLS: the brokers get a TLS listener
(certificates made at run time, :mod:`hangproof.lab.tls`), every client of
every profile dials ``amqps://`` verified against the lab CA, the link faults
act on the TLS port, and on the seed lab the NodePort forwards to the pods'
TLS listener (so the port holder is a TLS port that never answers).

    >>> report = run_matrix(["blackhole"], ["celery-prefork"], Path("/tmp/fm"))  # doctest: +SKIP
    >>> print(format_table(report))  # doctest: +SKIP

Run it directly (root)::

    python -m hangproof.lab.scenarios.fault_matrix run --faults blackhole,broker-freeze --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hangproof.errors import HangproofError
from hangproof.lab import processes
from hangproof.lab.faults import (
    FAULTS,
    SEED_LAB,
    TESTBED_ROUTER,
    CellContext,
    FaultTarget,
    attach_fault,
    close_fault,
    configure_fault,
    fault_bed,
    make_fault,
    prepare_fault,
)
from hangproof.lab.faults.seed_bed import PREFIX as SEED_LAB_PREFIX
from hangproof.lab.faults.seed_bed import SeedBed
from hangproof.lab.faults.testbed import PREFIX, FaultBed
from hangproof.lab.timeline import CellRecorder, write_matrix_report, write_report

if TYPE_CHECKING:
    from hangproof.lab.lab import Lab
    from hangproof.lab.scenarios import RunOptions

NAME = "fault-matrix"
MODULE = "hangproof.lab.scenarios.fault_matrix"
CLIENTS_MODULE = "hangproof.lab.matrix_clients"
#: fault-matrix builds its own beds; `lab run` must not bring up the shared lab.
NEEDS_LAB = False
HELP = "every lab fault x client profile: detect, resume (or HANG), published/executed/lost/dup"

#: The issue's bound: a cell that has not resumed 5 minutes after heal is a HANG.
DEFAULT_HANG_BOUND = 300.0
#: The guard's stall_timeout in the matrix (the Policy default).
DEFAULT_STALL_TIMEOUT = 15.0
#: How long each fault is held before heal; heal-after-half-open stays under
#: RabbitMQ's 60 s heartbeat so the broker still holds the old connection.
DEFAULT_HOLD = {
    "blackhole": 40.0,
    "broker-freeze": 40.0,
    "broker-kill": 2.0,
    "heal-after-half-open": 25.0,
    "memory-alarm": 20.0,
    "heartbeat-only-handshake": 30.0,
    # Nothing to heal: resume counts from the end of inject().
    "vip-race": 0.0,
    "vip-failover": 0.0,
    # The open flows stay dead (heal brings nothing back): resume counts from
    # the end of inject(), i.e. fault -> first new task executed.
    "silent-flow-loss": 0.0,
    "one-way-loss-in": 20.0,
    "one-way-loss-out": 20.0,
    "flow-state-expiry": 20.0,
    "flow-state-rst": 20.0,
}
#: Faults whose detection counts from the end of inject() (see the module doc).
DETECT_FROM_END_OF_INJECT = frozenset({"vip-race"})
PRODUCER_RATE = 2.0  # tasks per second; enough to see loss, light on 2 cores
DRAIN_SECONDS = 30.0
WORKER_READY_SECONDS = 90.0
PUBLISH_PROBE_BOUND = 60.0


@dataclass(frozen=True)
class Profile:
    """A client profile: which client, stock or guarded.

    ``kind`` is ``celery``, ``kombu`` or ``aio-pika``; ``pool`` the Celery
    pool; ``no_connect_timeout`` gives Celery ``broker_connection_timeout=None``
    (the seed's Celery 3.1, and what Celery forces under gevent).
    """

    kind: str
    guarded: bool
    pool: str = ""
    no_connect_timeout: bool = False


PROFILES: dict[str, Profile] = {
    "celery-prefork": Profile("celery", False, "prefork"),
    "celery-prefork+harden": Profile("celery", True, "prefork"),
    "celery-prefork-seed": Profile("celery", False, "prefork", no_connect_timeout=True),
    "celery-gevent": Profile("celery", False, "gevent"),
    "celery-gevent+harden": Profile("celery", True, "gevent"),
    "kombu": Profile("kombu", False),
    "kombu+guard": Profile("kombu", True),
    "aio-pika": Profile("aio-pika", False),
    "aio-pika+guard": Profile("aio-pika", True),
}
#: What `run` measures when no --profiles are given.
DEFAULT_PROFILES = [p for p in PROFILES if p != "celery-prefork-seed"]


class Bed(Protocol):
    """Where cells run: :class:`FaultBed` or :class:`SeedBed`."""

    @property
    def node(self) -> Any: ...
    @property
    def client_netns(self) -> str: ...
    @property
    def broker_netns(self) -> str: ...
    @property
    def client_url(self) -> str: ...
    @property
    def producer_url(self) -> str: ...
    @property
    def target(self) -> FaultTarget: ...
    def healthy(self) -> bool: ...
    def close(self) -> None: ...


#: Worker log lines that show the client noticed the fault.
DETECTION = re.compile(
    r"hangproof\.guard: (disconnected|connection-error|unhealthy|handshake-deadline)"
    r"|Connection to broker lost|Cannot connect to|Unrecoverable error"
    r"|ConnectionResetError|Connection reset|consumer: Connection"
    r"|hangproof\.guard: stall-detected|Reconnecting after"
)
LOG_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):")


@dataclass
class Cell:
    """One measured cell of the matrix."""

    fault: str
    profile: str
    detect_s: float | None = None
    detected_by: str | None = None
    resume_s: float | str | None = None
    published: int = 0
    executed: int = 0
    lost: int = 0
    duplicated: int = 0
    stranded: int = 0
    left_in_queue: int | None = None
    worker_alive: bool = True
    publish_during_fault: str = ""
    hold_s: float = 0.0
    fault_detail: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: The cell's timeline (HTML, PNG, event log), when a report was asked for.
    timeline: dict[str, str] | None = None


def _log_events(log: Path, since: float) -> list[tuple[float, str]]:
    found = []
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        m = LOG_STAMP.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= since and DETECTION.search(line):
            found.append((at, line[m.end() :].strip()[:160]))
    return found


def _ledger_keys(ledger: Path) -> list[str]:
    if not ledger.exists():
        return []
    return [line.split()[0] for line in ledger.read_text().splitlines() if line.strip()]


def _wait(predicate: Any, bound: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + bound
    for _ in range(int(bound / step) + 2):
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return bool(predicate())


def _worker_env(
    url: str, profile: Profile, stall: float, ledger: Path, ssl: dict[str, Any] | None = None
) -> dict[str, str]:
    guarded = profile.guarded
    env = {
        "HANGPROOF_BROKER_URL": url,
        "HANGPROOF_BROKER_USE_SSL": json.dumps(ssl) if ssl else "",
        "HANGPROOF_GUARD": "1" if guarded else "0",
        "HANGPROOF_STALL_TIMEOUT": str(stall),
        "HANGPROOF_LEDGER": str(ledger),
        "HANGPROOF_PREFETCH": "1",
    }
    if guarded:
        env["HANGPROOF_LATE_ACKS"] = "1"  # what harden recommends for zero loss
    if profile.no_connect_timeout:
        env["HANGPROOF_CONNECTION_TIMEOUT"] = "none"
    return env


def _tls_args(ssl: dict[str, Any] | None) -> list[str]:
    return ["--cafile", str(ssl["ca_certs"])] if ssl else []


def _consumer_argv(
    profile: Profile,
    url: str,
    queue: str,
    ledger: Path,
    stall: float,
    ssl: dict[str, Any] | None = None,
) -> list[str]:
    """The consumer process of ``profile``: a Celery worker or a matrix client."""
    if profile.kind == "celery":
        argv = [sys.executable, "-m", "celery", "-A", "hangproof.lab.matrix_celery", "worker"]
        argv += ["-P", profile.pool, "-c", "2" if profile.pool == "prefork" else "10"]
        argv += ["-n", f"{queue}@%h", "-Q", queue, "--loglevel=INFO"]
        return [*argv, "--without-mingle", "--without-gossip"]
    argv = [sys.executable, "-m", CLIENTS_MODULE, "consume", profile.kind, url, queue, str(ledger)]
    argv += _tls_args(ssl)
    return argv + ["--stall", str(stall)] + (["--guard"] if profile.guarded else [])


def _publish_once(
    bed: Bed, profile: Profile, queue: str, key: str, env: dict[str, str], stall: float
) -> Any:
    """Start one publish of ``key`` from the clients' namespace with the profile's client.

    The URL is the consumer's (``env["HANGPROOF_BROKER_URL"]``: the bed's, or
    what the fault's ``configure()`` set).
    """
    if profile.kind != "celery":
        argv = [sys.executable, "-m", CLIENTS_MODULE, "publish", profile.kind]
        argv += [env["HANGPROOF_BROKER_URL"]]
        argv += [queue, key, "--stall", str(stall)] + (["--guard"] if profile.guarded else [])
        argv += _tls_args(getattr(bed, "client_ssl", None))
        return processes.spawn(argv, netns=bed.client_netns, env=env, stdout=-1)
    code = (
        "import sys,time\n"
        "from hangproof.lab.matrix_celery import app\n"
        "t=time.monotonic()\n"
        "try:\n"
        f"    app.send_task('hangproof.record', args=({key!r},), queue={queue!r})\n"
        "    print(f'ok {time.monotonic()-t:.1f}s')\n"
        "except Exception as e:\n"
        "    print(f'error {time.monotonic()-t:.1f}s {type(e).__name__}: {e}'[:200])\n"
    )
    return processes.spawn(
        [sys.executable, "-c", code],
        netns=bed.client_netns,
        env=env,
        stdout=-1,  # subprocess.PIPE
    )


def run_cell(
    bed: Bed,
    fault_name: str,
    profile: str,
    work: Path,
    *,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    hang_bound: float = DEFAULT_HANG_BOUND,
    hold: float | None = None,
    report: Path | None = None,
) -> Cell:
    """Measure one cell; everything it starts is stopped by pid before it returns.

    With ``report`` (a directory), the cell's timeline is written there.
    """
    prof = PROFILES[profile]
    hold = DEFAULT_HOLD.get(fault_name, 30.0) if hold is None else hold
    cell = Cell(fault_name, profile, hold_s=hold)
    queue = re.sub(r"[^a-z0-9]+", "-", f"fm-{fault_name}-{profile}")
    ledger, log = work / f"{queue}.ledger", work / f"{queue}.log"
    published_file, stop_file = work / f"{queue}.published", work / f"{queue}.stop"
    for p in (ledger, published_file, stop_file):
        p.unlink(missing_ok=True)
    ssl = getattr(bed, "client_ssl", None)  # TLS beds only
    fault = make_fault(fault_name, bed.target)
    ctx = CellContext(
        queue=queue, client_netns=bed.client_netns, client_url=bed.client_url,
        producer_url=bed.producer_url, kind=prof.kind, guarded=prof.guarded, work=work,
        stall_timeout=stall_timeout,
    )  # fmt: skip
    configure_fault(fault, ctx)
    env = {**_worker_env(ctx.client_url, prof, stall_timeout, ledger, ssl), **ctx.env}
    argv = _consumer_argv(prof, ctx.client_url, queue, ledger, stall_timeout, ssl)
    worker = producer = probe = None
    recorder = CellRecorder(fault_name, profile, ledger, published_file, log) if report else None
    if recorder and isinstance(bed, SeedBed):  # the VIP faults: watch the SYNs and conntrack too
        recorder.watch_connections(bed.client_netns, bed.lab.topo.vip, bed.lab.topo.node_port)
    try:
        prepare_fault(fault)
        worker = processes.spawn(argv, netns=bed.client_netns, env=env, log=log)
        wpid = worker.pid
        if recorder:
            recorder.start()
        if not _wait(lambda: " ready." in (log.read_text() if log.exists() else ""), 90):
            cell.notes.append("worker not ready within 90 s")
            cell.worker_alive = processes.pid_alive(worker.pid)
            return cell
        ctx.worker_pid = wpid
        attach_fault(fault, ctx)
        producer = processes.spawn(
            [
                sys.executable,
                "-m",
                MODULE,
                "produce",
                bed.producer_url,
                queue,
                str(published_file),
                str(stop_file),
                str(PRODUCER_RATE),
            ],
            netns=bed.broker_netns,
            log=work / f"{queue}.producer.log",
        )
        time.sleep(4)  # steady state before the fault
        injected_at = time.time()
        fault.inject()
        if fault_name in DETECT_FROM_END_OF_INJECT:
            injected_at = time.time()
        if recorder:
            recorder.mark("inject", injected_at)
            recorder.mark("detect_base", injected_at)
        cell.fault_detail = dict(getattr(fault, "detail", {}) or {})
        time.sleep(min(1.0, hold))
        probe = _publish_once(bed, prof, queue, f"{queue}-during", env, stall_timeout)
        time.sleep(max(0.0, hold - 1.0))
        fault.heal()
        healed_at = time.monotonic()
        if recorder:
            recorder.mark("heal")
        with contextlib.suppress(Exception):
            out, _ = probe.communicate(timeout=max(1.0, PUBLISH_PROBE_BOUND - hold))
            cell.publish_during_fault = out.decode().strip() or "no output"
        if probe.poll() is None:
            cell.publish_during_fault = f"HANG >{PUBLISH_PROBE_BOUND:.0f}s"
        # Work resumes when a task published after heal executes.
        resume_probe = _publish_once(bed, prof, queue, f"{queue}-resume", env, stall_timeout)
        with contextlib.suppress(Exception):
            resume_probe.communicate(timeout=PUBLISH_PROBE_BOUND)
        processes.stop_pid(resume_probe.pid, grace=1)
        resumed_or_died = _wait(
            lambda: f"{queue}-resume" in _ledger_keys(ledger) or not processes.pid_alive(wpid),
            hang_bound,
            step=0.5,
        )
        if f"{queue}-resume" in _ledger_keys(ledger):
            cell.resume_s = round(time.monotonic() - healed_at, 1)
        else:
            # EXIT: the worker process died (needs a supervisor restart to resume).
            cell.resume_s = "HANG" if not resumed_or_died else "EXIT"
        evidence = getattr(fault, "evidence", None)
        if evidence is not None and cell.resume_s == "HANG":
            # Read while the hung client still holds its socket.
            cell.fault_detail["evidence"] = evidence()
        stop_file.write_text("stop")
        _wait(lambda: producer is not None and not processes.pid_alive(producer.pid), 15)
        published = published_file.read_text().split() if published_file.exists() else []
        if isinstance(cell.resume_s, float):
            _wait(lambda: set(published) <= set(_ledger_keys(ledger)), DRAIN_SECONDS, step=0.5)
        executed = [k for k in _ledger_keys(ledger) if not k.endswith(("-resume", "-during"))]
        cell.published = len(published)
        cell.executed = len(set(executed))
        unexecuted = len(set(published) - set(executed))
        cell.duplicated = len(executed) - len(set(executed))
        if f"{queue}-during" in _ledger_keys(ledger):
            cell.publish_during_fault += " (executed)"
        events = _log_events(log, injected_at)
        if events:
            cell.detect_s = round(events[0][0] - injected_at, 1)
            cell.detected_by = events[0][1]
        cell.worker_alive = processes.pid_alive(worker.pid)
        with contextlib.suppress(Exception):
            for line in bed.node.ctl("list_queues", "name", "messages", timeout=20).splitlines():
                name, _, count = line.partition("\t")
                if name.strip() == queue:
                    cell.left_in_queue = int(count)
        # Unexecuted tasks still in the queue are stranded, not lost: they run
        # once a worker consumes again (the probes may be among them).
        cell.stranded = min(unexecuted, cell.left_in_queue or 0)
        cell.lost = unexecuted - cell.stranded
        if not cell.worker_alive:
            cell.notes.append("worker process exited")
        if recorder and report:
            recorder.mark("end")
            recorder.stop()
            cell.timeline = write_report(recorder.event_log(asdict(cell)), report)
        return cell
    finally:
        if recorder:
            recorder.stop()
        for proc in (probe, producer, worker):
            if proc is not None:
                processes.stop_pid(proc.pid)
        close_fault(fault)


def run_matrix(
    faults: list[str],
    profiles: list[str],
    work: Path,
    *,
    report: Path | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    hang_bound: float = DEFAULT_HANG_BOUND,
    progress: Any = None,
    prefix: str = PREFIX,
    lab_name: str = SEED_LAB_PREFIX,
    tls: bool = False,
    hold: float | None = None,
) -> dict[str, Any]:
    """Measure every cell, one bed at a time: the testbed, then the seed lab.

    With ``report``, each cell's timeline goes to ``report/cells/FAULT--PROFILE/``
    and the heatmap (each cell linking to its timeline) to ``report/``.
    ``hold`` (seconds) overrides :data:`DEFAULT_HOLD` for faults that are
    held (not for the VIP faults, which have nothing to heal).

    Each bed is built only if one of ``faults`` needs it, and removed (in a
    finalizer) before the next is built, so only one RabbitMQ runs at a time.
    ``tls``: every client dials the brokers' TLS listener (both beds).
    """
    unknown = [f for f in faults if f not in FAULTS] + [p for p in profiles if p not in PROFILES]
    if unknown:
        raise HangproofError(
            f"unknown fault or profile {unknown[0]!r}; faults: {', '.join(sorted(FAULTS))}; "
            f"profiles: {', '.join(PROFILES)}"
        )
    work.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    for bed_kind in ("testbed", SEED_LAB, TESTBED_ROUTER):
        bed_faults = [f for f in faults if fault_bed(f) == bed_kind]
        if not bed_faults:
            continue
        bed: Bed = (
            SeedBed(lab_name, tls=tls)
            if bed_kind == SEED_LAB
            else FaultBed(work / "bed", prefix, tls=tls, router=bed_kind == TESTBED_ROUTER)
        )
        try:
            bed.up()  # type: ignore[attr-defined]
            for fault_name in bed_faults:
                for profile in profiles:
                    try:
                        cell = run_cell(
                            bed, fault_name, profile, work, stall_timeout=stall_timeout,
                            hang_bound=hang_bound,
                            report=report / "cells" / f"{fault_name}--{profile}" if report else None,
                            hold=_hold(fault_name, hold),
                        )  # fmt: skip
                    except Exception as exc:
                        cell = Cell(fault_name, profile, resume_s="ERROR", notes=[repr(exc)[:300]])
                    cells.append(cell)
                    if progress:
                        progress(cell)
                    if not bed.healthy():
                        raise HangproofError(f"the broker of the {bed_kind} did not recover")
        finally:
            bed.close()
    result = {
        "scenario": NAME,
        "tls": tls,
        "stall_timeout": stall_timeout,
        "hang_bound": hang_bound,
        "producer_rate": PRODUCER_RATE,
        "cells": [asdict(c) for c in cells],
    }
    if report:
        result["report"] = write_matrix_report(result, report)
    return result


def _hold(fault_name: str, hold: float | None) -> float | None:
    """The hold for ``fault_name``: ``hold`` unless the fault is never held (VIP faults).

    >>> _hold("blackhole", 12.0), _hold("vip-race", 12.0), _hold("blackhole", None)
    (12.0, 0.0, None)
    """
    if hold is None:
        return None
    return 0.0 if DEFAULT_HOLD.get(fault_name) == 0.0 else hold


def format_table(report: dict[str, Any]) -> str:
    """The matrix as a fixed-width table (one row per cell)."""
    head = (
        "fault",
        "profile",
        "detect",
        "resume",
        "pub",
        "exec",
        "stranded",
        "lost",
        "dup",
        "alive",
        "publish during fault",
    )
    rows = [head]
    for c in report["cells"]:
        detect = "-" if c["detect_s"] is None else f"{c['detect_s']}s"
        resume = (
            c["resume_s"] if c["resume_s"] in ("HANG", "EXIT", "ERROR") else f"{c['resume_s']}s"
        )
        rows.append((c["fault"], c["profile"], detect, str(resume), str(c["published"]),
                     str(c["executed"]), str(c["stranded"]), str(c["lost"]), str(c["duplicated"]),
                     "yes" if c["worker_alive"] else "NO", c["publish_during_fault"]))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def _names(value: Any, default: list[str]) -> list[str]:
    if not value:
        return default
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def run(lab: Lab | None, options: RunOptions) -> dict[str, Any]:
    """Scenario entry point; ``lab`` is unused (:data:`NEEDS_LAB` is False: it builds its beds).

    ``options.extra`` may carry ``faults`` and ``profiles`` (lists or
    comma-separated), ``stall_timeout``, ``hang_bound``, ``work``, ``tls``.
    comma-separated), ``stall_timeout``, ``hang_bound``, ``hold``, ``work``.
    """
    extra = options.extra
    tls = bool(extra.get("tls"))
    faults = _names(extra.get("faults"), sorted(FAULTS))
    profiles = _names(extra.get("profiles"), DEFAULT_PROFILES)
    work = Path(extra.get("work") or tempfile.mkdtemp(prefix="hpfault-"))
    return run_matrix(
        faults, profiles, work,
        report=Path(extra["report"]) if extra.get("report") else None,
        stall_timeout=float(extra.get("stall_timeout") or DEFAULT_STALL_TIMEOUT),
        hang_bound=float(extra.get("hang_bound") or DEFAULT_HANG_BOUND),
        progress=extra.get("progress"), tls=tls,
        hold=None if extra.get("hold") is None else float(extra["hold"]),
    )  # fmt: skip


def summary(result: dict[str, Any]) -> str:
    """The human output of ``hangproof lab run fault-matrix``: the table and its settings."""
    return (
        f"fault-matrix{' over TLS' if result.get('tls') else ''}: "
        f"stall_timeout {result['stall_timeout']} s, HANG bound "
        f"{result['hang_bound']} s, producer {result['producer_rate']}/s\n" + format_table(result)
    )


def produce(url: str, queue: str, published: Path, stop: Path, rate: float) -> None:
    """Publish ``hangproof.record`` at ``rate``/s with confirms until ``stop`` exists (<= 1 h)."""
    from celery import Celery

    app = Celery("hpfault-producer", broker=url)
    app.conf.broker_transport_options = {"confirm_publish": True}
    app.conf.broker_connection_timeout = 5
    deadline = time.monotonic() + 3600
    for i in range(int(3600 * rate) + 1):
        if stop.exists() or time.monotonic() > deadline:
            return
        key = f"{queue}-p{i}"
        try:
            app.send_task("hangproof.record", args=(key,), queue=queue, retry=False)
        except Exception as exc:
            print(f"publish {key} failed: {exc!r}", flush=True)
        else:
            with open(published, "a") as f:
                f.write(key + "\n")
        time.sleep(1.0 / rate)


def main(argv: list[str] | None = None) -> int:
    """``produce`` (internal) or ``run`` the matrix; ``run --json`` prints the report."""
    parser = argparse.ArgumentParser(prog="fault_matrix")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("produce")
    for name in ("url", "queue", "published", "stop", "rate"):
        p.add_argument(name)
    r = sub.add_parser("run")
    r.add_argument("--faults", default=",".join(sorted(FAULTS)))
    r.add_argument("--profiles", default=",".join(DEFAULT_PROFILES))
    r.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT)
    r.add_argument("--hang-bound", type=float, default=DEFAULT_HANG_BOUND)
    r.add_argument("--work", default=None)
    r.add_argument("--report", default=None, help="write the heatmap and each cell's timeline here")
    r.add_argument("--json", action="store_true")
    r.add_argument("--tls", action="store_true", help="every client over TLS (testbed faults)")
    r.add_argument("--prefix", default=PREFIX, help="testbed namespace prefix (hpfault-...)")
    r.add_argument("--lab-name", default=SEED_LAB_PREFIX, help="seed lab name (hpfv...)")
    args = parser.parse_args(argv)
    if args.cmd == "produce":
        produce(args.url, args.queue, Path(args.published), Path(args.stop), float(args.rate))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="hpfault-"))
    report = run_matrix(
        args.faults.split(","), args.profiles.split(","), work, tls=args.tls,
        stall_timeout=args.stall_timeout, hang_bound=args.hang_bound, prefix=args.prefix,
        lab_name=args.lab_name, report=Path(args.report) if args.report else None,
        progress=None if args.json else lambda c: print(json.dumps(asdict(c)), flush=True),
    )  # fmt: skip
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
