"""The event log of one lab run: what happened, when, on which lane, with its raw evidence.

Pure data: no plotting, no processes. The lab appends events as it observes
them (wall-clock ``time.time()`` seconds, so events from different processes
and log files share one axis); the renderers read the saved JSON.

- An :class:`Event` sits on a lane (``VIP owner``, ``fault``, ``client raw``,
  ``conntrack NAT``, ``netfilter hooks``) and has a ``kind`` (``syn``,
  ``estab``, ``detect``...), a short label and the raw evidence it was read
  from (an ``ss`` line, a conntrack entry, a log line). With ``until`` it is a
  span (the VIP held by a node, a fault held).
- A :class:`Marker` is a measured interval: time-to-detect (inject -> the
  client noticed) and time-to-resume (heal -> work executed again).
- :class:`TaskRate` is tasks published and executed in one second.

    >>> log = EventLog(title="t", scenario="race", t0=10.0)
    >>> _ = log.add(10.5, LANE_FAULT, "inject", "VIP left n2")
    >>> _ = log.mark("detect", 10.5, 12.0)
    >>> log.markers[0].seconds, log.relative(12.0)
    (1.5, 2.0)
    >>> EventLog.from_dict(log.to_dict()) == log
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Event log format version (a key to add, never to rename).
FORMAT = 1

LANE_VIP = "VIP owner"
LANE_FAULT = "fault"
LANE_CONNTRACK = "conntrack NAT"
LANE_HOOKS = "netfilter hooks"
CLIENT_PREFIX = "client "

#: What each kind means; the legend of the timeline (and the set tests check against).
KINDS: dict[str, str] = {
    "vip-master": "keepalived: VIP added (MASTER)",
    "vip-backup": "keepalived: VIP removed (BACKUP/FAULT)",
    "vip-held": "VIP held by a node",
    "inject": "fault injected",
    "heal": "fault healed",
    "fault-held": "fault in force",
    "syn": "SYN sent",
    "syn-retransmit": "SYN retransmitted",
    "estab": "TCP ESTABLISHED",
    "header-sent": "AMQP protocol header sent",
    "start": "Connection.Start received",
    "tune": "Connection.Tune received",
    "open-ok": "Connection.Open-Ok received",
    "heartbeat": "heartbeat",
    "detect": "client noticed the fault",
    "reconnect": "client reconnected",
    "ready": "client consuming",
    "exit": "client process exited",
    "wedged": "client wedged (no answer)",
    "nat-binding": "conntrack entry of the racing connection",
    "hook": "a netfilter hook saw a SYN",
}
#: Marker kinds: the measured intervals.
MARKERS = ("detect", "resume")


@dataclass(frozen=True)
class Event:
    """One thing that happened, on one lane, with the evidence it was read from."""

    at: float
    lane: str
    kind: str
    label: str
    evidence: str = ""
    until: float | None = None


@dataclass(frozen=True)
class Marker:
    """A measured interval: ``kind`` is ``detect`` or ``resume``, from ``start`` to ``at``."""

    kind: str
    start: float
    at: float
    label: str = ""

    @property
    def seconds(self) -> float:
        return round(self.at - self.start, 3)


@dataclass(frozen=True)
class TaskRate:
    """Tasks published (confirmed) and executed during the second starting at ``at``."""

    at: float
    published: float
    executed: float


@dataclass
class EventLog:
    """Everything one run observed; ``t0`` is time zero of the axis (epoch seconds)."""

    title: str
    scenario: str
    t0: float
    events: list[Event] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    rates: list[TaskRate] = field(default_factory=list)
    outcome: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        at: float,
        lane: str,
        kind: str,
        label: str,
        evidence: str = "",
        until: float | None = None,
    ) -> Event:
        """Append an event; ``kind`` must be one of :data:`KINDS` (a typo is a bug, not a lane)."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(KINDS)}")
        event = Event(
            float(at), lane, kind, label, evidence, None if until is None else float(until)
        )
        self.events.append(event)
        return event

    def mark(self, kind: str, start: float, at: float, label: str = "") -> Marker:
        """Record a measured interval (``detect`` or ``resume``)."""
        if kind not in MARKERS:
            raise ValueError(f"unknown marker {kind!r}; known: {', '.join(MARKERS)}")
        marker = Marker(kind, float(start), float(at), label)
        self.markers.append(marker)
        return marker

    def relative(self, at: float) -> float:
        """Seconds since ``t0``, as drawn on the axis."""
        return round(at - self.t0, 3)

    def lanes(self) -> list[str]:
        """Lanes top to bottom: VIP, fault, clients (first seen first), conntrack, hooks."""
        present = {e.lane for e in self.events}
        clients: list[str] = []
        for e in sorted(self.events, key=lambda e: e.at):
            if e.lane not in clients and e.lane not in _FIXED_ORDER:
                clients.append(e.lane)
        head = [lane for lane in (LANE_VIP, LANE_FAULT) if lane in present]
        tail = [lane for lane in (LANE_CONNTRACK, LANE_HOOKS) if lane in present]
        return head + clients + tail

    def end(self) -> float:
        """The last instant anything happened (events, spans, markers, rates)."""
        times = [self.t0]
        for e in self.events:
            times.append(e.until if e.until is not None else e.at)
        times += [m.at for m in self.markers]
        times += [r.at + 1.0 for r in self.rates]
        return max(times)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "title": self.title,
            "scenario": self.scenario,
            "t0": self.t0,
            "outcome": self.outcome,
            "meta": self.meta,
            "events": [asdict(e) for e in sorted(self.events, key=lambda e: e.at)],
            "markers": [asdict(m) for m in self.markers],
            "rates": [asdict(r) for r in self.rates],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventLog:
        return cls(
            title=data["title"],
            scenario=data["scenario"],
            t0=float(data["t0"]),
            events=[Event(**e) for e in data.get("events", [])],
            markers=[Marker(**m) for m in data.get("markers", [])],
            rates=[TaskRate(**r) for r in data.get("rates", [])],
            outcome=data.get("outcome", ""),
            meta=dict(data.get("meta", {})),
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return path

    @classmethod
    def load(cls, path: Path) -> EventLog:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventLog):
            return NotImplemented
        return self.to_dict() == other.to_dict()


_FIXED_ORDER = (LANE_VIP, LANE_FAULT, LANE_CONNTRACK, LANE_HOOKS)


def client_lane(name: str) -> str:
    """The lane of one client: ``client_lane("raw") == "client raw"``."""
    return CLIENT_PREFIX + name


def vip_spans(
    transitions: Sequence[tuple[float, str, str]], end: float
) -> list[tuple[str, float, float, str]]:
    """keepalived transitions ``(at, node, "master"|"backup")`` -> ``(node, from, until, line)``.

    A node holds the VIP from its ``master`` until its next ``backup`` (or ``end``).

    >>> vip_spans([(1.0, "n1", "master"), (5.0, "n1", "backup"), (7.0, "n2", "master")], 9.0)
    [('n1', 1.0, 5.0, '1.0 n1 master'), ('n2', 7.0, 9.0, '7.0 n2 master')]
    """
    held: dict[str, tuple[float, str]] = {}
    spans: list[tuple[str, float, float, str]] = []
    for at, node, state in sorted(transitions):
        if state == "master" and node not in held:
            held[node] = (at, f"{at} {node} {state}")
        elif state != "master" and node in held:
            start, line = held.pop(node)
            spans.append((node, start, at, line))
    for node, (start, line) in held.items():
        spans.append((node, start, max(start, end), line))
    return sorted(spans, key=lambda s: s[1])


def task_rates(
    published: Iterable[float], executed: Iterable[float], start: float, end: float
) -> list[TaskRate]:
    """Per-second counts of publish and execute times in ``[start, end)``.

    >>> [(r.published, r.executed) for r in task_rates([0.1, 0.5, 1.2], [1.5], 0.0, 2.0)]
    [(2, 0), (1, 1)]
    """
    seconds = max(0, math.ceil(end - start))
    pub = [0] * seconds
    ex = [0] * seconds
    for times, bucket in ((published, pub), (executed, ex)):
        for t in times:
            i = math.floor(t - start)
            if 0 <= i < seconds:
                bucket[i] += 1
    return [TaskRate(round(start + i, 3), pub[i], ex[i]) for i in range(seconds)]


def hook_deltas(
    before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]
) -> list[tuple[str, str, int]]:
    """Which hook counters grew between two reads: ``(hook, interface, new packets)``.

    >>> hook_deltas({("OUTPUT", "eth0"): 1}, {("OUTPUT", "eth0"): 1, ("OUTPUT", "lo"): 1})
    [('OUTPUT', 'lo', 1)]
    """
    grew = []
    for key, packets in after.items():
        delta = packets - before.get(key, 0)
        if delta > 0:
            grew.append((key[0], key[1], delta))
    order = {"OUTPUT": 0, "INPUT": 1}
    return sorted(grew, key=lambda g: (order.get(g[0], 2), g[1] == "lo"))
