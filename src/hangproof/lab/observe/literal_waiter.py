"""The report's ``wait_celery``, literally, and a watch on every AMQP client of the lab.

The report waited for its workers with::

    wait_celery(){
       while true; do
         sleep 3
         online_celery=$(celery -A coaster.conductor.app inspect ping | grep celery | wc -l)
         [ $online_celery -eq 4 ] && break
       done
    }

:class:`LiteralWaiter` does exactly that: every ~4 s a fresh ``celery -A
hangproof.lab.clients.celery_app inspect ping`` process (the real CLI, the venv's
``celery`` script, so ``ss`` names it ``celery`` as in the report), in node
``n1``'s namespace, through VIP:NodePort, with the profile's settings (the
seed profile: no connection timeout) and no bound of its own: only the run's
deadline stops it. The report counted ``grep celery`` lines (its hostnames
were ``celery@node-N``); the lab counts the ``-> NAME: OK`` lines.

A CLI that wedges never returns, and a worker that wedges never answers, so
the loop would wait forever, as the report's did. :class:`WedgeWatcher` looks
at every client socket in every node's namespace instead (``ss``, parsed by
:mod:`hangproof.lab.observe.evidence`) and names the first one stuck the report's way:
ESTAB to VIP:NodePort, 8 bytes sent, none received, the peer socket in the
same node holding Recv-Q 8.

Each CLI run is logged with the VIP holder when it started, how it ended
(rc, the error it printed) and the SYNs the node's trace hooks counted meanwhile
(:mod:`hangproof.lab.components.hooks`): the SYN-level record of what a SYN sent while no
node holds the VIP meets.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hangproof.credentials import mask_url
from hangproof.lab.clients.workers import WorkerFleet
from hangproof.lab.components.hooks import parse_trace_counters
from hangproof.lab.engine import processes
from hangproof.lab.engine.lab import Lab
from hangproof.lab.observe.evidence import (
    WEDGE_IDLE_MS,
    ss_records,
    stuck_handshakes,
)

#: The report's ``sleep 3`` before each ping.
SLEEP_BEFORE_PING = 3.0
#: How often the watcher reads every node's sockets.
WATCH_INTERVAL = 1.0
_OK_LINE = re.compile(r"^->\s+(?P<name>\S+):\s+OK\b")


def count_online(output: str) -> list[str]:
    """Hostnames that answered, from ``celery inspect ping`` output.

    >>> count_online("->  n1@hpc: OK\\n        pong\\n->  n2@hpc: OK\\n        pong\\n\\n2 nodes online.")
    ['n1@hpc', 'n2@hpc']
    """
    return [m["name"] for m in map(_OK_LINE.match, output.splitlines()) if m]


def last_error(output: str) -> str | None:
    """The last line of CLI output that names an error (masked, bounded).

    >>> last_error("Error: No nodes replied within time constraint")
    'Error: No nodes replied within time constraint'
    """
    for line in reversed(output.splitlines()):
        if "rror" in line or "Errno" in line or "refused" in line or "unreachable" in line:
            return mask_url(line.strip())[-300:]
    return None


def syn_counts(lab: Lab, node: str) -> dict[str, int]:
    """SYNs to VIP:NodePort counted so far in ``node``: ``{"OUTPUT eth0": n, ...}``."""
    text = processes.run(
        ["iptables-save", "-c", "-t", "mangle"], netns=lab.topo.ns(node), check=False
    ).stdout
    return {f"{c.hook} {c.interface}": c.packets for c in parse_trace_counters(text)}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


@dataclass
class WedgeWatcher:
    """Reads every node's client sockets; names the first one stuck the report's way."""

    lab: Lab
    fleet: WorkerFleet
    min_idle_ms: int = WEDGE_IDLE_MS
    started: float = field(default_factory=time.monotonic)
    cli_pids: set[int] = field(default_factory=set)
    producer_pid: int | None = None
    vip_log: list[dict[str, Any]] = field(default_factory=list)
    #: Every SYN-SENT socket to VIP:NodePort the watcher saw, once its fate is known.
    syn_log: list[dict[str, Any]] = field(default_factory=list)
    _syn_open: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def vip_holder(self) -> str | None:
        return self.vip_log[-1]["holder"] if self.vip_log else None

    def poll(self) -> dict[str, Any] | None:
        """One look at every node; the first stuck client (with the raw ss text) or None."""
        topo = self.lab.topo
        holders = self.lab.vip_holders()
        holder = holders[0] if len(holders) == 1 else ("+".join(holders) or None)
        if not self.vip_log or self.vip_log[-1]["holder"] != holder:
            self.vip_log.append({"t": self.now(), "holder": holder})
        found = None
        for node in (n.name for n in topo.nodes):
            text = processes.run(["ss", "-Htanpie"], netns=topo.ns(node), check=False).stdout
            records = ss_records(text)
            self.track_syns(node, records, holder)
            for s in stuck_handshakes(records, topo.vip, topo.node_port, self.min_idle_ms):
                found = found or {**s, "node": node, **self.identify(s["pid"]), "t": self.now(),
                                  "ss": text}  # fmt: skip
        return found

    def track_syns(self, node: str, records: list[dict[str, Any]], holder: str | None) -> None:
        """Follow each SYN-SENT socket to VIP:NodePort until it is ESTAB or gone.

        What a SYN sent while no node holds the VIP meets, socket by socket: an
        answer (ESTAB; through another node's DNAT, or the local port holder),
        or an error before that (the socket is gone within seconds: EHOSTUNREACH
        once the neighbour entry of the VIP fails), or silence (still SYN-SENT).
        """
        topo = self.lab.topo
        target = f"{topo.vip}:{topo.node_port}"
        now = self.now()
        by_local = {r["local"]: r for r in records if r["remote"] == target}
        syn_sent = [r for r in by_local.values() if r["state"] == "SYN-SENT"]
        neigh = self.neighbour(node) if syn_sent else None
        for r in syn_sent:
            key = (node, r["local"])
            entry = self._syn_open.get(key)
            if entry is None:
                entry = self._syn_open[key] = {
                    "node": node, "local": r["local"], "pid": r["pid"],
                    **(self.identify(r["pid"]) if r["pid"] else {"kind": None, "name": None}),
                    "first_t": now, "vip_at_first": holder, "neigh": [],
                }  # fmt: skip
            entry["last_t"] = now
            entry["timer"] = r.get("timer")
            if neigh and (not entry["neigh"] or entry["neigh"][-1] != neigh):
                entry["neigh"].append(neigh)
        for key in [k for k in self._syn_open if k[0] == node]:
            r = by_local.get(key[1])
            if r is not None and r["state"] == "SYN-SENT":
                continue
            entry = self._syn_open.pop(key)
            entry["end_t"] = now
            entry["vip_at_end"] = holder
            if r is not None and r["state"] == "ESTAB":
                entry["fate"] = "established"
                entry["bytes_received"] = r.get("bytes_received", 0)
                entry["peer_local"] = r["local"] in {
                    p["remote"] for p in records if p["state"] == "ESTAB" and p["local"] == target
                }
            else:
                entry["fate"] = "gone before established"
            self.syn_log.append(entry)

    def neighbour(self, node: str) -> str | None:
        """The state of ``node``'s neighbour entry for the VIP (STALE, FAILED...), if any."""
        out = processes.run(
            ["ip", "-o", "neigh", "show", "to", self.lab.topo.vip],
            netns=self.lab.topo.ns(node),
            check=False,
        ).stdout.split()
        return out[-1] if out else None

    def identify(self, pid: int) -> dict[str, Any]:
        """kind cli | worker | producer | other, and the worker's Celery name."""
        if pid in self.cli_pids:
            return {"kind": "cli", "name": "celery inspect ping"}
        for w in self.fleet.workers:
            if pid == w.pid or pid in processes.children(w.pid):
                return {"kind": "worker", "name": w.name}
        if pid == self.producer_pid:
            return {"kind": "producer", "name": "producer"}
        return {"kind": "other", "name": None}

    def sleep(self, seconds: float, *, until: float) -> dict[str, Any] | None:
        """Sleep ``seconds`` (not past monotonic ``until``), watching; a stuck client ends it."""
        end = min(time.monotonic() + seconds, until)
        for _ in range(int(seconds / WATCH_INTERVAL) + 2):
            stuck = self.poll()
            if stuck or time.monotonic() >= end:
                return stuck
            time.sleep(max(0.0, min(WATCH_INTERVAL, end - time.monotonic())))
        return None


@dataclass
class WaitResult:
    """How one ``wait_celery`` ended: all answered, a client stuck, or the run's deadline."""

    outcome: str  # "answered" | "stuck" | "deadline"
    pings: list[dict[str, Any]]
    stuck: dict[str, Any] | None = None
    seconds: float = 0.0


@dataclass
class LiteralWaiter:
    """``wait_celery`` from ``node``: a fresh ``celery inspect ping`` every ~4 s, unbounded."""

    lab: Lab
    fleet: WorkerFleet
    watcher: WedgeWatcher
    node: str
    log: Path
    supervise: bool = True
    say: Callable[[str], None] = lambda _msg: None
    restarts: list[dict[str, Any]] = field(default_factory=list)
    pid: int | None = None  # the CLI running now, if any

    def argv(self) -> list[str]:
        celery = Path(sys.executable).with_name("celery")
        head = [str(celery)] if celery.exists() else [sys.executable, "-m", "celery"]
        return [*head, "-A", "hangproof.lab.clients.celery_app", "inspect", "ping"]

    def wait_celery(self, expected: int, *, until: float, cycle: int) -> WaitResult:
        """Loop until ``expected`` workers answer one ping; a stuck client or ``until`` ends it."""
        started = time.monotonic()
        pings: list[dict[str, Any]] = []
        for _ in range(1_000_000):  # the run's deadline ends it first
            stuck = self.watcher.sleep(SLEEP_BEFORE_PING, until=until)
            if stuck or time.monotonic() >= until:
                return WaitResult("stuck" if stuck else "deadline", pings, stuck,
                                  time.monotonic() - started)  # fmt: skip
            ping, stuck = self.ping_once(until=until)
            ping["cycle"] = cycle
            pings.append(ping)
            if stuck or ping.get("killed_at_deadline"):
                return WaitResult("stuck" if stuck else "deadline", pings, stuck,
                                  time.monotonic() - started)  # fmt: skip
            if len(ping["online"]) >= expected:
                return WaitResult("answered", pings, None, time.monotonic() - started)
            if self.supervise:
                for r in self.fleet.restart_exited():
                    r["cycle"] = cycle
                    self.say(f"cycle {cycle}: {r['worker']} had exited ({r['reason']}); restarted")
                    self.restarts.append(r)
        return WaitResult("deadline", pings, None, time.monotonic() - started)

    def ping_once(self, *, until: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """One CLI run, watched; returns its record and a stuck client if one was found."""
        topo = self.lab.topo
        offset = self.log.stat().st_size if self.log.exists() else 0
        syn_before = syn_counts(self.lab, self.node)
        t0 = self.watcher.now()
        vip_at_start = self.watcher.vip_holder()
        proc = processes.spawn(
            self.argv(),
            netns=topo.ns(self.node),
            env=self.fleet.env(self.fleet.broker_url),  # VIP:NodePort unless --urls nodes
            log=self.log,
            cwd=self.lab.state.directory,
        )
        self.pid = proc.pid
        self.watcher.cli_pids.add(proc.pid)
        self.lab.state.track("waiter-cli", self.node, proc.pid, topo.ns(self.node))
        stuck: dict[str, Any] | None = None
        record: dict[str, Any] = {"t": t0, "pid": proc.pid, "vip_at_start": vip_at_start}
        try:
            for _ in range(1_000_000):
                if proc.poll() is not None:
                    break
                stuck = self.watcher.sleep(WATCH_INTERVAL, until=until)
                if stuck:
                    break
                if time.monotonic() >= until:
                    record["killed_at_deadline"] = True
                    break
        finally:
            if stuck is None:
                self.finish()
        if proc.poll() is not None:
            record["rc"] = proc.returncode
        record["seconds"] = round(self.watcher.now() - t0, 2)
        record["vip_at_end"] = self.watcher.vip_holder()
        record["syn"] = _delta(syn_counts(self.lab, self.node), syn_before)
        out = _read_from(self.log, offset)
        record["online"] = count_online(out)
        error = last_error(out)
        if error:
            record["error"] = error
        return record, stuck

    def finish(self) -> None:
        """Stop the running CLI (a wedged one never exits by itself)."""
        if self.pid is not None:
            processes.stop_pid(self.pid, grace=1.0)
            self.lab.state.untrack(self.pid)
            self.pid = None


def _read_from(path: Path, offset: int, limit: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit).decode(errors="replace")
    except OSError:
        return ""
