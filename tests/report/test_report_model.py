"""The event log and the data -> figure mapping, on recorded lab data: no browser, no root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hangproof.lab.observe.timeline import (
    CellRecorder,
    ConnectionWatch,
    classify_log_line,
    race_markers,
    rates_from_samples,
)
from hangproof.report.events import (
    LANE_CONNTRACK,
    LANE_FAULT,
    LANE_HOOKS,
    LANE_VIP,
    EventLog,
    task_rates,
    vip_spans,
)
from hangproof.report.figure import (
    MARKER_COLOURS,
    event_rows,
    heatmap_rows,
    heatmap_spec,
    marker_rows,
    timeline_spec,
    x_domain,
)

DATA = Path(__file__).parent.parent / "data" / "report"


def recorded(name: str) -> EventLog:
    return EventLog.load(DATA / name)


def test_event_log_round_trips_and_rejects_unknown_kinds(tmp_path: Path) -> None:
    log = EventLog(title="t", scenario="race", t0=100.0)
    log.add(100.5, LANE_FAULT, "inject", "VIP left n2", "ip neigh replace ...")
    log.add(101.0, LANE_VIP, "vip-held", "n1 holds the VIP", until=103.0)
    log.mark("detect", 100.5, 102.0)
    log.rates = task_rates([100.1, 100.2, 101.5], [100.3], 100.0, 102.0)
    again = EventLog.load(log.save(tmp_path / "log.json"))
    assert again == log
    assert [(r.published, r.executed) for r in again.rates] == [(2, 1), (1, 0)]
    with pytest.raises(ValueError, match="unknown event kind"):
        log.add(1.0, LANE_FAULT, "injected", "typo")
    with pytest.raises(ValueError, match="unknown marker"):
        log.mark("recover", 1.0, 2.0)


def test_lanes_are_vip_fault_clients_then_conntrack_and_hooks() -> None:
    log = recorded("race-raw.json")
    assert log.lanes() == [LANE_VIP, LANE_FAULT, "client raw", LANE_CONNTRACK, LANE_HOOKS]


def test_vip_spans_follow_keepalived_transitions() -> None:
    spans = vip_spans(
        [
            (1.0, "n1", "master"),
            (5.0, "n1", "backup"),
            (7.0, "n2", "master"),
            (7.5, "n2", "master"),
        ],
        end=9.0,
    )
    assert [(n, a, b) for n, a, b, _ in spans] == [("n1", 1.0, 5.0), ("n2", 7.0, 9.0)]


def test_recorded_raw_race_tells_the_reports_story_in_order() -> None:
    """First SYN un-NATed via eth0, VIP lands, retransmit via lo reaches INPUT, ESTAB, HANG."""
    log = recorded("race-raw.json")
    client = [e for e in log.events if e.lane == "client raw"]
    assert [e.kind for e in client] == ["syn", "estab", "header-sent", "syn-retransmit", "wedged"]
    first = {e.kind: e.at for e in log.events}
    assert first["inject"] < first["syn"] <= first["vip-master"] < first["syn-retransmit"]
    hooks = [e.label.split(" (")[0] for e in log.events if e.lane == LANE_HOOKS]
    assert hooks == ["OUTPUT via eth0", "OUTPUT via lo", "INPUT via lo"]
    nat = [e for e in log.events if e.lane == LANE_CONNTRACK]
    assert all("no DNAT" in e.label for e in nat) and "SYN_SENT" in nat[0].evidence
    assert log.outcome == "hang" and log.markers == []


def test_recorded_kombu_race_has_detect_before_resume() -> None:
    log = recorded("race-kombu.json")
    marks = {m.kind: m for m in log.markers}
    assert 4.0 < marks["detect"].seconds < marks["resume"].seconds < 15.0
    # kombu's connect_timeout (5 s) ends the wedged first connection, a retry gets through.
    assert [e.kind for e in log.events if e.lane == "client kombu"][-2:] == ["start", "reconnect"]


def _tick(ss: str = "", ipt: str = "", ct: str = "") -> str:
    return f"{ss}\n---HP---\n{ipt}\n---HP---\n{ct}\n"


SYN_SENT = (
    'SYN-SENT 0 1 198.18.0.1:54068 198.18.0.100:32672 users:(("python3",pid=7,fd=3)) '
    "ino:1 sk:1 cubic rto:1000 bytes_sent:0"
)
ESTAB = (
    'ESTAB 0 0 198.18.0.1:54068 198.18.0.100:32672 users:(("python3",pid=7,fd=3)) '
    "ino:1 sk:1 cubic bytes_sent:8 bytes_acked:9 segs_out:3"
)
CT_SYN = (
    "tcp      6 119 SYN_SENT src=198.18.0.1 dst=198.18.0.100 sport=54068 dport=32672 "
    "[UNREPLIED] src=198.18.0.100 dst=198.18.0.1 sport=32672 dport=54068 mark=0 use=1"
)
CT_EST = (
    "tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=54068 dport=32672 "
    "src=198.18.0.100 dst=198.18.0.1 sport=32672 dport=54068 [ASSURED] mark=0 use=1"
)


def _counters(eth0: int, lo_out: int, lo_in: int) -> str:
    return "\n".join(
        [
            f"[{eth0}:{60 * eth0}] -A HP-TRACE-OUT -o eth0",
            f"[{lo_out}:{60 * lo_out}] -A HP-TRACE-OUT -o lo",
            "[0:0] -A HP-TRACE-IN -i eth0",
            f"[{lo_in}:{60 * lo_in}] -A HP-TRACE-IN -i lo",
        ]
    )


def test_connection_watch_turns_kernel_reads_into_the_race_events() -> None:
    log = EventLog(title="t", scenario="race", t0=0.0)
    w = ConnectionWatch(log, "raw", vip="198.18.0.100", node_port=32672)
    old = "TIME-WAIT 0 0 198.18.0.1:40000 198.18.0.100:32672 timer:(timewait,50sec,0) ino:0"
    w.observe(0.0, _tick(old, _counters(0, 0, 0)))  # baseline: a previous race's socket
    w.observe(0.2, _tick(f"{old}\n{SYN_SENT}", _counters(1, 0, 0), CT_SYN))
    w.observe(1.2, _tick(ESTAB, _counters(1, 1, 1), CT_EST))
    kinds = [(e.at, e.lane, e.kind) for e in log.events]
    assert (0.2, "client raw", "syn") in kinds
    assert (1.2, "client raw", "syn-retransmit") in kinds
    assert (1.2, "client raw", "estab") in kinds and (1.2, "client raw", "header-sent") in kinds
    assert [e.label for e in log.events if e.lane == LANE_HOOKS] == [
        "OUTPUT via eth0 (+1 SYN)",
        "OUTPUT via lo (+1 SYN)",
        "INPUT via lo (+1 SYN)",
    ]
    assert [e.label for e in log.events if e.lane == LANE_CONNTRACK] == [
        ":54068 SYN_SENT, no DNAT (reply from 198.18.0.100)",
        ":54068 ESTABLISHED, no DNAT (reply from 198.18.0.100)",
    ]
    assert not any(":40000" in e.label for e in log.events)  # the baseline socket is ignored
    assert w.connections == [54068]


def test_race_markers_for_reset_and_for_a_closed_working_connection() -> None:
    log = EventLog(title="t", scenario="race", t0=0.0)
    w = ConnectionWatch(log, "raw", vip="v", node_port=1)
    w.connections, w.closed = [5], [(1.3, 5)]
    race_markers(log, w, 1.0, 1.4, "reset", {"detail": "ConnectionResetError", "finished_at": 1.35})
    assert [(m.kind, round(m.seconds, 3)) for m in log.markers] == [("detect", 0.3)]
    # A client that got Connection.Start and then closed its socket did not "detect" anything.
    log2 = EventLog(title="t", scenario="race", t0=0.0)
    w2 = ConnectionWatch(log2, "raw", vip="v", node_port=1)
    w2.connections = [5]
    w2._close(1.25, 5, "connection :5 gone", "")
    race_markers(log2, w2, 1.0, 1.3, "connected", {"steps": {"start": 1.2}})
    assert [m.kind for m in log2.markers] == ["resume"]
    assert not [e for e in log2.events if e.kind == "detect"]


def test_race_markers_draw_tune_and_open_ok_from_the_clients_steps() -> None:
    log = EventLog(title="t", scenario="race", t0=0.0)
    w = ConnectionWatch(log, "raw", vip="v", node_port=1)
    w.connections = [5]
    steps = {"estab": 1.1, "header-sent": 1.11, "start": 1.2, "tune": 1.21, "open-ok": 1.25}
    race_markers(log, w, 1.0, 1.3, "connected", {"steps": steps})
    kinds = [e.kind for e in sorted(log.events, key=lambda e: e.at) if e.lane == "client raw"]
    assert kinds == ["estab", "header-sent", "start", "tune", "open-ok"]
    assert [(m.kind, round(m.seconds, 3)) for m in log.markers] == [("resume", 0.2)]


def test_vip_cells_get_a_vip_owner_lane_from_sampled_holders(tmp_path: Path) -> None:
    """The VIP faults move the VIP themselves: the lane comes from the nodes' addresses."""
    r = CellRecorder("vip-race", "kombu+guard", tmp_path / "l", tmp_path / "p", tmp_path / "w")
    r.moments.update({"start": 0.0, "inject": 1.0, "heal": 3.0, "end": 6.0})
    r.vip_samples = [(0.2, ("n2",)), (1.1, ()), (2.4, ("n1",))]
    log = r.event_log({"resume_s": 1.0, "detect_s": 0.5, "fault_detail": {}})
    vip = [(e.kind, e.label, e.at, e.until) for e in log.events if e.lane == LANE_VIP]
    assert [v[:2] for v in vip if v[0] != "vip-held"] == [
        ("vip-master", "n2: VIP added"),
        ("vip-backup", "n2: VIP removed"),
        ("vip-master", "n1: VIP added"),
    ]
    assert [(v[1], v[2], v[3]) for v in vip if v[0] == "vip-held"] == [
        ("n2 holds the VIP", 0.2, 1.1),
        ("n1 holds the VIP", 2.4, 6.0),
    ]


def test_worker_log_lines_are_classified() -> None:
    assert classify_log_line("[x] celery@h ready.") == "ready"
    assert classify_log_line("hangproof.guard: stall-detected {}") == "detect"
    assert classify_log_line("consumer: Connection to broker lost. Trying") == "detect"
    assert classify_log_line("Connected to amqp://guest:**@198.18.200.1:5672//") == "reconnect"
    assert classify_log_line("Task hangproof.record[1] succeeded in 0.001s: None") is None


def test_cell_rates_come_from_sampled_counts() -> None:
    rates = rates_from_samples([(0.0, 0, 0), (0.5, 1, 1), (1.0, 2, 1), (1.5, 2, 4)])
    assert [(r.published, r.executed) for r in rates] == [(2.0, 2.0), (2.0, 0.0), (0.0, 6.0)]


def test_cell_event_log_has_fault_span_markers_and_verdict(tmp_path: Path) -> None:
    worker_log = tmp_path / "w.log"
    worker_log.write_text(
        "[2026-12-02 03:00:01,000: WARNING/MainProcess] consumer: Connection to broker lost.\n"
    )
    r = CellRecorder("blackhole", "kombu", tmp_path / "l", tmp_path / "p", worker_log)
    from datetime import datetime

    lost_at = datetime(2026, 12, 2, 3, 0, 1).timestamp()
    r.moments = {"start": lost_at - 10, "inject": lost_at - 2, "detect_base": lost_at - 2,
                 "heal": lost_at + 30, "end": lost_at + 300}  # fmt: skip
    hang = r.event_log({"resume_s": "HANG", "detect_s": 2.0, "fault_detail": {"rule": "DROP"}})
    assert [m.kind for m in hang.markers] == ["detect"]
    assert [e.kind for e in hang.events if e.lane == "client kombu"] == ["detect", "wedged"]
    span = next(e for e in hang.events if e.kind == "fault-held")
    assert span.until == lost_at + 30 and "DROP" in span.evidence
    ok = r.event_log({"resume_s": 4.5, "detect_s": 2.0})
    assert [(m.kind, m.seconds) for m in ok.markers] == [("detect", 2.0), ("resume", 4.5)]


def test_events_at_one_instant_are_stacked_not_hidden() -> None:
    rows = [r for r in event_rows(recorded("race-raw.json")) if r["lane"] == "client raw"]
    same = [r["dy"] for r in rows if abs(r["t"] - rows[1]["t"]) < 0.05]
    assert len(same) == 3 and len(set(same)) == 3


def test_marker_rows_and_domain_cover_every_event() -> None:
    log = recorded("race-kombu.json")
    lo, hi = x_domain(log)
    assert lo <= 0 and hi >= max(log.relative(e.until or e.at) for e in log.events)
    rows = marker_rows(log)
    assert [r["kind"] for r in rows] == ["time-to-detect", "time-to-resume"]
    assert (
        rows[0]["label"].startswith("time-to-detect ") and rows[0]["label_y"] != rows[1]["label_y"]
    )


def test_timeline_spec_names_its_marks_and_pins_the_axis() -> None:
    spec = timeline_spec(recorded("race-kombu.json"))
    top = spec["vconcat"][0]
    names = [layer.get("name") for layer in top["layer"]]
    assert names == ["spans", "span_labels", "events", "markers", "marker_spans", "marker_labels"]
    assert len(spec["vconcat"]) == 1  # a race publishes no tasks: no tasks/s chart
    cell = timeline_spec(recorded("cell-broker-kill.json"))
    assert cell["vconcat"][1]["name"] == "rates" and json.dumps(cell).count('"rates"') >= 1
    x = top["layer"][0]["encoding"]["x"]
    assert x["scale"]["nice"] is False and x["scale"]["domain"] == x_domain(
        recorded("race-kombu.json")
    )
    colours = next(
        layer["encoding"]["color"]["scale"]
        for layer in top["layer"]
        if layer.get("name") == "markers"
    )
    assert colours["range"][-2:] == list(MARKER_COLOURS.values())


def test_heatmap_shows_hang_and_exit_as_their_own_marks_with_links() -> None:
    report = {
        "stall_timeout": 15,
        "hang_bound": 300,
        "cells": [
            {"fault": "blackhole", "profile": "kombu", "resume_s": 12.5, "timeline": {"html": "x"}},
            {"fault": "blackhole", "profile": "celery", "resume_s": "HANG"},
            {"fault": "vip-race", "profile": "celery", "resume_s": "EXIT"},
        ],
    }
    rows = heatmap_rows(report, link=lambda c: f"cells/{c['fault']}--{c['profile']}/timeline.html")
    assert [(r["resume"], r["outcome"], r["text"]) for r in rows] == [
        (12.5, "resumed", "12.5 s"),
        (None, "HANG", "HANG"),
        (None, "EXIT", "EXIT"),
    ]
    spec = heatmap_spec(report, link=lambda c: "cells/x/timeline.html")
    names = [layer.get("name") for layer in spec["layer"]]
    assert names == ["resumed", "stuck", "cell_text"]
    assert all(layer["encoding"]["href"]["field"] == "href" for layer in spec["layer"])
    stuck = spec["layer"][1]["encoding"]["color"]["scale"]
    assert stuck["domain"] == ["HANG", "EXIT", "ERROR"]


def test_docstring_examples_hold() -> None:
    import doctest

    import hangproof.lab.observe.timeline
    import hangproof.report.events
    import hangproof.report.figure

    for module in (
        hangproof.report.events,
        hangproof.report.figure,
        hangproof.lab.observe.timeline,
    ):
        failures, tried = doctest.testmod(module)
        assert failures == 0 and tried > 0, module.__name__


def test_write_report_never_fails_the_run(tmp_path: Path) -> None:
    from hangproof.lab.observe.timeline import write_report

    said: list[str] = []
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = write_report(recorded("race-raw.json"), blocker / "report", said.append)
    assert "error" in out and said and str(blocker) in said[0]
    ok = write_report(recorded("race-raw.json"), tmp_path / "r", said.append)
    assert Path(ok["html"]).exists() and Path(ok["png"]).exists()
    assert said[-1].startswith(f"timeline: {tmp_path / 'r' / 'timeline.html'}")
