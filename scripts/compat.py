#!/usr/bin/env python3
"""The compat matrix: the guard's supported version range, proven one version set at a time.

For each version set (pinned celery, kombu, amqp, aio-pika, aiormq), in its own
virtualenv under ``.compat/<set>`` (git-ignored, reused while the pins and
pyproject.toml are unchanged):

1. install hangproof (editable, extras ``guard,dev``) with the set pinned, and
   check that pip installed exactly those versions;
2. ``names``: every private upstream name the guard relies on, checked on the
   real classes (``scripts/compat_names.py``);
3. ``unit``: the unit tests (tests/unit; no root, no network);
4. ``smoke`` (root): three faults of the fault matrix, vip-race, blackhole and
   broker-freeze, for the guarded Celery profile (``celery-prefork+harden``),
   on real RabbitMQ in network namespaces, judged against the guard's promise:
   detected within ``stall_timeout``, resumed within ``stall_timeout`` plus
   reconnect time, 0 tasks lost, the worker alive.

Prints a table (``--json``: the report as JSON on stdout, progress on
stderr). Exit 0 when every set passes, 1 when any fails, 2 on a usage or
environment error (an unknown set, not root for the smoke, pip unable to
reach the index). Every step has a time bound.

    scripts/compat.py                          # every set (make compat)
    scripts/compat.py --sets oldest,newest     # the oldest and newest sets
    scripts/compat.py --sets oldest,newest --smoke-sets oldest   # CI (scripts/test.sh)
    scripts/compat.py --no-smoke               # no root: names + unit tests only
    scripts/compat.py --json --markdown docs/compat.md > docs/compat.json
    scripts/compat.py --from-json a.json b.json --json --markdown docs/compat.md
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPAT_DIR = ROOT / ".compat"

#: The version sets. ``oldest`` is the floor of every range in pyproject's
#: ``guard`` extra, ``newest`` the newest release of each (the ``clients``
#: extra CI installs), ``middle`` one release line in between.
#: tests/unit/test_compat_sets.py keeps them and pyproject in step.
SETS: dict[str, dict[str, str]] = {
    "oldest": {
        "celery": "5.3.0",
        "kombu": "5.3.0",  # celery 5.3.0 requires kombu>=5.3.0
        "amqp": "5.2.0",
        # aio-pika 9.0-9.3 pin aiormq 6.7.x, which pins pamqp==3.2.1, below
        # hangproof's own pamqp>=3.3: 9.4.0 is the oldest installable with it.
        "aio-pika": "9.4.0",
        "aiormq": "6.8.0",  # aio-pika 9.4.0 requires aiormq>=6.8.0,<6.9 (pamqp 3.3.0)
    },
    "middle": {
        "celery": "5.5.3",
        "kombu": "5.5.4",
        "amqp": "5.3.1",
        "aio-pika": "9.5.8",
        "aiormq": "6.9.4",
    },
    "newest": {
        "celery": "5.7.0",
        "kombu": "5.7.0",
        "amqp": "5.4.2",
        "aio-pika": "10.2.1",
        "aiormq": "7.2.4",  # aio-pika 10.2.1 requires aiormq>=7.2.4 (pamqp 4)
    },
}

SMOKE_FAULTS = ("vip-race", "blackhole", "broker-freeze")
SMOKE_PROFILE = "celery-prefork+harden"
#: The smoke's guard settings, as the guard's lab tests use them
#: (tests/lab/test_faults_guarded_celery.py, test_faults_vip.py): a short
#: stall_timeout and hold keep a set at about 2 minutes of lab time.
STALL_TIMEOUT = 4.0
HOLD = 12.0
HANG_BOUND = 60.0
#: Detection counts from the start of inject(), which for the held faults
#: includes rabbitmqctl/iptables set-up (1-2 s on a loaded 2-core box). For
#: vip-race it counts from the end of inject() (the VIP landing mid-SYN): no slack.
DETECT_SLACK = {"vip-race": 0.0}
DEFAULT_DETECT_SLACK = 4.0
#: Reconnect time allowed on top of stall_timeout: for vip-race one backoff
#: step plus Celery's consumer restart (measured ~0.5 s); for held faults,
#: after heal, backoff steps plus the restart (measured 2-8 s). Generous for
#: a loaded CI box, as in the lab tests.
RECONNECT = {"vip-race": 12.0}
DEFAULT_RECONNECT = 20.0

#: Time bounds per step (seconds).
INSTALL_TIMEOUT = 900
NAMES_TIMEOUT = 120
UNIT_TIMEOUT = 900
SMOKE_TIMEOUT = 1200
#: Extra time for a --lab-wrapper that waits for a shared lock first.
LOCK_WAIT = 2400

EXIT_OK, EXIT_FAIL, EXIT_ENV = 0, 1, 2


class EnvironmentProblem(Exception):
    """Something the matrix needs is missing (exit 2); the message says how to fix it."""


def progress(message: str) -> None:
    print(f"compat: {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run bounded; a time-out is returned as rc 124 with what was read, never raised."""
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return subprocess.CompletedProcess(argv, 124, out, err + f"\ntimed out after {timeout} s")


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _stamp(pins: dict[str, str]) -> str:
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    return hashlib.sha256(json.dumps(pins, sort_keys=True).encode() + pyproject).hexdigest()


def ensure_venv(name: str, pins: dict[str, str], base_python: str) -> Path:
    """The set's virtualenv, with hangproof and exactly ``pins`` installed.

    Raises :class:`EnvironmentProblem` when pip cannot reach the index, and
    RuntimeError (the set fails) when the pins cannot be installed together.
    """
    venv = COMPAT_DIR / name
    python = venv / "bin" / "python"
    stamp = venv / ".hangproof-compat"
    want = _stamp(pins)
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return venv
    if not python.exists():
        progress(f"{name}: creating {venv.relative_to(ROOT)}")
        made = _run([base_python, "-m", "venv", str(venv)], 300)
        if made.returncode != 0:
            raise EnvironmentProblem(
                f"cannot create a virtualenv with {base_python}: {_tail(made.stderr, 2)} "
                "(Debian: apt-get install python3-venv)"
            )
    progress(f"{name}: installing hangproof with {', '.join(f'{p}=={v}' for p, v in pins.items())}")
    installed = _run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-e", ".[guard,dev]", *(f"{p}=={v}" for p, v in pins.items())],
        INSTALL_TIMEOUT,
    )  # fmt: skip
    if installed.returncode != 0:
        err = installed.stdout + installed.stderr
        if "ResolutionImpossible" in err or "conflict" in err.lower():
            raise RuntimeError(f"pins cannot be installed together: {_tail(err, 6)}")
        raise EnvironmentProblem(
            f"pip could not install set {name} ({_tail(err, 3)}); check the network or "
            "the package index, then rerun"
        )
    stamp.write_text(want)
    return venv


def check_names(venv: Path) -> dict[str, Any]:
    done = _run([str(venv / "bin" / "python"), str(ROOT / "scripts" / "compat_names.py")], 120)
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"ok": False, "error": _tail(done.stdout + done.stderr), "names": [], "versions": {}}
    return report


def _xdist_args(venv: Path) -> list[str]:
    """``-n N`` (HANGPROOF_UNIT_WORKERS, default 4) when the set's venv has pytest-xdist.

    The unit tests wait more than they compute (fake brokers, deadlines): 4
    workers on 2 cores took the main suite from 126 s to 55 s.
    """
    workers = os.environ.get("HANGPROOF_UNIT_WORKERS", "4")
    has = _run([str(venv / "bin" / "python"), "-c", "import xdist"], 30).returncode == 0
    return ["-n", workers] if has and workers not in ("", "0", "1") else []


def run_unit(venv: Path) -> dict[str, Any]:
    xml = venv / "unit.xml"
    xml.unlink(missing_ok=True)
    started = time.monotonic()
    done = _run(
        [str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", "--timeout=300",
         *_xdist_args(venv), f"--junitxml={xml}", "tests/unit"],
        UNIT_TIMEOUT,
    )  # fmt: skip
    result: dict[str, Any] = {
        "rc": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "passed": 0,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
        "failures": [],
    }
    if xml.exists():
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            tests = int(suite.get("tests", 0))
            failed, errors = int(suite.get("failures", 0)), int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            result["failed"] += failed
            result["errors"] += errors
            result["skipped"] += skipped
            result["passed"] += tests - failed - errors - skipped
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    result["failures"].append(f"{case.get('classname')}::{case.get('name')}")
    # Every unit test runs here: none may be skipped, and pytest must agree.
    result["ok"] = (
        done.returncode == 0
        and result["passed"] > 0
        and result["failed"] == 0
        and result["errors"] == 0
        and result["skipped"] == 0
    )
    if not result["ok"]:
        result["tail"] = _tail(done.stdout + done.stderr, 15)
    return result


def judge_cell(cell: dict[str, Any], stall: float) -> list[str]:
    """What a guarded cell misses of the promise (empty: kept).

    >>> judge_cell({"fault": "blackhole", "detect_s": 5.1, "resume_s": 6.0, "lost": 0,
    ...             "published": 20, "worker_alive": True, "stranded": 0}, 4.0)
    []
    >>> judge_cell({"fault": "vip-race", "detect_s": 1.0, "resume_s": "HANG", "lost": 0,
    ...             "published": 20, "worker_alive": True, "stranded": 3,
    ...             "fault_detail": {"wedged_sport": 41000}}, 4.0)
    ['resume HANG > 16.0 s', '3 stranded']
    """
    fault = cell["fault"]
    misses = []
    detect_bound = stall + DETECT_SLACK.get(fault, DEFAULT_DETECT_SLACK)
    resume_bound = stall + RECONNECT.get(fault, DEFAULT_RECONNECT)
    if not cell.get("worker_alive"):
        misses.append("worker exited")
    if cell.get("detect_s") is None or cell["detect_s"] > detect_bound:
        misses.append(f"detect {cell.get('detect_s')} > {detect_bound} s")
    resume = cell.get("resume_s")
    if not isinstance(resume, int | float) or resume > resume_bound:
        misses.append(f"resume {resume} > {resume_bound} s")
    if not cell.get("published"):
        misses.append("nothing published")
    if cell.get("lost"):
        misses.append(f"{cell['lost']} lost")
    if fault == "vip-race":
        # A cell whose race never triggered proves nothing.
        if (cell.get("fault_detail") or {}).get("wedged_sport") is None:
            misses.append("race not triggered")
        if cell.get("stranded"):
            misses.append(f"{cell['stranded']} stranded")
    return misses


def _run_lab(argv: list[str], timeout: float, log: Path) -> tuple[int, str]:
    """Run a lab command bounded by ``timeout``; stderr to ``log``; returns (rc, stdout).

    On time-out the process group gets SIGINT first, so the fault matrix's
    finalizers stop its brokers and delete its namespaces, then SIGKILL.
    """
    with open(log, "w") as err:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGINT, 90), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    out, _ = proc.communicate(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    out = ""
            err.write(f"\ncompat: timed out after {timeout:.0f} s\n")
            return 124, out or ""


def _held_seconds(log: str) -> float | None:
    """How long a lock wrapper held the lab, from labrun's "lock held"/"done" lines.

    >>> _held_seconds("labrun: lock held (03:10:00): x\\nlabrun: done rc=0 (03:12:30)")
    150.0
    >>> _held_seconds("labrun: slot 1 held (03:10:00): x\\nlabrun: done rc=0 slot=1 (03:11:05)")
    65.0
    """
    held = re.search(r"(?:lock|slot \d+) held \((\d\d):(\d\d):(\d\d)\)", log)
    done = re.search(r"done rc=\d+(?: slot=\d+)? \((\d\d):(\d\d):(\d\d)\)", log)
    if not held or not done:
        return None
    h, d = (int(a) * 3600 + int(b) * 60 + int(c) for a, b, c in (held.groups(), done.groups()))
    return float((d - h) % 86400)


def run_smoke(venv: Path, wrapper: list[str]) -> dict[str, Any]:
    argv = [
        *wrapper, str(venv / "bin" / "hangproof"), "lab", "run", "fault-matrix",
        "--faults", ",".join(SMOKE_FAULTS), "--profiles", SMOKE_PROFILE,
        "--stall-timeout", str(STALL_TIMEOUT), "--hold", str(HOLD),
        "--hang-bound", str(HANG_BOUND), "--json",
    ]  # fmt: skip
    log = venv / "smoke.log"
    progress(f"{venv.name}: lab smoke log: {log.relative_to(ROOT)}")
    started = time.monotonic()
    # A lock wrapper may wait for the lab (labrun: up to 40 min) before it starts.
    rc, stdout = _run_lab(argv, SMOKE_TIMEOUT + (LOCK_WAIT if wrapper else 0), log)
    done = subprocess.CompletedProcess(argv, rc, stdout, log.read_text(errors="replace"))
    result: dict[str, Any] = {
        "command": shlex.join(argv[len(wrapper) :]),
        "seconds": round(time.monotonic() - started, 1),
        "lab_seconds": _held_seconds(done.stderr) if wrapper else None,
        "stall_timeout": STALL_TIMEOUT,
        "hold": HOLD,
        "cells": [],
    }
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        result.update(ok=False, error=f"rc {done.returncode}: {_tail(done.stderr, 10)}")
        return result
    for cell in report.get("cells", []):
        misses = judge_cell(cell, STALL_TIMEOUT)
        result["cells"].append(
            {
                **{k: cell.get(k) for k in ("fault", "profile", "detect_s", "detected_by",
                                            "resume_s", "published", "executed", "lost",
                                            "stranded", "duplicated", "worker_alive")},
                "kept": not misses,
                "misses": misses,
                "notes": cell.get("notes", []),
            }
        )  # fmt: skip
    faults = {c["fault"] for c in result["cells"]}
    missing = [f for f in SMOKE_FAULTS if f not in faults]
    if missing:
        result["error"] = f"no cell for {', '.join(missing)}"
    result["ok"] = done.returncode == 0 and not missing and all(c["kept"] for c in result["cells"])
    return result


def run_set(name: str, args: argparse.Namespace, wrapper: list[str]) -> dict[str, Any]:
    pins = SETS[name]
    started = time.monotonic()
    # The code this set runs: the commit when it starts.
    result: dict[str, Any] = {"set": name, "pins": pins, "commit": _commit()}
    try:
        venv = ensure_venv(name, pins, args.python)
    except RuntimeError as exc:
        result.update(ok=False, error=str(exc), seconds=round(time.monotonic() - started, 1))
        return result
    if getattr(args, "smoke_only", False):
        # The second half of a split run (scripts/test.sh): names and unit
        # tests were reported by the first; --from-json merges the two.
        progress(f"{name}: lab smoke ({', '.join(SMOKE_FAULTS)} x {SMOKE_PROFILE})")
        result["smoke"] = run_smoke(venv, wrapper)
        result["ok"] = bool(result["smoke"]["ok"])
        result["seconds"] = round(time.monotonic() - started, 1)
        result["date"] = _now()
        progress(f"{name}: smoke {'PASS' if result['ok'] else 'FAIL'} in {result['seconds']} s")
        return result
    progress(f"{name}: private upstream names")
    names = check_names(venv)
    versions = names.get("versions", {})
    wrong = {p: versions.get(p) for p, v in pins.items() if versions.get(p) != v}
    result["versions"] = versions
    result["names"] = names.get("names", [])
    result["names_ok"] = bool(names.get("ok")) and not wrong
    if wrong:
        result["error"] = f"installed versions differ from the pins: {wrong}"
    progress(f"{name}: unit tests")
    result["unit"] = run_unit(venv)
    smoke = name in args.smoke_sets
    if smoke:
        progress(f"{name}: lab smoke ({', '.join(SMOKE_FAULTS)} x {SMOKE_PROFILE})")
        result["smoke"] = run_smoke(venv, wrapper)
    result["ok"] = (
        result["names_ok"] and result["unit"]["ok"] and (not smoke or result["smoke"]["ok"])
    )
    result["seconds"] = round(time.monotonic() - started, 1)
    result["date"] = _now()
    progress(f"{name}: {'PASS' if result['ok'] else 'FAIL'} in {result['seconds']} s")
    return result


def _main_versions(dists: list[str]) -> dict[str, str]:
    """What this interpreter has installed of ``dists`` (missing: absent)."""
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in dists:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def _commit() -> str:
    done = _run(["git", "rev-parse", "--short", "HEAD"], 10)
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], 10).stdout.strip()
    return (done.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs (e.g. sets measured one lab-lock slot at a time).

    A set measured twice keeps its last run (commits and dates stay per set),
    except that a ``--smoke-only`` run joins the earlier names-and-unit run
    of its set (scripts/test.sh runs the two halves apart).

    >>> a = {"sets": [{"set": "oldest", "ok": True, "commit": "c1"}], "python": "3.11.2"}
    >>> b = {"sets": [{"set": "newest", "ok": False, "commit": "c2"}], "python": "3.11.2"}
    >>> m = merge_reports([a, b]); [s["set"] for s in m["sets"]], m["ok"], m["commit"]
    (['oldest', 'newest'], False, 'c1, c2')
    >>> u = {"sets": [{"set": "oldest", "ok": True, "unit": {"ok": True}, "seconds": 50}]}
    >>> k = {"sets": [{"set": "oldest", "ok": False, "smoke": {"ok": False}, "seconds": 75}]}
    >>> m = merge_reports([u, k])["sets"][0]; sorted(m), m["ok"], m["seconds"]
    (['ok', 'seconds', 'set', 'smoke', 'unit'], False, 125)
    """
    by_name: dict[str, dict[str, Any]] = {}
    for report in reports:
        for s in report["sets"]:
            earlier = by_name.get(s["set"])
            if earlier is not None and (s.get("smoke") and "unit" not in s):
                # A --smoke-only half joins the unit half of the same set.
                s = {**earlier, "smoke": s["smoke"], "ok": bool(earlier["ok"] and s["ok"]),
                     "seconds": round(earlier.get("seconds", 0) + s.get("seconds", 0), 1)}  # fmt: skip
            by_name[s["set"]] = s
    sets = [by_name[n] for n in SETS if n in by_name]
    commits = list(dict.fromkeys(str(s.get("commit", "?")) for s in sets))
    dates = sorted(str(s.get("date", "")) for s in sets)
    return {
        "command": "scripts/compat.py --from-json "
        + " ".join(str(r.get("command", "?")) for r in reports),
        "commit": ", ".join(commits),
        "date": dates[-1] if dates else "",
        "python": reports[0].get("python", "?") if reports else "?",
        "sets": sets,
        "ok": all(s["ok"] for s in sets),
    }


def _cell_text(cell: dict[str, Any]) -> str:
    resume = cell["resume_s"]
    resume = f"{resume}s" if isinstance(resume, int | float) else str(resume)
    verdict = "ok" if cell["kept"] else "MISS: " + "; ".join(cell["misses"])
    return (
        f"detect {cell['detect_s']}s, resume {resume}, pub {cell['published']}, "
        f"lost {cell['lost']}, alive {'yes' if cell['worker_alive'] else 'NO'}: {verdict}"
    )


def format_table(report: dict[str, Any]) -> str:
    """One row per set, then the smoke cells of each set."""
    head = ("set", "celery", "kombu", "amqp", "aio-pika", "aiormq", "pamqp", "names", "unit",
            "smoke", "result")  # fmt: skip
    rows = [head]
    for s in report["sets"]:
        v = s.get("versions") or s["pins"]
        names = s.get("names", [])
        present = sum(1 for n in names if n["status"] == "present")
        unit = s.get("unit")
        unit_text = (
            f"{unit['passed']} passed, {unit['failed'] + unit['errors']} failed"
            + (f", {unit['skipped']} skipped" if unit["skipped"] else "")
            if unit
            else ("main venv" if s.get("covered_by") else "-")
        )
        smoke = s.get("smoke")
        smoke_text = (
            f"{sum(c['kept'] for c in smoke['cells'])}/{len(SMOKE_FAULTS)} kept" if smoke else "-"
        )
        rows.append(
            (s["set"], *(str(v.get(p, "?")) for p in ("celery", "kombu", "amqp", "aio-pika",
                                                     "aiormq", "pamqp")),
             f"{present}/{len(names)}" if names else "-", unit_text, smoke_text,
             "PASS" if s["ok"] else "FAIL")
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for s in report["sets"]:
        if s.get("error"):
            lines.append(f"{s['set']}: {s['error']}")
        for n in s.get("names", []):
            if n["status"] != "present":
                lines.append(
                    f"{s['set']}: {n['package']} {n['name']}: {n['status']} ({n['detail']})"
                )
        unit = s.get("unit") or {}
        for f in unit.get("failures", []):
            lines.append(f"{s['set']}: unit FAILED {f}")
        smoke = s.get("smoke")
        if smoke:
            if smoke.get("error"):
                lines.append(f"{s['set']}: smoke: {smoke['error']}")
            for c in smoke["cells"]:
                lines.append(f"{s['set']}: {c['fault']} x {c['profile']}: {_cell_text(c)}")
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    """docs/compat.md: the table, the smoke cells and the private names, from the report."""
    out = [
        "# Compat matrix",
        "",
        f"Generated by `scripts/compat.py` (`make compat`) at commit `{report['commit']}` on "
        f"{report['date']}, Python {report['python']}; raw JSON: [compat.json](compat.json).",
        "Regenerate: `scripts/compat.py --json --markdown docs/compat.md > docs/compat.json`.",
        "",
        f"Smoke: `{SMOKE_PROFILE}` against {', '.join(SMOKE_FAULTS)} (fault matrix, "
        f"stall_timeout {STALL_TIMEOUT:g} s, faults held {HOLD:g} s). Promise per cell: "
        "detected within stall_timeout (+4 s set-up slack for held faults), resumed within "
        "stall_timeout + reconnect (12 s for vip-race, 20 s after heal), 0 lost, worker alive.",
        "",
        "Ranges (pyproject's `guard` extra): each set sits on the floors, between them, or on "
        "the newest releases; majors are capped because the guard reads private names of each "
        "package (table below). aio-pika starts at 9.4: 9.0-9.3 pin aiormq 6.7, which pins "
        "pamqp 3.2.1, below hangproof's own pamqp>=3.3, so pip cannot install them together.",
        "",
        "| set | celery | kombu | amqp | aio-pika | aiormq | pamqp | private names | unit tests "
        "| smoke | result | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["sets"]:
        v = s.get("versions") or s["pins"]
        names = s.get("names", [])
        present = sum(1 for n in names if n["status"] == "present")
        unit = s.get("unit") or {}
        smoke = s.get("smoke")
        cells = (
            "<br>".join(f"{c['fault']}: {_cell_text(c)}" for c in smoke["cells"])
            if smoke
            else "not run"
        )
        out.append(
            f"| {s['set']} | "
            + " | ".join(str(v.get(p, "?")) for p in ("celery", "kombu", "amqp", "aio-pika",
                                                      "aiormq", "pamqp"))
            + f" | {present}/{len(names)} present | {unit.get('passed', 0)} passed, "
            f"{unit.get('failed', 0) + unit.get('errors', 0)} failed | {cells} | "
            f"{'PASS' if s['ok'] else 'FAIL'} | `{s.get('commit', '?')}` {s.get('date', '')} |"
        )  # fmt: skip
    if report["sets"]:
        out += ["", "## Private upstream names (per set)", "",
                "| package | name | used by | " + " | ".join(s["set"] for s in report["sets"])
                + " |", "|---|---|---|" + "---|" * len(report["sets"])]  # fmt: skip
        found = {
            (s["set"], n["package"], n["name"]): n
            for s in report["sets"]
            for n in s.get("names", [])
        }
        status = {}
        for key, n in found.items():
            details = {m["detail"] for k, m in found.items() if k[1:] == key[1:]}
            # Where the shape differs between sets, say how.
            status[key] = n["status"] + (f" ({n['detail']})" if len(details) > 1 else "")
        rows = {(n["package"], n["name"]): n for s in report["sets"] for n in s.get("names", [])}
        for (package, name), n in rows.items():
            statuses = [status.get((s["set"], package, name), "?") for s in report["sets"]]
            out.append(f"| {n['package']} | `{n['name']}` | {n['used_by']} | "
                       + " | ".join(statuses) + " |")  # fmt: skip
    return "\n".join(out) + "\n"


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab smoke needs root (run as root, or pass --no-smoke)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    tools = ("ip", "iptables-restore", "conntrack", "rabbitmq-server", "keepalived")
    missing = [t for t in tools if shutil.which(t, path=path) is None]
    if missing:
        return f"the lab smoke needs {', '.join(missing)} (run scripts/setup.sh, or --no-smoke)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compat.py", description="Run the compat matrix (see the module docstring)."
    )
    parser.add_argument(
        "--sets", default=",".join(SETS), help=f"comma-separated: {', '.join(SETS)}"
    )
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    parser.add_argument("--no-smoke", dest="smoke", action="store_false", help="skip the lab smoke")
    parser.add_argument(
        "--smoke-sets",
        help="comma-separated sets that get the lab smoke (default: every set run)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the markdown table here")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", help="render (merge) saved reports; run nothing"
    )
    parser.add_argument(
        "--lab-wrapper",
        default=os.environ.get("HANGPROOF_LAB_WRAPPER", ""),
        help="command prefixed to the lab smoke only, e.g. a lock wrapper on a shared machine",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venvs")
    parser.add_argument(
        "--smoke-only",
        action="store_true",
        help="only the lab smoke of --smoke-sets (the second half of a split run; "
        "merge both with --from-json)",
    )
    parser.add_argument(
        "--skip-same-as-main",
        action="store_true",
        help="do not rebuild a set (without smoke) whose pins are exactly what this "
        "interpreter has installed: the main test run already covers it (make test)",
    )
    args = parser.parse_args(argv)

    if args.from_json:
        try:
            report = merge_reports([json.loads(p.read_text()) for p in args.from_json])
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            print(f"compat: cannot read a saved report: {exc}", file=sys.stderr)
            return EXIT_ENV
    else:
        names = [n.strip() for n in args.sets.split(",") if n.strip()]
        unknown = [n for n in names if n not in SETS]
        if unknown or not names:
            print(
                f"compat: unknown version set {', '.join(unknown) or '(none)'}; choose from "
                f"{', '.join(SETS)}",
                file=sys.stderr,
            )
            return EXIT_ENV
        smoke_sets = [n.strip() for n in (args.smoke_sets or args.sets).split(",") if n.strip()]
        if stray := [n for n in smoke_sets if n not in names]:
            print(f"compat: --smoke-sets {', '.join(stray)} not in --sets", file=sys.stderr)
            return EXIT_ENV
        args.smoke_sets = smoke_sets if args.smoke else []
        if args.smoke_sets and (problem := _lab_unavailable()):
            print(f"compat: {problem}", file=sys.stderr)
            return EXIT_ENV
        wrapper = shlex.split(args.lab_wrapper)
        started = time.monotonic()
        commit = _commit()
        sets = []
        try:
            for name in names:
                if args.smoke_only and name not in args.smoke_sets:
                    continue
                here = _main_versions([*SETS[name], "pamqp"])
                same = args.skip_same_as_main and all(
                    here.get(dist) == version for dist, version in SETS[name].items()
                )
                if same and name not in args.smoke_sets:
                    progress(f"{name}: same versions as the main venv; covered by its tests")
                    sets.append({
                        "set": name, "pins": SETS[name], "versions": here,
                        "commit": commit, "ok": True, "seconds": 0.0, "date": _now(),
                        "covered_by": "the main venv (same versions): its unit and lab tests",
                    })  # fmt: skip
                    continue
                sets.append(run_set(name, args, wrapper))
        except EnvironmentProblem as exc:
            print(f"compat: {exc}", file=sys.stderr)
            return EXIT_ENV
        report = {
            "command": "scripts/compat.py --sets " + ",".join(names)
            + (f" --smoke-sets {','.join(args.smoke_sets)}" if args.smoke_sets else " --no-smoke")
            + (" --smoke-only" if args.smoke_only else ""),
            "commit": commit,
            "date": _now(),
            "python": sys.version.split()[0],
            "seconds": round(time.monotonic() - started, 1),
            "sets": sets,
            "ok": all(s["ok"] for s in sets),
        }  # fmt: skip
    if args.markdown:
        try:
            args.markdown.write_text(format_markdown(report))
        except OSError as exc:
            print(f"compat: cannot write {args.markdown}: {exc}", file=sys.stderr)
            return EXIT_ENV
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return EXIT_OK if report["ok"] else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
