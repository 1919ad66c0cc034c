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

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hangproof.doctor.conntrack import parse_conntrack
from hangproof.lab.evidence import join_ss_records, parse_ss_record
from hangproof.lab.hooks import TRACE_IN, TRACE_OUT
from hangproof.report.events import (
    LANE_CONNTRACK,
    LANE_HOOKS,
    Event,
    EventLog,
    client_lane,
    hook_deltas,
)

if TYPE_CHECKING:
    from hangproof.lab.lab import Lab

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
        records = []
        for record in join_ss_records(ss_text):
            try:
                records.append((record, parse_ss_record(record)))
            except (IndexError, ValueError):
                continue
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
        from hangproof.lab import processes

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
        self.log.add(
            at,
            self.lane,
            "reconnect" if again else "syn",
            f"{'new connection' if again else 'SYN sent'} from :{sport} ({how})",
            evidence,
        )
        return 1

    def _socket(self, at: float, record: str, s: dict[str, Any]) -> int:
        sport = _port(s["local"])
        if sport in self.ignored:
            return 0
        new = self._connection(at, sport, s["state"], record)
        sock = self.sockets.setdefault(sport, _Socket(state="", record=record))
        state = s["state"]
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
        path = log.save(directory / "timeline.json")
        say(f"timeline not rendered ({exc}); event log in {path}")
        return {"error": str(exc), "events": str(path)}
    say(f"timeline: {html} (and {png.name})")
    return {"html": str(html), "png": str(png), "events": str(directory / "timeline.json")}


def report_enabled() -> bool:
    """Reports are on by default; HANGPROOF_REPORT=0 turns the default ones off."""
    return os.environ.get("HANGPROOF_REPORT", "1") != "0"
