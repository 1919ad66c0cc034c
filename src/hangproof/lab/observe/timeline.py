"""The lab's side of the timeline: watch the racing connections and fill an event log.

:class:`ConnectionWatch` reads, in one command per tick inside the client's
node namespace, the client sockets to VIP:NodePort (``ss``), the SYN counters
of the trace chains (``iptables-save -c``) and the conntrack entries to the
VIP, and turns every change into an event with the raw line as its evidence.
:meth:`ConnectionWatch.observe` is pure (text in, events out), so it is
unit-tested on recorded output; :meth:`ConnectionWatch.tick` runs the command.

The renderers live in :mod:`hangproof.report.render` (optional extra); the
lab only writes the event log and calls :func:`write_report`, which says so in
one line when the extra is missing instead of failing the run.

    >>> from hangproof.report.events import EventLog
    >>> log = EventLog(title="t", scenario="race", t0=0.0)
    >>> w = ConnectionWatch(log, "raw", vip="198.18.0.100", node_port=32672)
    >>> w.observe(0.0, "---HP---\\n---HP---\\n")  # the baseline
    >>> w.observe(0.1, "SYN-SENT 0 1 198.18.0.1:40000 198.18.0.100:32672 ino:1 sk:1\\n---HP---\\n---HP---\\n")
    >>> [e.kind for e in log.events]
    ['syn']
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hangproof.doctor.conntrack import parse_conntrack
from hangproof.doctor.ss_text import read_records
from hangproof.lab.components.hooks import TRACE_IN, TRACE_OUT
from hangproof.report.events import (
    LANE_CONNTRACK,
    LANE_FAULT,
    LANE_HOOKS,
    LANE_VIP,
    Event,
    EventLog,
    TaskRate,
    client_lane,
    hook_deltas,
    vip_spans,
)

if TYPE_CHECKING:
    from hangproof.lab.engine.lab import Lab

SEPARATOR = "---HP---"
#: Lab reports go here (under the lab's state directory) unless --report says otherwise.
REPORTS_DIR = "reports"


@dataclass
class _Socket:
    state: str
    record: str
    header_sent: bool = False
    start_received: bool = False
    closed: bool = False


@dataclass
class ConnectionWatch:
    """Turns successive reads of sockets, hook counters and conntrack into events.

    The first tick is the baseline: sockets and entries already there (a previous
    race's TIME-WAIT) are ignored, counters are the zero. A client connection is
    known by its source port; the first is the ``syn``, each later one a
    ``reconnect``. Each SYN leaves through OUTPUT once, so OUTPUT counter growth
    beyond the new connections of that tick is a retransmission (the report's
    OUT=br-roller, then OUT=lo).
    """

    log: EventLog
    client: str
    vip: str
    node_port: int
    sockets: dict[int, _Socket] = field(default_factory=dict)
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    conntrack: dict[int, tuple[str, bool]] = field(default_factory=dict)
    #: Source ports in the order the client opened them.
    connections: list[int] = field(default_factory=list)
    #: (time, port) of each connection the client closed or lost.
    closed: list[tuple[float, int]] = field(default_factory=list)
    #: The ``detect`` event of each closed port (a closed last connection may be a success).
    close_events: dict[int, Event] = field(default_factory=dict)
    ignored: set[int] = field(default_factory=set)
    ticks: int = 0

    @property
    def lane(self) -> str:
        return client_lane(self.client)

    def script(self) -> str:
        """The one shell command a tick runs in the client's node namespace."""
        return (
            f"ss -Htnpie dst {self.vip} and dport = :{self.node_port}; echo {SEPARATOR}; "
            f"iptables-save -c -t mangle 2>/dev/null; echo {SEPARATOR}; "
            f"conntrack -L -p tcp -d {self.vip} 2>/dev/null"
        )

    def observe(self, at: float, text: str) -> None:
        """Diff one tick's output against the last one; append what changed to the log."""
        parts = text.split(SEPARATOR)
        ss_text, ipt_text, ct_text = [*parts, "", "", ""][:3]
        records = [(line.text, line.as_dict()) for line in read_records(ss_text)]
        entries = [
            e
            for e in parse_conntrack(ct_text)
            if e.original.dst == self.vip and e.original.dport == self.node_port
        ]
        self.ticks += 1
        if self.ticks == 1:
            self.ignored = {_port(s["local"]) for _, s in records}
            self.ignored |= {e.original.sport for e in entries}
            self.counters = _counters(ipt_text)[0]
            return
        new = 0
        for record, s in records:
            new += self._socket(at, record, s)
        for entry in entries:
            new += self._entry(at, entry)
        self._gone(at, {_port(s["local"]) for _, s in records})
        self._hooks(at, ipt_text, new)

    def tick(self, lab: Lab, node: str) -> None:
        from hangproof.lab.engine import processes

        out = processes.run(
            ["sh", "-c", self.script()], netns=lab.topo.ns(node), check=False
        ).stdout
        self.observe(time.time(), out)

    def _connection(self, at: float, sport: int, how: str, evidence: str) -> int:
        """Record a new client connection; 1 if it is new, else 0."""
        if sport in self.ignored or sport in self.connections:
            return 0
        self.connections.append(sport)
        again = len(self.connections) > 1
        if again:
            self.log.add(
                at, self.lane, "reconnect", f"new connection from :{sport} ({how})", evidence
            )
        elif how == "SYN-SENT":
            self.log.add(at, self.lane, "syn", f"SYN sent from :{sport}", evidence)
        return 1

    def _socket(self, at: float, record: str, s: dict[str, Any]) -> int:
        sport = _port(s["local"])
        if sport in self.ignored:
            return 0
        new = self._connection(at, sport, s["state"], record)
        state = s["state"]
        sock = self.sockets.get(sport)
        if sock is None:
            sock = self.sockets[sport] = _Socket(state="", record=record)
            if state != "SYN-SENT":
                # First seen mid-life (between two ticks it connected, maybe talked): what
                # happened before this tick is not claimed as happening now.
                sock.header_sent = int(s.get("bytes_sent") or 0) >= 8
                sock.start_received = int(s.get("bytes_received") or 0) > 0
        if state != sock.state:
            if state == "ESTAB":
                self.log.add(at, self.lane, "estab", f"ESTABLISHED :{sport}", record)
            elif sock.state in ("ESTAB", "SYN-SENT"):
                self._close(at, sport, f"client closed :{sport} ({state})", record)
            sock.state = state
        sent = int(s.get("bytes_sent") or 0)
        received = int(s.get("bytes_received") or 0)
        if sent >= 8 and not sock.header_sent:
            sock.header_sent = True
            self.log.add(
                at, self.lane, "header-sent", f"AMQP header sent ({sent} B) :{sport}", record
            )
        if received > 0 and not sock.start_received:
            sock.start_received = True
            self.log.add(
                at,
                self.lane,
                "start",
                f"first bytes from the broker ({received} B: Connection.Start) :{sport}",
                record,
            )
        sock.record = record
        return new

    def _close(self, at: float, sport: int, label: str, evidence: str) -> None:
        sock = self.sockets.get(sport)
        if sock is not None:
            if sock.closed:
                return
            sock.closed = True
        self.closed.append((at, sport))
        self.close_events[sport] = self.log.add(at, self.lane, "detect", label, evidence)

    def _gone(self, at: float, present: set[int]) -> None:
        for sport, sock in self.sockets.items():
            if sport not in present and sock.state in ("ESTAB", "SYN-SENT"):
                self._close(at, sport, f"connection :{sport} gone", "last seen: " + sock.record)

    def _entry(self, at: float, entry: Any) -> int:
        sport = entry.original.sport
        if sport in self.ignored:
            return 0
        nat = (
            f"DNAT to {entry.reply.src}"
            if entry.dnat
            else f"no DNAT (reply from {entry.reply.src})"
        )
        new = self._connection(at, sport, f"seen in conntrack, {entry.state}", entry.raw)
        key = (entry.state, entry.dnat)
        if self.conntrack.get(sport) != key:
            self.conntrack[sport] = key
            self.log.add(
                at, LANE_CONNTRACK, "nat-binding", f":{sport} {entry.state}, {nat}", entry.raw
            )
        return new

    def _hooks(self, at: float, text: str, new_connections: int) -> None:
        now, lines = _counters(text)
        if not now:
            return
        fresh = new_connections
        for hook, iface, delta in hook_deltas(self.counters, now):
            line = lines[(hook, iface)]
            self.log.add(at, LANE_HOOKS, "hook", f"{hook} via {iface} (+{delta} SYN)", line)
            if hook != "OUTPUT":
                continue
            for _ in range(delta):
                if fresh > 0:
                    fresh -= 1  # the SYN of a connection seen this tick
                else:
                    self.log.add(
                        at, self.lane, "syn-retransmit", f"SYN retransmitted via {iface}", line
                    )
        self.counters = now


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def _counters(text: str) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], str]]:
    """Trace-chain counters from ``iptables-save -c``: {(hook, iface): packets}, and the lines."""
    now: dict[tuple[str, str], int] = {}
    lines: dict[tuple[str, str], str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        for chain, hook, flag in ((TRACE_OUT, "OUTPUT", "-o"), (TRACE_IN, "INPUT", "-i")):
            if line.startswith("[") and f"-A {chain} {flag} " in line:
                key = (hook, line.rsplit(" ", 1)[-1])
                now[key] = int(line[1:].split(":", 1)[0])
                lines[key] = line
    return now, lines


def race_markers(
    log: EventLog,
    watch: ConnectionWatch,
    fault_at: float,
    end_at: float,
    outcome: str,
    client_result: dict[str, Any] | None,
) -> None:
    """The race's verdict on the client lane, and its measured markers.

    The fault is the VIP landing on the client's node mid-SYN (``fault_at``).
    time-to-detect runs to the client's first sign that it noticed (it closed
    a connection it then replaced, or reported an error); time-to-resume to
    Connection.Start from the real broker. A hung client gets a ``wedged``
    event at the end of the window and no marker: it never noticed. The
    client's own steps (``client_result["steps"]``, epoch seconds) are added
    where the kernel view missed them (a step between two ticks).

        >>> log = EventLog(title="t", scenario="race", t0=0.0)
        >>> w = ConnectionWatch(log, "kombu", vip="v", node_port=1)
        >>> w.connections, w.closed = [40000, 40001], [(6.0, 40000)]
        >>> race_markers(log, w, 1.0, 9.0, "connected", {"steps": {"start": 8.0}})
        >>> [(m.kind, m.seconds) for m in log.markers]
        [('detect', 5.0), ('resume', 7.0)]
    """
    lane = watch.lane
    result = client_result or {}
    detail = str(result.get("detail") or "")
    steps = dict(result.get("steps") or {})
    seen = {e.kind for e in log.events if e.lane == lane and e.at >= fault_at}
    words = {
        "estab": "TCP connected",
        "header-sent": "AMQP header sent",
        "start": "Connection.Start received",
        "tune": "Connection.Tune received",
        "open-ok": "Connection.Open-Ok received",
    }
    for kind, at in sorted(steps.items(), key=lambda kv: kv[1]):
        if kind in words and kind not in seen:
            log.add(float(at), lane, kind, f"{words[kind]} (client's own clock)", detail)
    if outcome == "hang":
        log.add(
            end_at,
            lane,
            "wedged",
            f"HANG: no Connection.Start {end_at - fault_at:.1f} s after the VIP moved",
            "the client process is alive and blocked reading its socket",
        )
        return
    finished = float(result.get("finished_at") or end_at)
    last = watch.connections[-1] if watch.connections else None
    if outcome == "connected" and last in watch.close_events:
        # The client closed the connection that worked: done, not a detection.
        log.events.remove(watch.close_events.pop(last))
    replaced = [at for at, port in watch.closed if at >= fault_at and port != last]
    detect_at: float | None = min(replaced) if replaced else None
    if outcome in ("reset", "error"):
        closes = [at for at, _ in watch.closed if at >= fault_at]
        detect_at = min(closes) if closes else finished
        log.add(finished, lane, "detect", f"client: {outcome}", detail)
    if detect_at is not None:
        log.mark("detect", fault_at, detect_at)
    if outcome == "connected":
        start_at = float(steps.get("start") or finished)
        if "start" not in steps:
            log.add(start_at, lane, "start", "connected (client's own report)", detail)
        log.mark("resume", fault_at, start_at)


def default_report_dir(lab_directory: Path, what: str) -> Path:
    """``<lab state dir>/reports/<what>-<UTC time>``: where reports go without --report."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return lab_directory / REPORTS_DIR / f"{what}-{stamp}"


def write_report(
    log: EventLog, directory: Path, say: Callable[[str], Any] | None = None
) -> dict[str, str]:
    """Render ``log`` into ``directory`` (HTML + PNG + JSON); never fails the lab run.

    Returns the paths written, or ``{"error": ...}`` with the reason (e.g. the
    report extra is not installed: the event log JSON is still written).
    """
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        from hangproof.report.render import write_timeline

        html, png = write_timeline(log, directory)
    except Exception as exc:  # a missing extra or a renderer bug must not lose the run's result
        try:
            path = log.save(directory / "timeline.json")
        except OSError as save_exc:  # e.g. --report names a file or a read-only place
            say(f"timeline not written to {directory}: {save_exc}")
            return {"error": str(save_exc)}
        say(f"timeline not rendered ({exc}); event log in {path}")
        return {"error": str(exc), "events": str(path)}
    say(f"timeline: {html} (and {png.name})")
    return {"html": str(html), "png": str(png), "events": str(directory / "timeline.json")}


def write_matrix_report(
    result: dict[str, Any], directory: Path, say: Callable[[str], Any] | None = None
) -> dict[str, str]:
    """The fault-matrix heatmap in ``directory``; each cell links to ``cells/F--P/timeline.html``."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))

    def link(cell: dict[str, Any]) -> str | None:
        if not (cell.get("timeline") or {}).get("html"):
            return None
        return f"cells/{cell['fault']}--{cell['profile']}/timeline.html"

    try:
        from hangproof.report.render import write_heatmap

        html, png = write_heatmap(result, directory, link)
    except Exception as exc:  # never lose the matrix's result to the picture
        say(f"fault-matrix heatmap not rendered ({exc})")
        return {"error": str(exc)}
    say(f"fault-matrix heatmap: {html} (and {png.name})")
    return {"html": str(html), "png": str(png)}


def report_enabled() -> bool:
    """Reports are on by default; HANGPROOF_REPORT=0 turns the default ones off."""
    return os.environ.get("HANGPROOF_REPORT", "1") != "0"


# -- fault-matrix cells ------------------------------------------------------------

#: Worker log lines, by what they show (checked in this order; first match wins). Detection
#: is the fault matrix's own ``DETECTION``, checked after ``reconnect``.
LOG_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ready", re.compile(r" ready\.")),
    (
        "reconnect",
        re.compile(
            r"hangproof\.guard: (connected|reconnected)|Connected to amqp|connected to amqp"
            r"|consumer: reconnected"
        ),
    ),
    ("heartbeat", re.compile(r"heartbeat", re.IGNORECASE)),
    (
        "exit",
        re.compile(
            r"Unrecoverable error|Traceback \(most recent call last\)|worker: Warm shutdown"
        ),
    ),
)


def classify_log_line(line: str) -> str | None:
    """The event kind a worker log line shows, or None.

    >>> classify_log_line("consumer: Connection to broker lost. Trying to re-establish")
    'detect'
    >>> classify_log_line("hangproof.guard: reconnected {\\"down_seconds\\": 3.1}")
    'reconnect'
    >>> classify_log_line("Task hangproof.record succeeded") is None
    True
    """
    from hangproof.lab.scenarios.fault_matrix import DETECTION

    for kind, pattern in LOG_KINDS:
        if kind == "heartbeat" and DETECTION.search(line):
            return "detect"
        if pattern.search(line):
            return kind
    return "detect" if DETECTION.search(line) else None


def log_events(text: str, since: float = 0.0) -> list[tuple[float, str, str]]:
    """``(epoch, kind, line)`` for each stamped worker log line that shows something.

    >>> log_events("[2026-12-02 02:50:00,500: WARNING/MainProcess] consumer: Connection to broker lost.")[0][1]
    'detect'
    """
    from hangproof.lab.scenarios.fault_matrix import LOG_STAMP

    found = []
    for line in text.splitlines():
        m = LOG_STAMP.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        kind = classify_log_line(line)
        if kind is not None and at >= since:
            found.append((at, kind, line.strip()[:400]))
    return found


@dataclass
class CellRecorder:
    """Records one fault-matrix cell: moments, tasks per second (sampled), the worker log.

    ``run_cell`` calls :meth:`start` once the worker runs, :meth:`mark` at
    inject / heal, and :meth:`finish` with the measured cell; a background
    thread samples the ledger and the published file every ``interval`` s
    (line counts: their formats stay as they are).
    """

    fault: str
    profile: str
    ledger: Path
    published: Path
    worker_log: Path
    interval: float = 0.5
    moments: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    #: Free events the scenario noted as they happened: (at, lane, kind, label, evidence).
    notes: list[tuple[float, str, str, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    #: With :meth:`watch_connections`: the clients' connections to the VIP, read every 0.2 s.
    watch: ConnectionWatch | None = None
    watch_netns: str | None = None
    _watcher: threading.Thread | None = None
    #: With ``watch_connections(vip_holders=...)``: who holds the VIP, read on
    #: every tick; only changes are kept, as ``(at, holders)``.
    vip_holders: Callable[[], list[str]] | None = None
    vip_samples: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)

    def watch_connections(
        self,
        netns: str,
        vip: str,
        node_port: int,
        vip_holders: Callable[[], list[str]] | None = None,
    ) -> None:
        """Also record SYNs, hooks and conntrack of the clients dialling ``vip:node_port``.

        ``vip_holders`` (e.g. ``Lab.vip_holders``) gives the VIP-owner lane: the
        VIP faults move the VIP themselves, so there are no keepalived
        transitions to read; the nodes' addresses are read on each tick instead.
        """
        scratch = EventLog(title="", scenario="fault-matrix", t0=0.0)
        self.watch = ConnectionWatch(scratch, self.profile, vip=vip, node_port=node_port)
        self.watch_netns = netns
        self.vip_holders = vip_holders

    def start(self) -> None:
        self.moments.setdefault("start", time.time())
        self._thread = threading.Thread(target=self._sample, name="cell-recorder", daemon=True)
        self._thread.start()
        if self.watch is not None:
            self._watcher = threading.Thread(target=self._watch, name="cell-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        from hangproof.lab.engine import processes

        assert self.watch is not None
        # Bounded like the sampler: at most 4 h of 0.2 s ticks.
        for _ in range(int(4 * 3600 / 0.2)):
            out = processes.run(
                ["sh", "-c", self.watch.script()], netns=self.watch_netns, check=False
            ).stdout
            self.watch.observe(time.time(), out)
            if self.vip_holders is not None:
                at, holders = time.time(), tuple(sorted(self.vip_holders()))
                if not self.vip_samples or self.vip_samples[-1][1] != holders:
                    self.vip_samples.append((at, holders))
            if self._stop.wait(0.2):
                break

    def mark(self, moment: str, at: float | None = None) -> None:
        self.moments[moment] = time.time() if at is None else at

    def note(self, lane: str, kind: str, label: str, evidence: str = "") -> None:
        """An event seen now by the scenario itself (a server started, a wedge found)."""
        self.notes.append((time.time(), lane, kind, label, evidence))

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._watcher):
            if thread is not None:
                thread.join(timeout=5)

    def _sample(self) -> None:
        # Bounded: a cell lasts at most hang_bound + a few minutes; 4 h of samples is the cap.
        for _ in range(int(4 * 3600 / self.interval)):
            self.samples.append((time.time(), _lines(self.published), _lines(self.ledger)))
            if self._stop.wait(self.interval):
                break

    def event_log(self, cell: dict[str, Any]) -> EventLog:
        """The cell's timeline from what was recorded and what was measured (pure after stop)."""
        t0 = self.moments.get("start", time.time())
        log = EventLog(
            title=f"fault-matrix cell: {self.fault} × {self.profile}",
            scenario="fault-matrix",
            t0=t0,
            outcome=(
                f"resumed {cell['resume_s']} s after heal"
                if isinstance(cell.get("resume_s"), int | float)
                else str(cell.get("resume_s"))
            ),
            meta={
                "fault": self.fault,
                "profile": self.profile,
                "t0_label": "the worker started",
                "lost": cell.get("lost"),
                "published": cell.get("published"),
                "executed": cell.get("executed"),
            },
        )
        lane = client_lane(self.profile)
        inject, heal = self.moments.get("inject"), self.moments.get("heal")
        detail = json.dumps(cell.get("fault_detail") or {}, default=str)[:2000]
        if inject is not None:
            log.add(inject, LANE_FAULT, "inject", f"{self.fault} injected", detail)
            if heal is not None:
                log.add(
                    inject,
                    LANE_FAULT,
                    "fault-held",
                    f"{self.fault} in force ({heal - inject:.1f} s)",
                    detail,
                    until=heal,
                )
        if heal is not None:
            log.add(heal, LANE_FAULT, "heal", f"{self.fault} healed", detail)
        text = self.worker_log.read_text(errors="replace") if self.worker_log.exists() else ""
        for at, kind, line in log_events(text):
            log.add(at, lane, kind, line.split("] ", 1)[-1][:120], line)
        if self.watch is not None:
            log.events.extend(self.watch.log.events)
        end = self.moments.get("end", time.time())
        transitions = holder_transitions(self.vip_samples)
        for at, node, state in transitions:
            added = state == "master"
            label = f"{node}: VIP {'added' if added else 'removed'}"
            log.add(at, LANE_VIP, "vip-master" if added else "vip-backup", label,
                    f"{at:.3f} ip -4 addr on {node}: VIP {'present' if added else 'absent'}")  # fmt: skip
        for node, start, until, line in vip_spans(transitions, end):
            log.add(start, LANE_VIP, "vip-held", f"{node} holds the VIP", line, until=until)
        base = self.moments.get("detect_base", inject)
        if isinstance(cell.get("detect_s"), int | float) and base is not None:
            log.mark("detect", base, base + float(cell["detect_s"]))
        resume = cell.get("resume_s")
        if isinstance(resume, int | float) and heal is not None:
            log.mark("resume", heal, heal + float(resume))
            log.add(heal + float(resume), lane, "ready", "probe task executed after heal", "")
        elif isinstance(resume, str) and self.moments.get("end") is not None:
            kind = "exit" if resume == "EXIT" else "wedged"
            log.add(self.moments["end"], lane, kind, f"{resume}: no resume after heal", "")
        log.rates = rates_from_samples(self.samples)
        return log


def holder_transitions(
    samples: Sequence[tuple[float, Sequence[str]]],
) -> list[tuple[float, str, str]]:
    """VIP holders sampled over time -> ``(at, node, "master"|"backup")`` at each change.

    The first sample states who held the VIP when watching began.

        >>> holder_transitions([(0.0, ("n2",)), (1.0, ()), (1.5, ("n1",))])
        [(0.0, 'n2', 'master'), (1.0, 'n2', 'backup'), (1.5, 'n1', 'master')]
    """
    out: list[tuple[float, str, str]] = []
    before: set[str] = set()
    for at, holders in samples:
        now = set(holders)
        out += [(at, node, "backup") for node in sorted(before - now)]
        out += [(at, node, "master") for node in sorted(now - before)]
        before = now
    return out


def rates_from_samples(samples: Sequence[tuple[float, int, int]]) -> list[TaskRate]:
    """Cumulative (time, published, executed) counts -> per-second rates, one per sample gap.

    >>> [(r.published, r.executed) for r in rates_from_samples([(0.0, 0, 0), (0.5, 1, 1), (1.0, 2, 1)])]
    [(2.0, 2.0), (2.0, 0.0)]
    """
    rates = []
    for (t1, p1, e1), (t2, p2, e2) in itertools.pairwise(samples):
        dt = t2 - t1
        if dt <= 0:
            continue
        rates.append(TaskRate(round(t1, 3), round((p2 - p1) / dt, 2), round((e2 - e1) / dt, 2)))
    return rates


def _lines(path: Path) -> int:
    """Lines of a file (a ledger's published.log), or entries of a directory (its executed/)."""
    try:
        if path.is_dir():
            return len(os.listdir(path))
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def seed_loop_log(
    recorder: CellRecorder,
    result: dict[str, Any],
    keepalived_events: Sequence[tuple[float, str, str]],
    worker_logs: dict[str, Path],
) -> EventLog:
    """The seed loop's timeline: keepalived's VIP moves, the loop's steps, each worker's log.

    >>> r = CellRecorder("seed-loop", "seed", Path("/nonexistent"), Path("/nonexistent"), Path("/nonexistent"))
    >>> r.moments["start"] = 0.0
    >>> log = seed_loop_log(r, {"outcome": "survived"}, [(1.0, "n1", "master")], {})
    >>> [(e.lane, e.kind) for e in log.events]
    [('VIP owner', 'vip-master'), ('VIP owner', 'vip-held')]
    """
    t0 = recorder.moments.get("start", time.time())
    end = recorder.moments.get("end", time.time())
    log = EventLog(
        title=f"lab run seed-loop: profile {result.get('profile')}, "
        f"mitigation {result.get('mitigation')}, trigger {result.get('trigger')}",
        scenario="seed-loop",
        t0=t0,
        outcome=str(result.get("outcome")),
        meta={"cycles": result.get("cycles"), "t0_label": "keepalived started"},
    )
    for at, node, state in keepalived_events:
        line = f"{at:.3f} {node} {state} (keepalived notify_{state})"
        log.add(
            at,
            LANE_VIP,
            "vip-master" if state == "master" else "vip-backup",
            f"{node}: {state.upper()}",
            line,
        )
    for node, start, until, line in vip_spans(keepalived_events, end):
        log.add(start, LANE_VIP, "vip-held", f"{node} holds the VIP", line, until=until)
    for at, lane, kind, label, evidence in recorder.notes:
        log.add(at, lane, kind, label, evidence)
    for name, path in worker_logs.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        for at, kind, line in log_events(text, since=t0):
            log.add(at, client_lane(name), kind, line.split("] ", 1)[-1][:120], line)
    log.rates = rates_from_samples(recorder.samples)
    return log
