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
from hangproof.lab.faults import fault_bed
from hangproof.lab.scenarios import fault_matrix_docs
from hangproof.lab.scenarios.fault_matrix import (
    PROFILES,
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
    # Recorded before the publish rule: the same verdicts, but aio-pika+guard's ok
    # that held its caller 15.6 s (publish_timeout 2 s) now misses the promise.
    for cell in run["cells"]:
        verdict = judge_promise(cell, STALL, STEP)
        assert len(verdict["rules"]) == len(verdict["failures"]), verdict
        if cell["profile"] != "aio-pika+guard":
            assert {k: verdict[k] for k in ("met", "failures")} == cell["promise"], cell["profile"]
    assert judge_promise(_cell(run, "celery-prefork+harden"), STALL, STEP)["met"] is True
    # kombu+guard detected by py-amqp's 2 x heartbeat: later than stall_timeout.
    kombu = judge_promise(_cell(run, "kombu+guard"), STALL, STEP)
    assert kombu == {
        "met": False,
        "failures": ["detect 7 s > stall_timeout 4 s"],
        "rules": ["detect"],
        "unmeasured": [],
    }
    aio = judge_promise(_cell(run, "aio-pika+guard"), STALL, STEP)
    assert aio["failures"] == ["publish took 15.6 s (promise <= publish_timeout 2 s + 1 s)"]
    assert aio["rules"] == ["publish"]


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
    # Not read: a measurement gap (issue 10), not the guard's miss, and not kept either.
    gap = judge_promise({**good, "consumers_after_heal": None}, STALL, STEP)
    assert (gap["met"], gap["failures"], gap["unmeasured"]) == (
        False,
        [],
        ["consumer count not read"],
    )
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
    assert len(faults) * len(profiles) == 18
    # One class per row group of issue 10's table, on every bed those need.
    assert {fault_bed(f) for f in faults} == {"testbed", "seed-cluster", "testbed-router"}
    assert len(faults) == len(set(faults)) == 9
    assert {"one-way-loss-in", "client-freeze", "dns-stall", "url-failover"} <= set(faults)
    assert all(PROFILES[p].guarded for p in profiles)
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
    assert _fault_parallel("vip-race", Plain()) is False  # parallel = False
    assert _fault_parallel("vip-failover", Plain()) is True  # parallel = True


def test_docs_are_generated_from_the_raw_json_alone(run: dict[str, Any], tmp_path: Path) -> None:
    md = fault_matrix_docs.render_markdown(run)
    assert "commit `1653e66`" in md
    assert "rabbitmq 3.10.8" in md and "celery 5.7.0" in md and "aio-pika 10.2.1" in md
    assert "guarded cells keeping the promise: 1 of 3" in md
    assert "| blackhole | 5s kept | 5s MISS | 5s MISS |" in md
    # The misses list groups the reasons by rule.
    assert "### detect (1)\n\n- blackhole x kombu+guard: detect 7 s > stall_timeout 4 s" in md
    assert "### publish (1)\n\n- blackhole x aio-pika+guard: publish took 15.6 s" in md
    rows = [line for line in md.splitlines() if line.startswith("| blackhole | ")]
    assert len(rows) == 1 + 3  # overview + one per cell
    # The cells table carries every done-means column.
    head = next(line for line in md.splitlines() if line.startswith("| fault | profile | detect"))
    for column in ("resume", "pub", "exec", "stranded", "lost", "dup", "publish during fault",
                   "verdict", "false ok", "alive", "consumers before → after heal", "promise",
                   "reasons", "extras"):  # fmt: skip
        assert f"| {column} |" in head, column
    assert (
        "measure again: `sudo scripts/labrun .venv/bin/python -m hangproof.lab.scenarios.fault_matrix run"
        in md
    )
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


def test_publish_during_fault_rule_can_fail_each_way(run: dict[str, Any]) -> None:
    # publish_timeout at stall_timeout 4 s is 2 s; the promise allows 2 + 1 s.
    good = _cell(run, "celery-prefork+harden")
    assert good["publish_during_fault"].startswith("error")

    def publish(answer: str, verdict: str | None, **more: Any) -> list[str]:
        cell = {**good, "publish_during_fault": answer, "publish_verdict": verdict,
                "publish_s": None, **more}  # fmt: skip
        return judge_promise(cell, STALL, STEP)["failures"]

    assert publish("error 3.0s OperationalError", "error") == []
    assert publish("ok 0.2s (executed)", "ok+queued") == []
    assert publish("ok 3.1s (executed)", "ok+queued") == [
        "publish took 3.1 s (promise <= publish_timeout 2 s + 1 s)"
    ]
    assert publish("error 9.0s OperationalError", "late-error") == [
        "publish took 9 s (promise <= publish_timeout 2 s + 1 s)"
    ]
    assert publish("HANG >60s", "HANG") == ["publish HANG >60s (promise <= publish_timeout 2 s)"]
    assert publish("ok 0.1s", "ok+unknown") == [
        "publish ok, but not shown queued (the broker still held unacked)"
    ]
    assert publish("ok 0.1s", "false-ok", false_ok=True) == ["false ok: ok 0.1s"]
    assert publish("", None) == ["publish during fault not measured"]
    # The recorded publish_s wins over the answer's own clock; publish_timeout can be given.
    assert publish("ok 0.1s (executed)", "ok+queued", publish_s=5.0) == [
        "publish took 5 s (promise <= publish_timeout 2 s + 1 s)"
    ]
    cell = {**good, "publish_during_fault": "error 5.0s X", "publish_s": 5.0}
    assert judge_promise(cell, STALL, STEP, publish_timeout=4.5)["met"] is True


def test_calls_consumers_and_frozen_detection_rules(run: dict[str, Any]) -> None:
    good = _cell(run, "celery-prefork+harden")
    calls = [
        {"call": "delay", "miss": None, "false_ok": False},
        {"call": "ping", "miss": "HANG >20.0 s (deadline 9.5 s)", "false_ok": False},
        {"call": "apply_async", "miss": "false ok: the broker never had the message",
         "false_ok": True},
    ]  # fmt: skip
    verdict = judge_promise({**good, "calls": calls}, STALL, STEP)
    assert verdict["failures"] == [
        "ping() HANG >20.0 s (deadline 9.5 s)",
        "apply_async() false ok: the broker never had the message",
    ]
    assert verdict["rules"] == ["calls", "false-ok"]
    # Consumer count restored: compared with the count before inject when it was read.
    assert judge_promise({**good, "consumers_before": 1}, STALL, STEP)["met"] is True
    assert judge_promise({**good, "consumers_before": 2, "consumers_after_heal": 1}, STALL, STEP)[
        "failures"
    ] == ["1 consumers after heal, 2 before"]
    # client-freeze: a frozen process notices nothing; detection counts from the SIGCONT.
    frozen = {**good, "fault": "client-freeze", "hold_s": 15.0, "heal_s": 15.4,
              "fault_detail": {"sigstop_after_s": 0.1, "frozen_s": 15.0}}  # fmt: skip
    assert judge_promise({**frozen, "detect_s": 18.0}, STALL, STEP)["met"] is True
    assert judge_promise({**frozen, "detect_s": 19.2}, STALL, STEP)["failures"] == [
        "detect 4.1 s after the end of the freeze > stall_timeout 4 s"
    ]
    # Other faults count from inject.
    assert judge_promise({**frozen, "fault": "blackhole", "detect_s": 18.0}, STALL, STEP)[
        "failures"
    ] == ["detect 18 s > stall_timeout 4 s"]


def test_stock_cells_are_measured_and_errored_guarded_cells_miss() -> None:
    from dataclasses import asdict

    from hangproof.lab.scenarios.fault_matrix import judge_cell

    errored = asdict(Cell("blackhole", "kombu+guard", resume_s="ERROR", notes=["boom"]))
    verdict = judge_cell(errored, {"stall_timeout": STALL, "backoff_step": STEP})
    assert verdict is not None and verdict["met"] is False
    assert "resume ERROR (promise <= 9 s after detection)" in verdict["failures"]
    assert judge_cell({**errored, "profile": "kombu"}, {"stall_timeout": STALL}) is None


def test_resume_probe_is_retried_only_when_it_did_not_say_ok(tmp_path: Path) -> None:
    import os

    from hangproof.lab.scenarios import fault_matrix as fm

    class Worker:
        pid = os.getpid()  # alive

    class Run:
        worker = Worker()
        resumed_at: float | None = None
        cell = Cell("cluster-partition", "celery-prefork")

    run = Run()
    run.cell.resume_probes = 1
    retry = fm._retry_resume_probe
    # A broker still restarting answered with an error, or the probe gave no answer: again.
    assert retry(run, "error 0.5s ConnectionRefusedError", 10.0, 100.0) is True  # type: ignore[arg-type]
    assert retry(run, "no answer", 10.0, 100.0) is True  # type: ignore[arg-type]
    # An ok that never executes is the client's own lie: not retried.
    assert retry(run, "ok 0.1s", 10.0, 100.0) is False  # type: ignore[arg-type]
    # Not past the HANG bound, not past the count, not once resumed, not for a dead worker.
    assert retry(run, "error 0.5s X", 99.0, 100.0) is False  # type: ignore[arg-type]
    run.cell.resume_probes = fm.RESUME_PROBE_RETRIES
    assert retry(run, "error 0.5s X", 10.0, 100.0) is False  # type: ignore[arg-type]
    run.cell.resume_probes = 1
    run.resumed_at = 5.0
    assert retry(run, "error 0.5s X", 10.0, 100.0) is False  # type: ignore[arg-type]
    run.resumed_at = None
    Worker.pid = 2**22 + 12345  # no such process
    assert retry(run, "error 0.5s X", 10.0, 100.0) is False  # type: ignore[arg-type]
