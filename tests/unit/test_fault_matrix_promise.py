"""The fault matrix's judgement, without root: the promise, the publish verdict, the docs.

Recorded cells come from tests/data/fault_matrix/run-parallel-blackhole.json
(the first run of tests/lab/test_fault_matrix_parallel.py: blackhole, three
guarded profiles against one injection, stall_timeout 4 s).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hangproof.errors import HangproofError
from hangproof.lab import fault_matrix_docs
from hangproof.lab.scenarios.fault_matrix import (
    PUBLISH_VERDICTS,
    SUBSETS,
    Cell,
    _fault_parallel,
    _judge_publish,
    classify_publish,
    judge_promise,
    resolve_selection,
)

RECORDED = (
    Path(__file__).resolve().parents[1] / "data" / "fault_matrix" / "run-parallel-blackhole.json"
)
STALL = 4.0
STEP = 5.0


@pytest.fixture
def run() -> dict[str, Any]:
    return json.loads(RECORDED.read_text())


def _cell(run: dict[str, Any], profile: str) -> dict[str, Any]:
    return next(c for c in run["cells"] if c["profile"] == profile)


def test_recorded_guarded_cells_are_judged_as_recorded(run: dict[str, Any]) -> None:
    for cell in run["cells"]:
        assert judge_promise(cell, STALL, STEP) == cell["promise"], cell["profile"]
    assert judge_promise(_cell(run, "celery-prefork+harden"), STALL, STEP)["met"] is True
    # kombu+guard detected by py-amqp's 2 x heartbeat: later than stall_timeout.
    kombu = judge_promise(_cell(run, "kombu+guard"), STALL, STEP)
    assert kombu == {"met": False, "failures": ["detect 7 s > stall_timeout 4 s"]}


def test_every_part_of_the_promise_can_fail(run: dict[str, Any]) -> None:
    good = _cell(run, "celery-prefork+harden")
    cases = {
        "detect_s": (None, "never detected (promise <= 4 s)"),
        "resume_s": ("HANG", "resume HANG (promise <= 9 s after heal)"),
        "lost": (3, "lost 3 (promise 0)"),
        "false_ok": (True, "false ok: error 2.0s"),
        "worker_alive": (False, "the worker exited"),
        "consumers_after_heal": (0, "no consumer on the queue after heal"),
    }
    for key, (value, reason) in cases.items():
        verdict = judge_promise({**good, key: value}, STALL, STEP)
        assert verdict["met"] is False, key
        assert any(f.startswith(reason) for f in verdict["failures"]), (key, verdict)
    assert judge_promise({**good, "consumers_after_heal": None}, STALL, STEP)["failures"] == [
        "consumer count not read"
    ]
    assert (
        "the worker exited" in judge_promise({**good, "resume_s": "EXIT"}, STALL, STEP)["failures"]
    )
    # The bound is stall_timeout + one backoff step after heal, inclusive.
    assert judge_promise({**good, "resume_s": 9.0}, STALL, STEP)["met"] is True
    assert judge_promise({**good, "resume_s": 9.1}, STALL, STEP)["failures"] == [
        "resume 9.1 s after heal > 9 s"
    ]


def test_faults_that_never_heal_count_resume_from_detection(run: dict[str, Any]) -> None:
    # silent-flow-loss: held 0 s, heal() does nothing; resume_s counts from the
    # end of inject (heal_s after inject), the promise from detection.
    cell = {**_cell(run, "celery-prefork+harden"), "fault": "silent-flow-loss", "hold_s": 0.0}
    cell.update(detect_s=3.0, heal_s=0.2, resume_s=11.0)  # 11.2 - 3.0 = 8.2 s after detection
    assert judge_promise(cell, STALL, STEP)["met"] is True
    cell["resume_s"] = 12.0  # 9.2 s after detection
    assert judge_promise(cell, STALL, STEP)["failures"] == ["resume 9.2 s after detection > 9 s"]
    assert (
        "resume HANG (promise <= 9 s after detection)"
        in judge_promise({**cell, "resume_s": "HANG"}, STALL, STEP)["failures"]
    )


def test_publish_verdicts() -> None:
    # publish_timeout at stall_timeout 4 s is 2 s; late means after 2 + 1 s.
    assert classify_publish("error 3.0s OperationalError: x", 2.0, None) == "error"
    assert classify_publish("error 3.1s OperationalError: x", 2.0, None) == "late-error"
    assert classify_publish("error 32.0s OperationalError", 2.0, False) == "late-error"
    assert classify_publish("ok 15.6s (executed)", 2.0, True) == "ok+queued"
    assert classify_publish("ok 0.0s", 2.0, False) == "false-ok"
    assert classify_publish("ok 0.0s", 2.0, None) == "ok+unknown"
    assert classify_publish("HANG >60s", 2.0, None) == "HANG"
    assert classify_publish("no output", 2.0, None) == "unknown"
    assert classify_publish("", 2.0, None) is None
    assert {"error", "late-error", "ok+queued", "false-ok", "HANG"} <= set(PUBLISH_VERDICTS)


def test_false_ok_needs_the_queue_to_lack_the_message() -> None:
    key = "fm-memory-alarm-kombu-during"
    said_ok = Cell("memory-alarm", "kombu", publish_during_fault="ok 0.0s")
    _judge_publish(said_ok, key, [], STALL)
    assert (said_ok.publish_verdict, said_ok.false_ok) == ("false-ok", True)
    queued = Cell("memory-alarm", "kombu", publish_during_fault="ok 0.0s")
    _judge_publish(queued, key, ["fm-memory-alarm-kombu-p3", key], STALL)
    assert (queued.publish_verdict, queued.false_ok) == ("ok+queued", False)
    unknown = Cell("memory-alarm", "kombu", publish_during_fault="ok 0.0s")
    _judge_publish(unknown, key, None, STALL)  # the broker still held unacked messages
    assert (unknown.publish_verdict, unknown.false_ok) == ("ok+unknown", False)
    ran = Cell("blackhole", "aio-pika+guard", publish_during_fault="ok 15.6s (executed)")
    ran.during_executed = True
    _judge_publish(ran, key, None, STALL)
    # Queued, but it held its caller 15.6 s: recorded beside the verdict.
    assert (ran.publish_verdict, ran.publish_s) == ("ok+queued", 15.6)
    hung = Cell("blackhole", "aio-pika", publish_during_fault="HANG >60s")
    _judge_publish(hung, key, [], STALL)
    assert (hung.publish_verdict, hung.publish_s, hung.false_ok) == ("HANG", None, False)


def test_subsets_and_selection() -> None:
    faults, profiles, bound = resolve_selection(None, None, None, "ci")
    assert (faults, profiles, bound) == (
        SUBSETS["ci"]["faults"],
        SUBSETS["ci"]["profiles"],
        60.0,
    )
    assert len(faults) * len(profiles) == 12
    # Given names and bounds win over the subset's.
    assert resolve_selection("blackhole", "kombu", 30, "ci") == (["blackhole"], ["kombu"], 30.0)
    faults, profiles, bound = resolve_selection(None, None, None, None)
    assert len(profiles) == 8 and bound == 300.0 and "vip-race" in faults
    with pytest.raises(HangproofError, match="unknown subset 'nope'"):
        resolve_selection(None, None, None, "nope")


def test_which_faults_share_one_injection() -> None:
    class Plain:
        def inject(self) -> None: ...

    class PerConsumer(Plain):
        def attach(self, ctx: object) -> None: ...

    assert _fault_parallel("blackhole", Plain()) is True
    # A fault that acts on one attached consumer runs one cell at a time.
    assert _fault_parallel("blackhole", PerConsumer()) is False
    assert _fault_parallel("vip-race", Plain()) is False  # PARALLEL = False
    assert _fault_parallel("vip-failover", Plain()) is True  # PARALLEL = True


def test_docs_are_generated_from_the_raw_json_alone(run: dict[str, Any], tmp_path: Path) -> None:
    md = fault_matrix_docs.render_markdown(run)
    assert "commit `1653e66`" in md
    assert "rabbitmq 3.10.8" in md and "celery 5.7.0" in md and "aio-pika 10.2.1" in md
    assert "guarded cells keeping the promise: 2 of 3" in md
    assert "| blackhole | 5s kept | 5s MISS | 5s kept |" in md
    assert "- blackhole x kombu+guard: detect 7 s > stall_timeout 4 s" in md
    rows = [line for line in md.splitlines() if line.startswith("| blackhole | ")]
    assert len(rows) == 1 + 3  # overview + one per cell
    # A stock cell is measured, not judged.
    stock = {**run["cells"][0], "profile": "celery-prefork", "promise": None}
    assert "measured" in fault_matrix_docs.render_markdown({**run, "cells": [stock]})
    # publish() writes the raw JSON and the markdown made from it.
    raw, out = fault_matrix_docs.publish(run, tmp_path / "docs")
    assert json.loads(raw.read_text()) == run and out.read_text() == md
    # The script: from a JSON file to the markdown, one clear line on bad input.
    assert fault_matrix_docs.main([str(raw), "--out", str(tmp_path / "again.md")]) == 0
    assert (tmp_path / "again.md").read_text() == md
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert fault_matrix_docs.main([str(bad)]) == 2
