"""VIP or node addresses, stock or guard: the seed loop, measured (issue 11 part 4).

Measure (root, one clustered lab per scripts/labrun slot; the report is rewritten after
every run, so a run cut short keeps what it measured)::

    sudo scripts/labrun .venv/bin/python scripts/vip_alternatives.py measure \\
        --setups vip:seed,nodes:seed --runs 3 --cycles 12 --out docs/data/vip-alternatives-a.json

Render every raw file into the published page::

    .venv/bin/python scripts/vip_alternatives.py render docs/data/vip-alternatives-*.json \\
        --out docs/vip-alternatives.md

A setup is ``URLS:PROFILE[:TRIGGER]``: URLS ``vip`` or ``nodes``
(:class:`hangproof.lab.clients.workers.WorkerFleet`), PROFILE ``seed`` (the report's
stock Celery settings) or ``harden`` (the same app with ``harden(app)``), TRIGGER
``reconnect`` (default) or ``node-down`` (see hangproof.lab.scenarios.seed_loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def parse_setup(text: str) -> dict[str, str]:
    """``"nodes:harden"`` -> its fields (trigger defaults to reconnect).

    >>> parse_setup("nodes:harden")
    {'urls': 'nodes', 'profile': 'harden', 'trigger': 'reconnect'}
    >>> parse_setup("vip:seed:node-down")["trigger"]
    'node-down'
    """
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"setup {text!r}: expected URLS:PROFILE[:TRIGGER]")
    return {
        "urls": parts[0],
        "profile": parts[1],
        "trigger": parts[2] if parts[2:] else "reconnect",
    }


def setup_key(run: dict[str, Any]) -> str:
    """``urls:profile:trigger`` of one run's result.

    >>> setup_key({"urls": "vip", "profile": "seed", "trigger": "reconnect"})
    'vip:seed:reconnect'
    """
    return f"{run.get('urls', 'vip')}:{run['profile']}:{run['trigger']}"


def _slim(result: dict[str, Any]) -> dict[str, Any]:
    """The run's JSON without the bulky Python stack text (its top frames stay)."""
    out = {k: v for k, v in result.items() if k not in ("python_stack", "report")}
    stack = result.get("python_stack") or ""
    out["python_stack_top"] = [line.strip() for line in stack.splitlines() if "(" in line][:6]
    return out


def measure(args: argparse.Namespace) -> int:
    from hangproof.lab.engine.lab import Lab
    from hangproof.lab.engine.topology import Topology
    from hangproof.lab.scenarios import RunOptions, run_scenario
    from hangproof.lab.scenarios.fault_matrix import version_set

    setups = [parse_setup(s) for s in args.setups.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "scenario": "seed-loop",
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cycles": args.cycles,
        "max_seconds": args.max_seconds,
        "wait_seconds": args.wait,
        "wait_seconds_node_down": args.wait_node_down,
        "note": "2-core box shared with other helpers' labs: timings are rough",
        "runs": [],
    }
    topo = dataclasses.replace(Topology.seed(args.lab_name), brokers=("n1", "n2", "n3"))
    lab = Lab(topo, lambda m: print(f"[{args.lab_name}] {m}", file=sys.stderr, flush=True))
    try:
        lab.up()
        bed = type("Bed", (), {"node": lab.broker("n1")})()
        report["versions"] = version_set(bed)  # type: ignore[arg-type]
        for i in range(args.runs):
            for setup in setups:
                if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
                    print(f"[{args.lab_name}] --until {args.until} reached", file=sys.stderr)
                    return 0
                t0 = time.monotonic()
                options = RunOptions(
                    profile=setup["profile"],
                    cycles=args.cycles,
                    max_seconds=args.max_seconds,
                    extra={
                        "wait_seconds": (
                            args.wait_node_down if setup["trigger"] == "node-down" else args.wait
                        ),
                        "trigger": setup["trigger"],
                        "urls": setup["urls"],
                        # The bounded observer ping (a worker silent past the bound
                        # is wedged), not the report's literal waiter through the VIP.
                        "waiter": "observer",
                        # After a silence, ping on for this long: wedged, or slow?
                        "recheck_seconds": args.recheck,
                    },
                )
                try:
                    row = _slim(run_scenario("seed-loop", lab, options))
                except Exception as exc:  # one failed run must not lose the others
                    row = {**setup, "outcome": "error", "error": repr(exc)[:300]}
                row["run"] = i + 1
                row["run_seconds"] = round(time.monotonic() - t0, 1)
                report["runs"].append(row)
                out.write_text(json.dumps(report, indent=1, default=str) + "\n")
                print(
                    f"[{args.lab_name}] {setup_key(row)} run {i + 1}: {row['outcome']} "
                    f"after {row.get('cycles')} cycles",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        lab.down()
    return 0


def _median_range(values: list[float]) -> str:
    """``median (min-max)``, or ``-``.

    >>> _median_range([3.0, 1.0, 2.0])
    '2.0 (1.0-3.0)'
    >>> _median_range([])
    '-'
    """
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setup: runs, cycles survived and wedged, first wedge, tasks, gaps.

    >>> rows = summarize([{"urls": "vip", "profile": "seed", "trigger": "reconnect",
    ...     "outcome": "wedged", "cycles": 2, "wedged_after_seconds": 20.0,
    ...     "tasks": {"lost": 3, "stranded": 1, "published": 50},
    ...     "cycle_log": [{"max_progress_gap_seconds": 1.0},
    ...                   {"max_progress_gap_seconds": 9.0, "silent": ["n1@hpc"]}]}])
    >>> r = rows[0]; (r["runs"], r["wedged_runs"], r["cycles_survived"], r["lost"], r["stranded"])
    (1, 1, 1, 3, 1)
    >>> r["max_gap"]
    '9.0 (9.0-9.0)'
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("outcome") == "error":
            continue
        by.setdefault(setup_key(run), []).append(run)
    rows = []
    for key, group in by.items():
        ok_cycles = [sum(1 for c in r.get("cycle_log", []) if not c.get("silent")) for r in group]
        gaps = [
            max((c.get("max_progress_gap_seconds") or 0.0) for c in r["cycle_log"])
            for r in group
            if r.get("cycle_log")
        ]
        # Per cycle that survived: the typical (median) longest gap.
        ok_gaps = [
            c["max_progress_gap_seconds"]
            for r in group
            for c in r.get("cycle_log", [])
            if not c.get("silent") and c.get("max_progress_gap_seconds") is not None
        ]
        failover = [
            c["since_down_seconds"]
            for r in group
            for c in r.get("cycle_log", [])
            if c.get("since_down_seconds") is not None
        ]
        answer = [
            c["answer_seconds"]
            for r in group
            for c in r.get("cycle_log", [])
            if not c.get("silent") and c.get("answer_seconds") is not None
        ]
        wedged = [r for r in group if r["outcome"] != "survived"]
        stuck = [r for r in wedged if blocked_in(r) == "connect/handshake"]
        recovered = [
            r
            for r in wedged
            if ((r.get("cycle_log") or [{}])[-1].get("recheck") or {}).get("still_silent") == []
        ]
        tasks = [r.get("tasks") or {} for r in group]
        rows.append(
            {
                "setup": key,
                "runs": len(group),
                "wedged_runs": len(wedged),
                "recovered_on_recheck": len(recovered),
                "stuck_in_handshake": len(stuck),
                "outcomes": [r["outcome"] for r in group],
                "cycles_survived": sum(ok_cycles),
                "cycles_total": sum(len(r.get("cycle_log", [])) for r in group),
                "first_wedge_s": _median_range(
                    [r["wedged_after_seconds"] for r in wedged if r.get("wedged_after_seconds")]
                ),
                "first_wedge_cycle": _median_range(
                    [float(r["cycles"]) for r in wedged if r.get("cycles")]
                ),
                "published": sum(t.get("published", 0) for t in tasks),
                "lost": sum(t.get("lost", 0) for t in tasks),
                "stranded": sum(t.get("stranded", 0) for t in tasks),
                "duplicates": sum(t.get("duplicates", 0) for t in tasks),
                "restarts": sum(len(r.get("restarts") or []) for r in group),
                "max_gap": _median_range(gaps),
                "ok_cycle_gap": _median_range(ok_gaps),
                "answer_s": _median_range(answer),
                "failover_s": _median_range(failover),
                "wedged_workers": [wedge_line(r) for r in wedged],
            }
        )
    order = ["vip:seed", "vip:harden", "nodes:seed", "nodes:harden"]
    triggers = ["reconnect", "node-down"]
    rows.sort(key=lambda r: (_rank(triggers, r["setup"].split(":")[2]), _rank(order, r["setup"])))
    return rows


def blocked_in(run: dict[str, Any]) -> str:
    """Where the run's silent workers were blocked, from their innermost frames.

    ``connect/handshake`` (py-amqp's connect or frame read: the wedge), ``event loop``
    (the worker's loop was running: a late answer), or ``unknown``.

    >>> blocked_in({"silent_workers": [{"stack_top": ["TCPTransport._read (amqp/transport.py:648)",
    ...     "_AbstractTransport.read_frame (amqp/transport.py:297)"]}]})
    'connect/handshake'
    >>> blocked_in({"silent_workers": [{"stack_top": ["_epoll.poll (kombu/utils/eventio.py:83)"]}]})
    'event loop'
    """
    frames = [f for w in run.get("silent_workers") or [] for f in (w.get("stack_top") or [])]
    if any("read_frame" in f or "_connect (" in f or "transport.py" in f for f in frames):
        return "connect/handshake"
    if any("_epoll.poll" in f or "asynloop" in f for f in frames):
        return "event loop"
    return "unknown"


def wedge_line(run: dict[str, Any]) -> str:
    """Who was silent, where, blocked in what, and whether it answered again.

    >>> wedge_line({"cycles": 2, "wedged_worker": "n1@h", "wedged_node": "n1",
    ...     "silent_workers": [{"worker": "n1@h", "stack_top": ["a (x.py:1)", "read_frame (y.py:2)"]}],
    ...     "evidence": {"peer_socket": {"unread_bytes": 8}},
    ...     "cycle_log": [{"recheck": {"still_silent": ["n1@h"], "seconds": 60}}]})
    'n1@h (n1, cycle 2; 1 silent; in connect/handshake; innermost a (x.py:1); peer Recv-Q 8; still silent 60 s later)'
    """
    silent = run.get("silent_workers") or []
    top = next(
        (w.get("stack_top") or [] for w in silent if w.get("worker") == run.get("wedged_worker")),
        [],
    )
    peer = ((run.get("evidence") or {}).get("peer_socket") or {}).get("unread_bytes")
    recheck = (run.get("cycle_log") or [{}])[-1].get("recheck")
    parts = [f"cycle {run.get('cycles')}", f"{len(silent)} silent", f"in {blocked_in(run)}"]
    if top:
        parts.append(f"innermost {top[0]}")
    if peer:
        parts.append(f"peer Recv-Q {peer}")
    if recheck:
        parts.append(
            f"still silent {recheck['seconds']:.0f} s later"
            if recheck.get("still_silent")
            else f"all answered again {recheck.get('recovered_after_seconds')} s later"
        )
    return f"{run.get('wedged_worker')} ({run.get('wedged_node')}, {'; '.join(parts)})"


def _rank(order: list[str], key: str) -> int:
    head = key if key in order else ":".join(key.split(":")[:2])
    return order.index(head) if head in order else len(order)


def _short(commit: str) -> str:
    """``abc...-dirty`` -> 12 hex digits, keeping the dirty mark.

    >>> _short("02d365c5de0c2fa0c006cb12957a6d0037c49675-dirty")
    '02d365c5de0c-dirty'
    """
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def render(args: argparse.Namespace) -> int:
    reports = [json.loads(Path(p).read_text()) for p in args.files]
    runs = [run for rep in reports for run in rep.get("runs", [])]
    rows = summarize(runs)
    versions = next((r["versions"] for r in reports if r.get("versions")), {})
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "commit")
    header = (
        "| setup (URLs:profile:trigger) | runs | runs with a worker silent past the bound "
        "(of which answered again on recheck) | of which blocked in connect/handshake | "
        "cycles survived, of all run | "
        "first silence after s, median (range) | first silence cycle | published | lost | "
        "stranded | dup | restarts | longest gap without a task, s, per run | "
        "longest gap in a survived cycle, s | all answer after VIP, s | "
        "node down -> all answer, s |"
    )
    lines = [
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in rows:
        lines.append(
            f"| `{r['setup']}` | {r['runs']} | {r['wedged_runs']} ({r['recovered_on_recheck']}) | "
            f"{r['stuck_in_handshake']} | "
            f"{r['cycles_survived']} of {r['cycles_total']} | {r['first_wedge_s']} | "
            f"{r['first_wedge_cycle']} | {r['published']} | {r['lost']} | {r['stranded']} | "
            f"{r['duplicates']} | {r['restarts']} | {r['max_gap']} | {r['ok_cycle_gap']} | "
            f"{r['answer_s']} | {r['failover_s']} |"
        )
    wedges = [
        f"- `{r['setup']}`: {', '.join(r['wedged_workers'])}" for r in rows if r["wedged_workers"]
    ]
    text = [
        "<!-- generated by scripts/vip_alternatives.py render; do not edit by hand -->",
        "# VIPs need care: what should replace the VIP (issue 11 part 4)",
        "",
        "The report's loop (`hangproof lab run seed-loop`) on a 3-node RabbitMQ cluster behind the",
        "keepalived VIP and the emulated kube-proxy NodePort, with the workers given either",
        "`--urls vip` (VIP:32672, the report's setup) or `--urls nodes` (the three node addresses at",
        "the NodePort as `;`-separated failover URLs, no VIP), running the seed profile (the report's",
        "stock Celery settings: no handshake deadline) or `harden` (the same app with",
        "`hangproof.celery.harden(app)`). Trigger `reconnect` closes every client connection each",
        "cycle while no node holds the VIP; `node-down` makes the node the VIP leaves stop answering on",
        "its NodePort for one cycle (its connections go dark; clients must fail over).",
        "A run stops at its first silence (a worker alive but silent past the wait bound).",
        "",
        "- measured with `sudo scripts/labrun .venv/bin/python scripts/vip_alternatives.py measure --setups "
        "URLS:PROFILE:TRIGGER,... --runs N --cycles 12 --max-seconds 300 --out docs/data/...`, "
        "one lab per scripts/labrun slot; this page: `scripts/vip_alternatives.py render "
        f"{' '.join(args.files)} --conclusion {args.conclusion or '-'} --out {args.out}`",
        "- raw JSON, one file per lab (scripts/labrun slot):",
        *[
            f"  - `{p}`: {len(rep.get('runs', []))} runs from {rep.get('started', '?')} UTC, "
            f"commit `{_short((rep.get('versions') or {}).get('commit', '?'))}`, at most "
            f"{rep.get('cycles')} cycles / {rep.get('max_seconds')} s per run, wait bound "
            f"{rep.get('wait_seconds')} s (node-down: {rep.get('wait_seconds_node_down', rep.get('wait_seconds'))} s)"
            for p, rep in zip(args.files, reports, strict=True)
        ],
        f"- versions: {shown or '?'}",
        "- the 2-core box was shared with other helpers' labs (load average 11-22 during "
        "these runs): timings are rough.",
        "",
        *lines,
        "",
        "Columns: *longest gap without a task* is the longest stretch, within any cycle of the",
        "run, in which no worker executed a task (the producer publishes 5 tasks/s), median and",
        "range over runs; the wedged cycle counts until the wedge was declared. *Lost* tasks",
        "were published and confirmed but never ran; *stranded* ones are still held by the",
        "broker (unacked on a connection it has not yet declared dead).",
        "",
    ]
    if wedges:
        text += ["Wedged workers (node, cycle):", "", *wedges, ""]
    if args.conclusion:
        text += [Path(args.conclusion).read_text().rstrip(), ""]
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}: {len(rows)} setups, {len(runs)} runs", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vip_alternatives")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--setups", required=True)
    m.add_argument("--runs", type=int, default=3)
    m.add_argument("--cycles", type=int, default=12)
    m.add_argument("--max-seconds", type=float, default=420.0)
    m.add_argument("--wait", type=float, default=20.0)
    # A node gone dark is found by heartbeats (stock: 120 s): give failover time to show.
    m.add_argument("--wait-node-down", type=float, default=150.0)
    m.add_argument("--recheck", type=float, default=60.0)
    m.add_argument("--lab-name", default="hpva")
    m.add_argument("--until", help="UTC HH:MM (same day): start no run after it")
    m.add_argument("--out", required=True)
    r = sub.add_parser("render")
    r.add_argument("files", nargs="+")
    r.add_argument("--out", required=True)
    r.add_argument("--conclusion", help="a markdown file appended as the page's conclusion")
    args = parser.parse_args(argv)
    return measure(args) if args.cmd == "measure" else render(args)


if __name__ == "__main__":
    sys.exit(main())
