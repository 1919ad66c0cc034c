"""``seed-loop``: the report's own reproduction, on the whole lab.

For each node in turn (INCIDENT.md, "How the report reproduced it"):

1. start an HTTP server on :8978 in that node; keepalived's check passes there
   and the VIP follows;
2. wait until every worker answers ``inspect ping``: the report's ``wait_celery``
   (``waiter="literal"``, default; :mod:`hangproof.lab.observe.literal_waiter`), a fresh
   ``celery inspect ping`` CLI every ~4 s from node ``waiter_node`` (n1) through
   VIP:NodePort with the profile's settings and no bound of its own; or
   (``waiter="observer"``) the harness's bounded ping from the first broker's pod,
   within ``wait_seconds``;
3. kill the server; the check fails (``fall 2`` x ``interval 2``) and the VIP
   leaves;
4. sleep 4 s.

With the literal waiter, the loop ends when any AMQP client of the lab (a
worker or the waiter's CLI) is stuck the report's way (``wedged``: ESTAB to
VIP:NodePort, 8 bytes sent, none received, peer Recv-Q 8; the JSON names it in
``wedged_process``), after ``cycles`` cycles or ``max_seconds`` (``survived``).
With the observer, it ends when a worker stays silent past the wait bound:
``wedged`` if its broker socket shows the report's signature (nothing received,
the peer holding the 8-byte header), ``died`` if it exited; one silent without
the signature (a slow reconnect under load) gets ``SLOW_RECHECK_SECONDS`` more,
and the loop goes on if it answers, else the run ends ``silent``. A producer publishes tasks
through the VIP the whole time; the report ends with the task accounting.

Trigger (``extra["trigger"]``). ``none`` (default) is the report's loop
unchanged: with the literal waiter, the waiter's own fresh CLI sends a SYN
every ~4 s, some while the VIP is nowhere, and that is what wedges.
In this lab an established connection survives the VIP's moves (the old
holder keeps its conntrack DNAT entries and forwards), so the workers
themselves rarely send a SYN in the gap. ``reconnect`` is an injected trigger,
not in the report: it makes the workers' reconnect happen every cycle: as the next node's server starts (keepalived moves the VIP
there 4-6 s later), the brokers close every client connection (``rabbitmqctl
close_all_connections``), as when the old connection dies with the move, and
the clients reconnect at once, while no node holds the VIP. (Closing them as
soon as the VIP left was less reliable: a SYN sent on a stale neighbour entry
fails with EHOSTUNREACH after ~8 s, before the VIP arrives.) The CI test
uses it with the observer to find a wedged worker within a few cycles.
``node-down``: when a node's server is killed, that node also stops answering
on its NodePort (inbound packets to its address or the VIP at the NodePort are
dropped, raw table) until the next node's server is killed, so one node is
down at a time: the connections through it go dark and their clients must fail
over.

Broker URLs (``extra["urls"]``, docs/vip-alternatives.md): ``vip`` (default,
the report's VIP:NodePort) or ``nodes`` (the three node addresses at the
NodePort as ``;``-separated failover URLs, no VIP), for the workers and the
producer alike. Profile ``harden`` is the seed's app with
``hangproof.celery.harden(app)``.

    >>> run(lab, RunOptions(profile="seed", cycles=1000, max_seconds=1500))  # doctest: +SKIP
    {'outcome': 'wedged', 'wedged_process': {'kind': 'cli', 'pid': ..., 'fd': 3, 'node': 'n1'}, ...}
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hangproof.errors import HangproofError
from hangproof.lab.clients.accounting import Ledger
from hangproof.lab.clients.workers import WorkerFleet, python_stack
from hangproof.lab.components.keepalived import (
    CHECK_PORT,
    KeepalivedNode,
    KeepalivedSpec,
    read_events,
    wait_for_vip,
)
from hangproof.lab.engine import processes
from hangproof.lab.engine.lab import Lab
from hangproof.lab.mitigations import Mitigation, make_mitigation
from hangproof.lab.observe.literal_waiter import LiteralWaiter, WedgeWatcher
from hangproof.lab.observe.timeline import CellRecorder, seed_loop_log, write_report
from hangproof.lab.scenarios import RunOptions
from hangproof.lab.scenarios.race import collect_evidence
from hangproof.report.events import LANE_FAULT, client_lane

NAME = "seed-loop"
HELP = "The report's loop: move the VIP round the nodes until a worker stops answering."
TRIGGERS = ("none", "reconnect", "node-down")
WAITERS = ("literal", "observer")
#: The report's pause after killing the HTTP server.
SLEEP_AFTER_KILL = 4.0
#: Default bound on step 2; stock Celery's reconnects (4 s connect timeout plus
#: retry intervals) take up to ~20 s here, so a silence past this is no delay.
DEFAULT_WAIT_SECONDS = 45.0
#: keepalived needs ~1-2 s for the check plus ~3 s (3 x advert_int) to take over.
VIP_MOVE_TIMEOUT = 20.0
STARTUP_TIMEOUT = 120.0
DRAIN_TIMEOUT = 30.0
#: Observer waiter: a worker silent past the bound without the report's
#: signature gets this much longer to answer before the run ends "silent".
SLOW_RECHECK_SECONDS = 30.0
DEFAULT_RATE = 5.0
#: ``lab run seed-loop``'s default --max-seconds: the literal waiter has no bound of its
#: own, and on a shared 2-core box its cycles take 40-180 s (docs/seed-loop.md).
DEFAULT_MAX_SECONDS = 1800.0


def run(lab: Lab, options: RunOptions) -> dict[str, Any]:
    """Run the loop; returns the JSON report (outcome, cycles, evidence, tasks...)."""
    extra = options.extra
    trigger = str(extra.get("trigger", "none"))
    waiter_kind = str(extra.get("waiter", "literal"))
    wait_seconds = float(extra.get("wait_seconds", DEFAULT_WAIT_SECONDS))
    rate = float(extra.get("rate", DEFAULT_RATE))
    # After a silence (observer waiter): ping again for this long to tell a wedge
    # from a slow recovery (0: stop at once, as before).
    recheck_seconds = float(extra.get("recheck_seconds") or 0.0)
    urls = str(extra.get("urls") or "vip")
    if trigger not in TRIGGERS:
        raise HangproofError(f"unknown trigger {trigger!r}; choose one of: {', '.join(TRIGGERS)}")
    if waiter_kind not in WAITERS:
        raise HangproofError(f"unknown waiter {waiter_kind!r}; choose one of: {', '.join(WAITERS)}")
    fix = make_mitigation(options.mitigation)
    if not 1 <= options.cycles <= 10000:
        raise HangproofError("--cycles must be between 1 and 10000")
    say = lab.progress
    topo = lab.topo
    nodes = [n.name for n in topo.nodes]
    waiter_node = str(extra.get("waiter_node") or nodes[0])
    if waiter_node not in nodes:
        raise HangproofError(
            f"unknown --waiter-node {waiter_node!r}; choose one of: {', '.join(nodes)}"
        )
    state = lab.state
    ledger = Ledger(state.directory / "ledger")
    ledger.reset()
    fleet = WorkerFleet(
        lab,
        profile=options.profile,
        celery_config=options.celery_config,
        ledger=ledger.directory,
        urls=urls,
    )
    versions = _versions(lab)  # at the start: the commit of the code that runs
    loop_started = time.monotonic()
    run_started = time.time()
    undo: list[Any] = []
    keepaliveds: list[KeepalivedNode] = []
    servers: dict[str, int] = {}
    down: dict[str, list[list[str]]] = {}  # --trigger node-down: node -> its DROP rules
    down_since: float | None = None
    producer_pid: int | None = None
    cycles: list[dict[str, Any]] = []
    wedged: dict[str, Any] | None = None
    outcome = "survived"
    tasks: dict[str, int] = {}
    silent_details: list[dict[str, Any]] = []
    supervise = bool(extra.get("supervise", True))
    restarts: list[dict[str, Any]] = []
    report = extra.get("report")
    watcher = WedgeWatcher(
        lab, fleet, min_idle_ms=int(float(extra.get("wedge_idle_seconds", 10.0)) * 1000)
    )
    waiter = LiteralWaiter(lab, fleet, watcher, waiter_node, state.directory / "waiter.log",
                           supervise=supervise, say=say, restarts=restarts)  # fmt: skip
    deadline = loop_started + options.max_seconds
    pings: list[dict[str, Any]] = []
    stuck_report: dict[str, Any] | None = None
    cycle_one_started: float | None = None
    # The timeline: tasks per second sampled from the ledger, the loop's steps noted as they happen.
    recorder = CellRecorder(NAME, options.profile, ledger.executed_dir, ledger.published_path,
                            state.directory / "none") if report else None  # fmt: skip

    def note(lane: str, kind: str, label: str, evidence: str = "") -> None:
        if recorder:
            recorder.note(lane, kind, label, evidence)

    def start_server(node: str) -> None:
        proc = processes.spawn(
            [sys.executable, "-m", "http.server", str(CHECK_PORT), "--bind", "127.0.0.1"],
            netns=topo.ns(node),
        )
        state.track("http-8978", node, proc.pid, topo.ns(node))
        servers[node] = proc.pid
        note(
            LANE_FAULT, "heal", f"HTTP :8978 started on {node}: its check passes", f"pid {proc.pid}"
        )

    def kill_server(node: str) -> None:
        pid = servers.pop(node, None)
        if pid is not None:
            processes.stop_pid(pid, grace=1.0)
            state.untrack(pid)
            note(
                LANE_FAULT,
                "inject",
                f"HTTP :8978 killed on {node}: the VIP will leave",
                f"pid {pid}",
            )

    def move_away(node: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """Steps 3 and 4: kill the server, sleep 4 s (watching every client, literal waiter)."""
        nonlocal down_since
        kill_server(node)
        if trigger == "node-down":
            for other in list(down):
                _node_up(lab, other, down.pop(other))
            down[node] = _node_down(lab, node)
            down_since = time.monotonic()
            note(LANE_FAULT, "inject", f"{node} stops answering on its NodePort (node-down)")
        if waiter_kind == "literal":
            return watcher.sleep(SLEEP_AFTER_KILL, until=deadline)
        time.sleep(SLEEP_AFTER_KILL)
        return None

    try:
        _clear_vip(lab)
        # A previous run's dead connections would still own the workers'
        # exclusive pidbox queues (RESOURCE_LOCKED at start): start clean.
        _close_client_connections(lab)
        _purge_task_queue(lab)
        undo += _apply_mitigation(lab, fix)
        if recorder:
            recorder.start()
        for node in nodes:
            notify = [" ".join(argv) for argv in fix.on_vip_added(topo.vip)]
            ka = KeepalivedNode(
                KeepalivedSpec(
                    node=node, router_id=f"{topo.name}-{node}", vip=topo.vip, notify_master=notify
                ),
                topo.ns(node),
                state.directory / f"keepalived-{node}",
            )
            ka.start(state)
            keepaliveds.append(ka)
        say(
            f"keepalived on {', '.join(nodes)}"
            + (" (notify_master: conntrack -D -d VIP)" if notify else "")
        )
        # Before cycle 1 the VIP sits on the last node, so the workers can
        # connect; then the loop starts from the first node as the report's did.
        start_server(nodes[-1])
        if wait_for_vip(lab.vip_holders, nodes[-1], VIP_MOVE_TIMEOUT) is None:
            raise HangproofError(
                f"keepalived did not move the VIP to {nodes[-1]}; see {state.directory}/keepalived-*"
            )
        fleet.start()
        missing, took = fleet.wait_all_answer(STARTUP_TIMEOUT)
        if missing:
            raise HangproofError(
                f"workers {', '.join(missing)} did not answer within {STARTUP_TIMEOUT:.0f} s "
                f"of starting; see {state.directory}/worker-*.log"
            )
        say(f"{len(fleet.workers)} workers answer ping ({took:.1f} s)")
        producer_pid = _start_producer(lab, fleet, rate, options.max_seconds + 120)
        run_started = time.time()
        watcher.producer_pid = producer_pid
        move_away(nodes[-1], {})

        for c in range(1, options.cycles + 1):
            if time.monotonic() - loop_started > options.max_seconds:
                say(f"--max-seconds {options.max_seconds:.0f} reached")
                break
            node = nodes[(c - 1) % len(nodes)]
            started = time.monotonic()
            if cycle_one_started is None:
                cycle_one_started = started
            start_server(node)
            record: dict[str, Any] = {"cycle": c, "node": node, "t_start": round(time.time(), 3)}
            if down:
                record["down_node"] = next(iter(down))
            if trigger == "reconnect":
                # keepalived takes ~4-6 s to move the VIP here; the clients'
                # SYNs go out now, while no node holds it.
                record["brokers_closed_connections"] = _close_client_connections(lab)
                note(
                    LANE_FAULT,
                    "inject",
                    "brokers closed every client connection (--trigger reconnect)",
                )
            if waiter_kind == "literal":
                # The report's loop: no wait for the VIP, straight into wait_celery.
                t_cycle = watcher.now()
                waited = waiter.wait_celery(len(fleet.workers), until=deadline, cycle=c)
                pings += waited.pings
                record["vip_seconds"] = _vip_arrival(watcher.vip_log, node, t_cycle)
                record["answer_seconds"] = round(waited.seconds, 2)
                record["pings"] = len(waited.pings)
                stuck = waited.stuck
                if down_since is not None and waited.outcome == "answered":
                    record["since_down_seconds"] = round(time.monotonic() - down_since, 2)
                if waited.outcome == "answered":
                    note(client_lane("waiter (inspect ping)"), "ready",
                         f"cycle {c}: every worker answered ping ({waited.seconds:.1f} s)")  # fmt: skip
                    stuck = move_away(node, record)
                record["seconds"] = round(time.monotonic() - started, 2)
                record["t_end"] = round(time.time(), 3)
                cycles.append(record)
                if stuck:
                    record["stuck"] = f"{stuck['kind']} pid {stuck['pid']} fd {stuck['fd']}"
                    stuck_report = _stuck_report(lab, stuck, c, cycle_one_started)
                    waiter.finish()
                    outcome = "wedged"
                    note(client_lane(stuck_report["name"] or "client"), "wedged",
                         f"{stuck_report['name']} (pid {stuck['pid']}, fd {stuck['fd']}) stuck",
                         json.dumps(stuck_report["evidence"], default=str)[:3000])  # fmt: skip
                    break
                if waited.outcome == "deadline":
                    say(f"--max-seconds {options.max_seconds:.0f} reached in cycle {c}")
                    break
                say(
                    f"cycle {c} on {node}: VIP in {record['vip_seconds']} s, all answered after "
                    f"{len(waited.pings)} ping(s), {waited.seconds:.1f} s, cycle {record['seconds']:.1f} s"
                )
                continue
            vip_s = wait_for_vip(lab.vip_holders, node, VIP_MOVE_TIMEOUT)
            missing, answer_s = fleet.wait_all_answer(wait_seconds)
            if missing and supervise:
                # A worker that exited is restarted by its supervisor (as a
                # pod would be); only one that is alive and silent is wedged.
                restarted = fleet.restart_exited()
                if restarted:
                    for r in restarted:
                        r["cycle"] = c
                        say(f"cycle {c}: {r['worker']} had exited ({r['reason']}); restarted")
                    restarts.extend(restarted)
                    record["restarted"] = [r["worker"] for r in restarted]
                    missing, more_s = fleet.wait_all_answer(STARTUP_TIMEOUT)
                    answer_s += more_s
            record |= {
                "vip_seconds": round(vip_s, 2) if vip_s is not None else None,
                "answer_seconds": round(answer_s, 2),
            }
            if down_since is not None and not missing:
                # Failover: from the node going down to every worker answering again.
                record["since_down_seconds"] = round(time.monotonic() - down_since, 2)
            reports = [_wedge_report(lab, fleet, name) for name in missing]
            if missing and not any(_reports_signature(w) for w in reports):
                # Silent past the bound, but no socket the report's way (the
                # client socket had received bytes: measured under load, 537-625
                # B, a slow reconnect). Not the report's wedge: ask again once.
                still, later_s = _still_silent(fleet, missing, SLOW_RECHECK_SECONDS)
                record["slow"] = {
                    "workers": missing,
                    "answered_after_seconds": None if still else round(later_s, 2),
                    "client_bytes_received": {
                        w["worker"]: ((w["evidence"] or {}).get("client_socket") or {}).get(
                            "bytes_received"
                        )
                        for w in reports
                    },
                }
                say(
                    f"cycle {c} on {node}: {', '.join(missing)} silent past {wait_seconds:.0f} s "
                    "without the report's signature; "
                    + (
                        f"answered {later_s:.1f} s later (slow, not wedged)"
                        if not still
                        else f"{', '.join(still)} still silent after {SLOW_RECHECK_SECONDS:.0f} s"
                    )
                )
                answer_s += later_s
                missing = still
                reports = [_wedge_report(lab, fleet, name) for name in missing]
            if missing:
                record["silent"] = missing
                record["seconds"] = round(time.monotonic() - started, 2)
                record["t_end"] = round(time.time(), 3)
                cycles.append(record)
                say(f"cycle {c} on {node}: {', '.join(missing)} silent past {wait_seconds:.0f} s")
                for w in reports:
                    note(client_lane(w["worker"].split("@")[0]), "wedged" if w["alive"] else "exit",
                         f"{w['worker']} silent past {wait_seconds:.0f} s",
                         json.dumps(w["evidence"], default=str)[:3000])  # fmt: skip
                # The worker the report describes: its peer holds our 8-byte header.
                wedged = next((w for w in reports if _reports_signature(w)), reports[0])
                silent_details = [
                    {
                        "worker": w["worker"],
                        "alive": w["alive"],
                        "peer_unread_bytes": ((w["evidence"] or {}).get("peer_socket") or {}).get(
                            "unread_bytes"
                        ),
                        "stack_top": _stack_top(w["python_stack"]),
                    }
                    for w in reports
                ]
                # Alive and silent, but not the report's way (after a second
                # bound): "silent", never counted as the report's wedge.
                outcome = (
                    "died"
                    if not wedged["alive"]
                    else ("wedged" if _reports_signature(wedged) else "silent")
                )
                if recheck_seconds > 0:
                    # Evidence taken; now tell a wedge from a slow recovery: a
                    # wedged worker is still silent after another bound.
                    still, recheck_s = _still_silent(fleet, missing, recheck_seconds)
                    record["recheck"] = {
                        "seconds": recheck_seconds,
                        "still_silent": still,
                        "recovered_after_seconds": None if still else round(recheck_s, 2),
                    }
                    say(
                        f"recheck: {', '.join(still)} still silent after {recheck_seconds:.0f} s"
                        if still
                        else f"recheck: every worker answered {recheck_s:.1f} s later"
                    )
                break
            note(
                client_lane("waiter (inspect ping)"),
                "ready",
                f"cycle {c}: every worker answered ping ({answer_s:.1f} s)",
            )
            move_away(node, record)
            record["seconds"] = round(time.monotonic() - started, 2)
            record["t_end"] = round(time.time(), 3)
            cycles.append(record)
            say(
                f"cycle {c} on {node}: VIP in {record['vip_seconds']} s, all answered in "
                f"{answer_s:.1f} s, cycle {record['seconds']:.1f} s"
            )

        # Accounting: stop publishing, let the answering workers drain the queue.
        if producer_pid is not None:
            processes.stop_pid(producer_pid, grace=3.0)
            state.untrack(producer_pid)
            producer_pid = None
        if not servers:
            start_server(nodes[0])
            wait_for_vip(lab.vip_holders, nodes[0], VIP_MOVE_TIMEOUT)
        tasks = ledger.wait_drained(DRAIN_TIMEOUT).to_dict()
        for rec in cycles:
            rec["max_progress_gap_seconds"] = max_gap(
                ledger.execution_times(), rec["t_start"], rec["t_end"]
            )
        # A task still held by the broker (ready, or unacked on a connection
        # the broker has not yet declared dead: its heartbeat timeout can be
        # minutes) is stranded, not lost: it runs once the broker lets go.
        held = _held_by_broker(lab)
        if held is not None:
            tasks["stranded"] = min(tasks["lost"], held)
            tasks["lost"] -= tasks["stranded"]
        say(f"tasks: {tasks}")
    finally:
        if recorder:
            recorder.mark("end")
            recorder.stop()
        if producer_pid is not None:
            processes.stop_pid(producer_pid, grace=3.0)
            state.untrack(producer_pid)
        waiter.finish()
        fleet.stop()
        for node in list(down):
            _node_up(lab, node, down.pop(node))
        for node in list(servers):
            kill_server(node)
        for ka in keepaliveds:
            ka.stop(state)
        for fn in reversed(undo):
            with contextlib.suppress(Exception):
                fn()
        _clear_vip(lab)

    result = {
        "scenario": NAME,
        "outcome": outcome,
        "cycles": len(cycles),
        "profile": options.profile,
        "celery_config": options.celery_config,
        "mitigation": options.mitigation,
        "trigger": trigger,
        "urls": urls,
        "wait_seconds": wait_seconds,
        "wall_seconds": round(time.monotonic() - loop_started, 1),
        "cycle_log": cycles,
        "wedged_worker": wedged["worker"] if wedged else None,
        "wedged_cycle": len(cycles) if wedged else None,
        # From the loop proper (workers up, producer started) to the start of
        # the cycle that wedged: the wedge happened within that cycle's first seconds.
        "wedged_after_seconds": (
            round(cycles[-1]["t_start"] - run_started, 1) if wedged and cycles else None
        ),
        "wedged_node": wedged["node"] if wedged else None,
        "evidence": wedged["evidence"] if wedged else None,
        "python_stack": wedged["python_stack"] if wedged else None,
        "silent_workers": silent_details,
        "supervised": supervise,
        "restarts": restarts,
        "tasks": tasks,
        "waiter": waiter_kind,
        "waiter_node": waiter_node if waiter_kind == "literal" else None,
    }
    if waiter_kind == "literal":
        w = stuck_report
        result |= {
            "wedged_process": w["process"] if w else None,
            "wedged_worker": w["name"] if w and w["process"]["kind"] == "worker" else None,
            "wedged_cycle": w["cycle"] if w else None,
            "wedged_node": w["process"]["node"] if w else None,
            "time_to_wedge_seconds": w["time_to_wedge_seconds"] if w else None,
            "evidence": w["evidence"] if w else None,
            "python_stack": w["python_stack"] if w else None,
            "wedge_idle_seconds": watcher.min_idle_ms / 1000,
            "waiter_pings": pings,
            "vip_log": watcher.vip_log,
            "syn_log": watcher.syn_log,
        }
    result["versions"] = versions
    if recorder and report:
        # Every worker's log, restarted ones included (the fleet is empty once stopped).
        logs = {p.stem.removeprefix("worker-"): p for p in state.directory.glob("worker-*.log")}
        timeline = seed_loop_log(recorder, result, read_events(state.directory), logs)
        result["report"] = write_report(timeline, Path(report), say)
    return result


def max_gap(times: list[float], start: float, end: float) -> float:
    """Longest stretch of [start, end] with no task executed (``times`` sorted, wall clock).

    >>> max_gap([1.0, 1.5, 4.0], 0.5, 5.0)
    2.5
    >>> max_gap([], 0.0, 3.0)
    3.0
    """
    points = [start, *(t for t in times if start < t < end), end]
    return round(max(b - a for a, b in itertools.pairwise(points)), 2)


def _reports_signature(report: dict[str, Any]) -> bool:
    """The report's wedge: a live worker whose broker socket received nothing
    while its peer (the port holder) holds the 8-byte header unread.

    >>> _reports_signature({"alive": True, "evidence": {
    ...     "client_socket": {"bytes_received": 0}, "peer_socket": {"unread_bytes": 8}}})
    True
    >>> _reports_signature({"alive": True, "evidence": {
    ...     "client_socket": {"bytes_received": 625}, "peer_socket": None}})
    False
    """
    ev = report.get("evidence") or {}
    client, peer = ev.get("client_socket") or {}, ev.get("peer_socket") or {}
    return bool(
        report.get("alive") and peer.get("unread_bytes") == 8 and not client.get("bytes_received")
    )


def _still_silent(fleet: WorkerFleet, names: list[str], bound: float) -> tuple[list[str], float]:
    """Which of ``names`` still do not answer ping within ``bound`` seconds."""
    start = time.monotonic()
    left = set(names)
    for _ in range(int(bound / 0.5) + 1):
        left -= set(fleet.ping())
        if not left or time.monotonic() - start > bound:
            break
        time.sleep(0.5)
    return sorted(left), time.monotonic() - start


def _node_down_rules(lab: Lab, node: str) -> list[list[str]]:
    """Raw-table DROPs: the node no longer answers on its NodePort (address or VIP)."""
    t = lab.topo
    port = ["-p", "tcp", "--dport", str(t.node_port), "-j", "DROP"]
    addr = t.node(node).address
    return [
        ["PREROUTING", "-d", addr, *port],
        ["PREROUTING", "-d", t.vip, *port],
        ["OUTPUT", "-d", addr, *port],
    ]


def _node_down(lab: Lab, node: str) -> list[list[str]]:
    rules = _node_down_rules(lab, node)
    for rule in rules:
        processes.run(
            ["iptables", "-t", "raw", "-I", *rule[:1], "1", *rule[1:]], netns=lab.topo.ns(node)
        )
    lab.progress(f"{node} down: its NodePort drops every inbound packet")
    return rules


def _node_up(lab: Lab, node: str, rules: list[list[str]]) -> None:
    for rule in rules:
        processes.run(["iptables", "-t", "raw", "-D", *rule], netns=lab.topo.ns(node), check=False)
    lab.progress(f"{node} up again")


def _versions(lab: Lab) -> dict[str, str]:
    """The version set and commit this run measured (docs/seed-loop.md shows it)."""
    from hangproof.lab.scenarios.fault_matrix import version_set

    versions = version_set()
    # The lab's brokers are this host's rabbitmq-server (rabbitmqctl version costs an Erlang VM).
    with contextlib.suppress(Exception):
        out = processes.run(
            ["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], check=False
        ).stdout.strip()
        if out:
            versions["rabbitmq"] = out.split("-")[0]
    with contextlib.suppress(OSError):
        versions["kernel"] = Path("/proc/sys/kernel/osrelease").read_text().strip()
    return versions


def _vip_arrival(vip_log: list[dict[str, Any]], node: str, since: float) -> float | None:
    """Seconds after ``since`` at which the watcher first saw ``node`` hold the VIP."""
    for entry in vip_log:
        if entry["t"] >= since and entry["holder"] == node:
            return round(entry["t"] - since, 2)
    return None


def _stuck_report(
    lab: Lab, stuck: dict[str, Any], cycle: int, cycle_one_started: float | None
) -> dict[str, Any]:
    """The report's evidence for a stuck client, read while it is still stuck."""
    sport = int(stuck["local"].rpartition(":")[2])
    evidence = collect_evidence(lab, stuck["node"], sport)
    evidence["ss_node"] = stuck["ss"]  # the raw ss -Htanpie text it was found in
    stack = python_stack(stuck["pid"])
    process = {k: v for k, v in stuck.items() if k not in ("ss", "t")}
    # When the header went out: detection time minus how long the socket had been idle.
    t_loop = time.monotonic() - (cycle_one_started or time.monotonic())
    lab.progress(
        f"stuck: {stuck['kind']} {stuck['name'] or ''} pid {stuck['pid']} fd {stuck['fd']} on "
        f"{stuck['node']}: {stuck['bytes_sent']} B sent, none received, peer Recv-Q "
        f"{stuck['peer_recv_q']}, listener {evidence['listener_owner']}, "
        f"dnat={(evidence['conntrack'] or {}).get('dnat')}"
    )
    return {
        "name": stuck["name"],
        "process": process,
        "cycle": cycle,
        "time_to_wedge_seconds": round(max(0.0, t_loop - stuck["idle_ms"] / 1000), 1),
        "evidence": evidence,
        "python_stack": stack,
    }


def _clear_vip(lab: Lab) -> None:
    for n in lab.topo.nodes:
        lab.del_vip(n.name)
        lab.conntrack_flush_vip(n.name)


def _apply_mitigation(lab: Lab, fix: Mitigation) -> list[Any]:
    """Deploy a node-side fix on every node, as a user would; returns undo functions.

    What a fix does when the VIP arrives (conntrack-flush) is deployed through
    keepalived's notify_master instead.
    """
    undo: list[Any] = []
    for node in (n.name for n in lab.topo.nodes):
        if fix.apply(lab, node):
            undo.append(lambda node=node: fix.remove(lab, node))
    return undo


def _start_producer(lab: Lab, fleet: WorkerFleet, rate: float, seconds: float) -> int:
    node = lab.topo.nodes[-1].name
    proc = processes.spawn(
        [
            sys.executable,
            "-m",
            "hangproof.lab.clients.celery_app",
            "produce",
            str(rate),
            str(seconds),
        ],
        netns=lab.topo.ns(node),
        env={**fleet.env(fleet.broker_url), "HANGPROOF_PROFILE": "stock"},
        log=lab.state.directory / "producer.log",
    )
    lab.state.track("producer", node, proc.pid, lab.topo.ns(node))
    lab.progress(f"producer on {node} (pid {proc.pid}): {rate:g} tasks/s ({fleet.urls} URLs)")
    return proc.pid


def _close_client_connections(lab: Lab) -> int:
    """Every broker closes its client connections (the old connections die).

    Returns how many brokers did it (rabbitmqctl -q prints no per-connection lines).
    """

    def close(b: str) -> int:
        rn = lab.broker(b)
        try:
            rn.ctl("close_all_connections", "-n", rn.nodename, "--global", "VIP moved")
        except (HangproofError, TimeoutError):
            return 0
        return 1

    with ThreadPoolExecutor(max_workers=len(lab.topo.brokers)) as pool:
        return sum(pool.map(close, lab.topo.brokers))


def _stack_top(stack: str | None, frames: int = 4) -> list[str]:
    """The innermost frames of the main thread from a py-spy dump."""
    if not stack:
        return []
    lines = [line.strip() for line in stack.splitlines() if line.startswith("    ")]
    return lines[:frames]


def _held_by_broker(lab: Lab) -> int | None:
    """Messages ready or unacknowledged in the task queue, or None if unknown."""
    try:
        out = lab.broker(lab.topo.brokers[0]).ctl(
            "list_queues", "name", "messages_ready", "messages_unacknowledged"
        )
    except HangproofError:
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "celery" and fields[1].isdigit():
            return int(fields[1]) + int(fields[2])
    return None


def _purge_task_queue(lab: Lab) -> None:
    """Tasks left queued by an earlier run would be counted as unexpected."""
    with contextlib.suppress(HangproofError):
        lab.broker(lab.topo.brokers[0]).ctl("purge_queue", "celery")


def _wedge_report(lab: Lab, fleet: WorkerFleet, name: str) -> dict[str, Any]:
    """Evidence from the silent worker's broker socket, and its Python stack."""
    worker = fleet.by_name(name)
    alive = processes.pid_alive(worker.pid)
    evidence: dict[str, Any] | None = None
    for sock in fleet.broker_sockets(worker) if alive else []:
        sport = int(sock["local"].rpartition(":")[2])
        ev = collect_evidence(lab, worker.node, sport)
        # Prefer the socket the report describes: the peer holds our 8-byte header.
        if evidence is None or (ev.get("peer_socket") or {}).get("unread_bytes"):
            evidence = ev
    lab.progress(
        f"{name} on {worker.node}: "
        + (
            f"peer socket unread {evidence['peer_socket']['unread_bytes']} B, "
            f"listener {evidence['listener_owner']}, dnat={evidence['conntrack']['dnat'] if evidence['conntrack'] else '?'}"
            if evidence and evidence.get("peer_socket")
            else "no wedged socket found"
        )
    )
    return {
        "worker": name,
        "node": worker.node,
        "pid": worker.pid,
        "alive": alive,
        "evidence": evidence,
        "python_stack": python_stack(worker.pid) if alive else None,
    }


def summary(r: dict[str, Any]) -> str:
    """The human output of ``hangproof lab run seed-loop``: outcome, wedge evidence, tasks."""
    lines = [
        f"{r.get('scenario')}: {r.get('outcome')} after {r.get('cycles')} cycle(s), "
        f"{r.get('wall_seconds')} s (profile {r.get('profile')}, mitigation {r.get('mitigation')})"
    ]
    wp = r.get("wedged_process")
    if wp:
        lines.append(
            f"  wedged: {wp['kind']} {wp.get('name') or ''} (pid {wp['pid']}, fd {wp['fd']}, "
            f"{wp.get('owner')}) on {wp['node']} at cycle {r.get('wedged_cycle')}, "
            f"{r.get('time_to_wedge_seconds')} s into the loop"
        )
    elif r.get("wedged_worker"):
        lines.append(
            f"  wedged: {r['wedged_worker']} on {r['wedged_node']} at cycle {r['wedged_cycle']}"
        )
    if wp or r.get("wedged_worker"):
        ev = r.get("evidence") or {}
        if ev.get("client_socket"):
            cs, peer = ev["client_socket"], ev.get("peer_socket") or {}
            lines.append(
                f"  client socket {cs['local']} -> {cs['remote']} {cs['state']}, "
                f"bytes received {cs['bytes_received']}"
            )
            lines.append(
                f"  peer socket unread {peer.get('unread_bytes')} B, owner {peer.get('owner')}; "
                f"listener {ev.get('listener_owner')}; "
                f"conntrack dnat={(ev.get('conntrack') or {}).get('dnat')}"
            )
        stack = (r.get("python_stack") or "").strip().splitlines()
        if stack:
            lines.append("  python stack (py-spy):")
            lines += [f"    {line}" for line in stack[:14]]
    for restart in r.get("restarts") or []:
        lines.append(
            f"  restarted by the supervisor at cycle {restart['cycle']}: {restart['worker']} "
            f"(exited: {restart.get('reason') or 'no error logged'})"
        )
    lines.append(f"  tasks: {r.get('tasks')}")
    return "\n".join(lines)
