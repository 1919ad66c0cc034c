"""The call probe and the call faults' pure parts, without root: parsing, judging, evidence."""

from __future__ import annotations

import doctest
import json

import pytest

from hangproof.lab.clients import call_probe
from hangproof.lab.clients.call_probe import CallResult, deadline, judge, parse_output
from hangproof.lab.faults import FAULTS, broker_reject_at_call, disk_alarm, fault_bed
from hangproof.lab.faults.broker_reject_at_call import rule_packets
from hangproof.lab.faults.disk_alarm import alarm_limit, has_disk_alarm
from hangproof.lab.scenarios import fault_calls
from hangproof.lab.scenarios.fault_calls import (
    fault_happened,
    format_table,
    parse_queue_counts,
    queue_name,
)
from hangproof.lab.scenarios.fault_matrix import DEFAULT_HOLD, PROFILES, _judge_calls


def lines(*values: dict[str, object]) -> str:
    return "".join(json.dumps(v) + "\n" for v in values)


@pytest.mark.parametrize(
    "module", [call_probe, fault_calls, disk_alarm, broker_reject_at_call], ids=lambda m: m.__name__
)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_a_call_that_returned_an_error_is_an_error_with_its_type_and_time() -> None:
    text = lines(
        {"step": "start", "at": 100.0},
        {"call": "delay", "outcome": "error", "seconds": 0.42, "error": "OperationalError",
         "message": "[Errno 111] Connection refused"},
    )  # fmt: skip
    r = parse_output("delay", text)
    assert (r.outcome, r.seconds, r.error) == ("error", 0.42, "OperationalError")
    assert "refused" in r.message and not r.false_ok
    assert r.label() == "error 0.4s OperationalError"


def test_a_killed_call_is_a_hang_timed_from_its_start_and_placed_in_its_step() -> None:
    text = lines(
        {"step": "start", "at": 100.0},
        {"step": "connect", "outcome": "ok", "seconds": 0.1},
        {"step": "publish", "outcome": "ok", "seconds": 0.0},
    )
    r = parse_output("close", text, timed_out=True, now=130.5)
    assert (r.outcome, r.seconds, r.hung_in) == ("HANG", 30.5, "release")
    assert r.label().startswith("HANG >30.5s (in release)")
    assert parse_output("ping", lines({"step": "start", "at": 1.0}), timed_out=True).hung_in == (
        "ping"
    )


def test_a_call_that_returned_but_whose_process_did_not_exit_keeps_its_outcome() -> None:
    text = lines({"step": "start", "at": 1.0}, {"call": "delay", "outcome": "ok", "seconds": 0.1})
    r = parse_output("delay", text, timed_out=True, now=99.0)
    assert (r.outcome, r.hung_in) == ("ok", "exit")


def test_no_output_or_no_final_line_is_an_error_not_an_ok() -> None:
    assert parse_output("delay", "Traceback ...\nImportError: x").error == "NoOutput"
    assert parse_output("delay", lines({"step": "start", "at": 1.0})).error == "NoResult"


def test_false_ok_is_an_ok_publish_the_broker_never_had() -> None:
    ok = CallResult("apply_async", outcome="ok", seconds=0.1, queued=False)
    assert ok.false_ok and ok.label() == "FALSE OK 0.1s"
    assert not CallResult("apply_async", outcome="ok", seconds=0.1, queued=True).false_ok
    assert not CallResult("ping", outcome="ok", seconds=1.0, queued=False).false_ok
    assert not CallResult("delay", outcome="error", seconds=0.1, queued=False).false_ok


def test_judge_a_guarded_call() -> None:
    limit = deadline("delay", 7.5, 7.5)
    assert limit == 8.5
    fast_error = CallResult("delay", outcome="error", seconds=0.3, error="OperationalError")
    assert judge(fast_error, limit, must_fail=True) is None
    slow_error = CallResult("delay", outcome="error", seconds=12.0, error="OperationalError")
    assert judge(slow_error, limit, must_fail=True) == "took 12.0 s (deadline 8.5 s)"
    assert "HANG" in (judge(CallResult("delay", seconds=30.0), limit, must_fail=False) or "")
    queued_ok = CallResult("delay", outcome="ok", seconds=0.1, queued=True)
    assert judge(queued_ok, limit, must_fail=False) is None
    assert judge(queued_ok, limit, must_fail=True) == "ok while the broker is unreachable"
    lying_ok = CallResult("delay", outcome="ok", seconds=0.1, queued=False)
    assert judge(lying_ok, limit, must_fail=False) == "false ok: the broker never had the message"


def test_the_call_faults_are_testbed_faults_held_longer_than_the_call_bound() -> None:
    from hangproof.lab.scenarios.fault_matrix import CALL_BOUND_MARGIN

    for name in ("broker-down-at-call", "broker-reject-at-call", "disk-alarm"):
        assert name in FAULTS and fault_bed(name) == "testbed"
        assert DEFAULT_HOLD[name] - CALL_BOUND_MARGIN >= deadline("close", 7.5, 7.5)


def test_reject_rule_counter_and_disk_alarm_evidence() -> None:
    listing = (
        "Chain INPUT (policy ACCEPT 12 packets, 900 bytes)\n"
        "    pkts      bytes target     prot opt in     out     source               destination\n"
        "      11      660 REJECT     tcp  --  hpf-b0 *       0.0.0.0/0            0.0.0.0/0"
        "            tcp dpt:5672 /* hpfault-reject-at-call */ reject-with tcp-reset\n"
        "       5      300 DROP       tcp  --  hpf-b0 *       0.0.0.0/0            0.0.0.0/0"
        "            tcp dpt:5672 /* hpfault-blackhole */\n"
    )
    assert rule_packets(listing) == 11
    assert alarm_limit(100) > 100
    assert has_disk_alarm("[{{resource_limit,disk,'rabbit@fault'},[]}]")
    assert not has_disk_alarm("[{{resource_limit,memory,'rabbit@fault'},[]}]")
    assert fault_happened("disk-alarm", {"alarm_seen": True})
    assert not fault_happened("broker-reject-at-call", {"rejected_packets": 0})
    assert fault_happened("broker-down-at-call", {"amqp_answers_during_fault": False})


def test_queue_names_and_counts() -> None:
    assert (
        queue_name("broker-down-at-call", "celery", "delay")
        == "cp-broker-down-at-call-celery-delay"
    )
    assert parse_queue_counts("q1\t3\nq2\t0\nnot a row\n") == {"q1": 3, "q2": 0}


def test_matrix_cell_calls_are_queued_only_if_their_task_ran() -> None:
    queue = "fm-disk-alarm-celery-prefork-harden"
    calls = [
        CallResult("delay", outcome="ok", seconds=0.1),
        CallResult("apply_async", outcome="ok", seconds=0.1),
        CallResult("ping", outcome="error", seconds=0.2, error="BrokerBlocked"),
    ]
    executed = [f"{queue}-call-delay-during"]
    rows = _judge_calls(
        calls, "disk-alarm", PROFILES["celery-prefork+harden"], queue, executed, 15.0
    )
    by_call = {r["call"]: r for r in rows}
    assert by_call["delay"]["queued"] is True and by_call["delay"]["miss"] is None
    assert by_call["apply_async"]["false_ok"] is True
    assert by_call["apply_async"]["miss"] == "false ok: the broker never had the message"
    assert by_call["ping"]["queued"] is None and by_call["ping"]["deadline_s"] == 9.5
    stock = _judge_calls(calls, "disk-alarm", PROFILES["celery-prefork"], queue, executed, 15.0)
    assert all(r["miss"] is None for r in stock)  # stock cells are measured, not judged


def test_the_table_has_one_row_per_call_and_the_guarded_verdict() -> None:
    def row(profile: str, guarded: bool, outcome: str, miss: str | None) -> dict[str, object]:
        r = CallResult("delay", profile, outcome=outcome, seconds=30.0 if outcome == "HANG" else 0.3,
                       error="OperationalError" if outcome == "error" else None)  # fmt: skip
        return {**call_probe.as_dict(r), "guarded": guarded, "miss": miss, "deadline_s": 8.5}

    report = {
        "faults": [
            {"fault": "broker-down-at-call", "calls": [
                row("celery", False, "HANG", None),
                row("celery+harden", True, "error", None),
            ]},
        ]
    }  # fmt: skip
    table = format_table(report).splitlines()
    assert table[0] == "| fault | call | celery | celery+harden | guarded promise |"
    assert table[2] == (
        "| broker-down-at-call | delay | HANG >30.0s | error 0.3s OperationalError "
        "| kept (deadline 8.5 s) |"
    )


def test_matrix_table_shows_the_calls_and_judges_only_guarded_cells() -> None:
    from hangproof.lab.scenarios.fault_calls import format_matrix_table

    base = {"detect_s": 0.5, "resume_s": 2.0, "published": 20, "executed": 20, "lost": 0,
            "duplicated": 0, "worker_alive": True, "publish_during_fault": "error 0.0s E"}  # fmt: skip
    hang = {**call_probe.as_dict(CallResult("delay", outcome="HANG", seconds=9.0)), "miss": None}
    matrix = {
        "stall_timeout": 4.0,
        "cells": [
            {**base, "fault": "disk-alarm", "profile": "celery-prefork", "calls": [hang]},
            {**base, "fault": "disk-alarm", "profile": "celery-prefork+harden",
             "calls": [{**hang, "miss": "HANG >9.0 s (deadline 3 s)"}]},
            {**base, "fault": "memory-alarm", "profile": "kombu+guard", "lost": 2, "calls": []},
            {**base, "fault": "blackhole", "profile": "kombu+guard"},
        ],
    }  # fmt: skip
    rows = format_matrix_table(matrix).splitlines()[2:]
    assert len(rows) == 2  # only the call faults' cells
    assert rows[0].endswith("| delay: HANG >9.0s | - |")  # stock: measured, not judged
    assert rows[1].endswith("| delay: HANG >9.0s | delay: HANG >9.0 s (deadline 3 s) |")
