"""fault-calls: ``delay()``, ``apply_async()``, ``inspect ping`` and ``close()`` made during a fault.

The call rows of issue 10's fault table, measured on the faults' testbed
(:mod:`hangproof.lab.beds.testbed`) for stock Celery and ``harden(app)``:

- broker-down-at-call, broker-reject-at-call: celery#6911 / kombu#1463
  (``delay()`` hangs forever, open), celery#5067 (``inspect ping`` ignores its
  timeout), celery#1305;
- disk-alarm: celery#1828 (publishes block), pika#764 (``close()`` of a
  blocked connection hangs).

Per fault: inject, then every call of every profile from the clients'
namespace (:mod:`hangproof.lab.clients.call_probe`: one child per call, killed at
``bound`` and reported ``HANG``), heal, then the broker's own message count of
each call's queue says whether an ok publish was really queued (no consumer
runs: a queued message stays there). Guarded calls are judged
(:func:`hangproof.lab.clients.call_probe.judge`); stock calls are measured only.

Run it (root; scripts/labrun for several labs at once)::

    python -m hangproof.lab.scenarios.fault_calls run --json > docs/fault-matrix-calls.json
    python -m hangproof.lab.scenarios.fault_calls table docs/fault-matrix-calls.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from hangproof.failure import FaultClass, Policy
from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.clients.call_probe import (
    OK,
    PUBLISHING,
    CallResult,
    Calls,
    as_dict,
    deadline,
    judge,
)
from hangproof.lab.faults import close_fault, make_fault, prepare_fault

#: Fault -> the calls made during it.
CALLS_OF: dict[str, list[str]] = {
    FaultClass.BROKER_DOWN_AT_CALL.value: ["delay", "apply_async", "ping"],
    FaultClass.BROKER_REJECT_AT_CALL.value: ["delay", "apply_async", "ping"],
    FaultClass.DISK_ALARM.value: ["delay", "apply_async", "ping", "close"],
}
#: Faults under which a guarded call must fail (the broker is unreachable).
MUST_FAIL = frozenset(
    {FaultClass.BROKER_DOWN_AT_CALL.value, FaultClass.BROKER_REJECT_AT_CALL.value}
)
#: Profile -> (guarded, warm). Stock Celery or harden(app); cold: a fresh
#: process makes the call; warm: a process that already published once while
#: the broker was fine (its pooled connection open: a web server's case).
PROFILES: dict[str, tuple[bool, bool]] = {
    "celery": (False, False),
    "celery warm": (False, True),
    "celery+harden": (True, False),
    "celery+harden warm": (True, True),
}
DEFAULT_BOUND = 60.0
DEFAULT_STALL = 15.0
#: Pause between inject and the calls, and between heal and counting the queues.
SETTLE = 1.0
PREFIX = "hpfault-k"


def queue_name(fault: str, profile: str, call: str) -> str:
    """The queue one call publishes to.

    >>> queue_name("disk-alarm", "celery+harden", "apply_async")
    'cp-disk-alarm-celery-harden-apply-async'
    """
    return re.sub(r"[^a-z0-9]+", "-", f"cp-{fault}-{profile}-{call}")


def parse_queue_counts(listing: str) -> dict[str, int]:
    """``rabbitmqctl list_queues name messages`` output -> {queue: messages}.

    >>> parse_queue_counts("a\\t1\\nb\\t0\\n")
    {'a': 1, 'b': 0}
    """
    counts = {}
    for line in listing.splitlines():
        name, _, count = line.partition("\t")
        with contextlib.suppress(ValueError):
            counts[name.strip()] = int(count)
    return counts


def client_env(url: str, guarded: bool, stall: float, ssl: Any = None) -> dict[str, str]:
    """The matrix app's environment for a call (stock, or hardened with ``stall``)."""
    return {
        "HANGPROOF_BROKER_URL": url,
        "HANGPROOF_BROKER_USE_SSL": json.dumps(ssl) if ssl else "",
        "HANGPROOF_GUARD": "1" if guarded else "0",
        "HANGPROOF_STALL_TIMEOUT": str(stall),
    }


def fault_happened(fault: str, detail: dict[str, Any]) -> bool:
    """Whether the fault's own evidence shows it was really in force.

    >>> fault_happened("broker-reject-at-call", {"rejected_packets": 3})
    True
    >>> fault_happened("broker-down-at-call", {"amqp_answers_during_fault": True})
    False
    """
    if fault == FaultClass.BROKER_DOWN_AT_CALL:
        return detail.get("amqp_answers_during_fault") is False
    if fault == FaultClass.BROKER_REJECT_AT_CALL:
        return int(detail.get("rejected_packets") or 0) > 0
    if fault == FaultClass.DISK_ALARM:
        return bool(detail.get("alarm_seen"))
    return False


def measure_fault(
    bed: FaultBed,
    fault_name: str,
    profiles: list[str],
    work: Path,
    *,
    stall: float = DEFAULT_STALL,
    bound: float = DEFAULT_BOUND,
    calls: list[str] | None = None,
) -> dict[str, Any]:
    """Inject ``fault_name``, make its calls for each profile, heal, check what was queued.

    Warm profiles' children start (and make each call once) before the inject.
    """
    calls = calls or CALLS_OF[fault_name]
    policy = Policy(stall_timeout=stall)
    assert policy.publish_timeout is not None
    fault = make_fault(fault_name, bed.target)
    results: list[CallResult] = []
    notes: list[str] = []
    sets: dict[str, Calls] = {}

    def env_of(profile: str) -> dict[str, str]:
        return client_env(bed.client_url, PROFILES[profile][0], stall, bed.client_ssl)

    def start(profile: str, go: Path | None) -> Calls:
        made = Calls(go)
        made.start(
            calls, bed.client_netns, env_of(profile),
            lambda c: queue_name(fault_name, profile, c),
            lambda c: f"{queue_name(fault_name, profile, c)}-k",
        )  # fmt: skip
        return made

    prepare_fault(fault)
    try:
        for profile in profiles:
            if PROFILES[profile][1]:  # warm: start now, warm up while the broker is fine
                go = work / f"go-{queue_name(fault_name, profile, 'x')}"
                go.unlink(missing_ok=True)
                sets[profile] = start(profile, go)
        for profile, made in sets.items():
            if not made.wait_warm(60):
                notes.append(f"{profile}: not every warm-up ended within 60 s")
        fault.inject()
        time.sleep(SETTLE)
        for profile in profiles:  # one profile at a time: its calls run at once
            made = sets.get(profile) or start(profile, None)
            made.release()
            for r in made.finish(bound):
                r.profile = profile
                results.append(r)
    finally:
        for made in sets.values():
            made.close()
        close_fault(fault)
    detail = dict(getattr(fault, "detail", {}) or {})
    time.sleep(SETTLE)
    counts = parse_queue_counts(bed.node.ctl("list_queues", "name", "messages", timeout=30))
    rows = []
    for r in results:
        q = queue_name(fault_name, r.profile, r.call)
        warmed = int(bool(r.warm_up and r.warm_up.get("outcome") == OK))
        if r.call in PUBLISHING:
            r.queued = counts.get(q, 0) - warmed > 0
        guarded = PROFILES[r.profile][0]
        r.deadline_s = deadline(r.call, policy.publish_timeout, float(policy.handshake_deadline))
        row = as_dict(r)
        row["guarded"] = guarded
        row["messages_after_heal"] = counts.get(q)
        row["miss"] = judge(r, r.deadline_s, must_fail=fault_name in MUST_FAIL) if guarded else None
        rows.append(row)
    for q in {queue_name(fault_name, r.profile, r.call) for r in results} & set(counts):
        with contextlib.suppress(Exception):
            bed.node.ctl("delete_queue", q, timeout=30)
    return {
        "fault": fault_name,
        "fault_detail": detail,
        "fault_happened": fault_happened(fault_name, detail),
        "notes": notes,
        "calls": rows,
    }


def versions(bed: FaultBed | None = None) -> dict[str, str]:
    """The version set: OS, RabbitMQ (when a bed is up), the client libraries, the commit."""
    found = {"python": platform.python_version()}
    with contextlib.suppress(OSError):
        found["debian"] = Path("/etc/debian_version").read_text().strip()
    for dist in ("celery", "kombu", "amqp", "aio-pika", "gevent"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    if bed is not None:
        with contextlib.suppress(Exception):
            out = bed.node.ctl("eval", "rabbit_misc:version().", timeout=30)
            found["rabbitmq"] = out.strip().strip('"')
    if os.environ.get("HANGPROOF_COMMIT"):  # run from a snapshot of the tree (not a git checkout)
        found["commit"] = os.environ["HANGPROOF_COMMIT"]
    with contextlib.suppress(Exception):
        here = Path(__file__).resolve().parent
        found["commit"] = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    return found


def run(
    faults: list[str],
    profiles: list[str],
    work: Path,
    *,
    stall: float = DEFAULT_STALL,
    bound: float = DEFAULT_BOUND,
    prefix: str = PREFIX,
) -> dict[str, Any]:
    """Measure every fault on one testbed (built and removed here)."""
    bed = FaultBed(work / "bed", prefix)
    started = time.time()
    try:
        bed.up()
        measured = []
        for fault_name in faults:
            measured.append(
                measure_fault(bed, fault_name, profiles, work, stall=stall, bound=bound)
            )
            if not bed.healthy():
                raise RuntimeError(f"the broker did not recover after {fault_name}")
        found = versions(bed)
    finally:
        bed.close()
    return {
        "scenario": "fault-calls",
        "stall_timeout": stall,
        "publish_timeout": Policy(stall_timeout=stall).publish_timeout,
        "bound": bound,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "run_seconds": round(time.time() - started, 1),
        "versions": found,
        "faults": measured,
    }


def format_table(report: dict[str, Any]) -> str:
    """Markdown: one row per fault x call, one column per profile, and the guarded verdict."""
    profiles = list(dict.fromkeys(c["profile"] for f in report["faults"] for c in f["calls"]))
    head = ["fault", "call", *profiles, "guarded promise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in report["faults"]:
        by_call: dict[str, dict[str, dict[str, Any]]] = {}
        for c in f["calls"]:
            by_call.setdefault(c["call"], {})[c["profile"]] = c
        for call, cells in by_call.items():
            guarded = [c for c in cells.values() if c.get("guarded")]
            verdict = "; ".join(c["miss"] for c in guarded if c.get("miss")) or (
                "kept" if guarded else "-"
            )
            if guarded and verdict == "kept":
                verdict += f" (deadline {guarded[0]['deadline_s']:g} s)"
            row = [f["fault"], call, *(cells[p]["label"] if p in cells else "-" for p in profiles)]
            lines.append("| " + " | ".join([*row, verdict]) + " |")
    return "\n".join(lines)


def format_matrix_table(matrix: dict[str, Any], faults: list[str] | None = None) -> str:
    """Markdown of fault-matrix cells of the call faults: the cell's figures and its calls.

    ``calls`` is each call's label (Celery profiles only; see
    :func:`hangproof.lab.scenarios.fault_matrix._fault_calls`); ``promise``
    lists the guarded cell's misses, or ``kept``.
    """
    faults = faults or list(CALLS_OF)
    head = ["fault", "profile", "detect", "resume", "pub", "exec", "lost", "dup", "alive",
            "publish during fault", "calls during fault", "promise"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in matrix["cells"]:
        if c["fault"] not in faults:
            continue
        guarded = "+" in c["profile"]
        misses = _cell_misses(c, float(matrix["stall_timeout"])) if guarded else []
        calls = "; ".join(f"{k['call']}: {k['label']}" for k in c.get("calls") or []) or "-"
        detect = "-" if c["detect_s"] is None else f"{c['detect_s']}s"
        resume = c["resume_s"] if isinstance(c["resume_s"], str) else f"{c['resume_s']}s"
        row = [c["fault"], c["profile"], detect, str(resume), str(c["published"]),
               str(c["executed"]), "-" if c["lost"] is None else str(c["lost"]), str(c["duplicated"]),
               "yes" if c["worker_alive"] else "NO", c["publish_during_fault"] or "-", calls,
               "; ".join(misses) if guarded and misses else ("kept" if guarded else "-")]  # fmt: skip
        lines.append("| " + " | ".join(v.replace("|", "/") for v in row) + " |")
    return "\n".join(lines)


def _cell_misses(cell: dict[str, Any], stall: float) -> list[str]:
    """A guarded matrix cell's misses of the issue's promise (the parts this row measures).

    >>> _cell_misses({"detect_s": 1.0, "resume_s": 3.0, "lost": 0, "worker_alive": True,
    ...               "publish_during_fault": "ok 0.1s", "calls": []}, 4.0)
    ['publish during fault ok but never executed']
    """
    misses = [c["call"] + ": " + c["miss"] for c in cell.get("calls") or [] if c.get("miss")]
    if cell["detect_s"] is None or cell["detect_s"] > stall:
        misses.append(f"detect {cell['detect_s']} s > stall_timeout {stall:g} s")
    if not isinstance(cell["resume_s"], float | int):
        misses.append(f"resume {cell['resume_s']}")
    if cell["lost"]:
        misses.append(f"{cell['lost']} lost")
    if not cell["worker_alive"]:
        misses.append("worker exited")
    during = cell.get("publish_during_fault") or ""
    if during.startswith("ok") and "(executed)" not in during:
        misses.append("publish during fault ok but never executed")
    return misses


def main(argv: list[str] | None = None) -> int:
    """``run`` (root) prints the report; ``table FILE`` prints a report's markdown table."""
    parser = argparse.ArgumentParser(prog="fault_calls")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--faults", default=",".join(CALLS_OF))
    r.add_argument("--profiles", default=",".join(PROFILES))
    r.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL)
    r.add_argument("--bound", type=float, default=DEFAULT_BOUND)
    r.add_argument("--prefix", default=PREFIX)
    r.add_argument("--json", action="store_true")
    t = sub.add_parser("table")
    t.add_argument("file")
    m = sub.add_parser("matrix-table", help="the call faults' cells of a fault-matrix JSON")
    m.add_argument("file")
    args = parser.parse_args(argv)
    if args.cmd == "table":
        print(format_table(json.loads(Path(args.file).read_text())))
        return 0
    if args.cmd == "matrix-table":
        print(format_matrix_table(json.loads(Path(args.file).read_text())))
        return 0
    work = Path(tempfile.mkdtemp(prefix="hpfault-calls-"))
    report = run(
        args.faults.split(","), args.profiles.split(","), work,
        stall=args.stall_timeout, bound=args.bound, prefix=args.prefix,
    )  # fmt: skip
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
