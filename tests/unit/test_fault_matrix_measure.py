"""How the fault-matrix engine measures (issue 10): each fix fails without it.

Pure: recorded log text, ledgers and rabbitmqctl answers; no root, no broker.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hangproof.lab.clients import matrix_clients
from hangproof.lab.clients.accounting import Ledger
from hangproof.lab.scenarios import fault_matrix as fm
from hangproof.lab.scenarios.fault_matrix_docs import promise_mark


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]


def _run(tmp_path: Path, log_lines: list[str], published: list[str], executed: list[str]) -> Any:
    log = tmp_path / "worker.log"
    log.write_text("\n".join(log_lines) + "\n")
    ledger = Ledger(tmp_path / "ledger")
    for key in executed:
        ledger.record_executed(key)
    cell = fm.Cell(fault="vip-race", profile="celery-prefork+harden")
    return SimpleNamespace(
        cell=cell, ledger=ledger, log=log, queue="q1",
        worker=SimpleNamespace(pid=os.getpid()), published=lambda: published,
    )  # fmt: skip


def test_a_detection_during_a_long_inject_counts_as_at_once_not_never(tmp_path: Path) -> None:
    """vip-race x celery-prefork+harden: reconnected during the 18.7 s inject."""
    start = time.time() - 60
    end_of_inject = start + 18.7
    run = _run(
        tmp_path,
        [f"[{_stamp(start + 5)}: WARNING/MainProcess] consumer: Connection to broker lost."],
        ["q1-1"], ["q1-1"],
    )  # fmt: skip
    fm._finish(run, {"messages": 0, "consumers": 1}, end_of_inject, since=start)
    assert run.cell.detect_s == 0.0
    assert "Connection to broker lost" in (run.cell.detected_by or "")


def test_a_detection_after_inject_counts_from_the_end_of_inject(tmp_path: Path) -> None:
    start = time.time() - 60
    run = _run(
        tmp_path,
        [f"[{_stamp(start + 21.0)}: WARNING/MainProcess] consumer: Connection to broker lost."],
        [], [],
    )  # fmt: skip
    fm._finish(run, {"messages": 0, "consumers": 1}, start + 18.0, since=start)
    assert run.cell.detect_s == pytest.approx(3.0, abs=0.11)


def test_queue_deleted_counts_detection_from_the_end_of_inject() -> None:
    assert "queue-deleted" in fm.DETECT_FROM_END_OF_INJECT
    assert fm.detect_seconds([(10.0, "x")], 12.0) == (0.0, "x")


def test_unread_broker_view_leaves_lost_unknown_and_is_a_gap_not_a_miss(tmp_path: Path) -> None:
    """silent-flow-loss: list_queues gave nothing; stranded tasks are not LOST."""
    run = _run(tmp_path, [], ["q1-1", "q1-2", "q1-3"], ["q1-1"])
    fm._finish(run, None, time.time() - 30)
    cell = run.cell
    assert cell.lost is None and cell.stranded is None and cell.consumers_after_heal is None
    ok = {
        "fault": "silent-flow-loss", "detect_s": 3.0, "resume_s": 4.0, "hold_s": 12.0,
        "heal_s": 12.5, "lost": None, "false_ok": False, "worker_alive": True,
        "consumers_after_heal": None, "publish_during_fault": "error 2.1s OperationalError",
        "publish_verdict": "error",
    }  # fmt: skip
    promise = fm.judge_promise(ok, 4.0, 5.0)
    assert promise["failures"] == [] and promise["rules"] == []
    assert "consumer count not read" in promise["unmeasured"]
    assert promise["met"] is False
    assert promise_mark(promise) == "unmeasured"
    table = fm.format_table({"cells": [{**fm.asdict(cell), "resume_s": 4.0}]})
    assert "None" not in table
    # A real miss beside a gap stays a miss.
    miss = fm.judge_promise({**ok, "resume_s": "HANG"}, 4.0, 5.0)
    assert promise_mark(miss) == "MISS"


def test_a_read_broker_view_still_counts_lost(tmp_path: Path) -> None:
    run = _run(tmp_path, [], ["q1-1", "q1-2", "q1-3"], ["q1-1"])
    fm._finish(run, {"messages": 1, "consumers": 1}, time.time() - 30)
    assert (run.cell.stranded, run.cell.lost) == (1, 1)


class _Node:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[tuple[str, ...], float]] = []

    def ctl(self, *args: str, timeout: float = 0) -> str:
        self.calls.append((args, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)


def test_queue_stats_passes_rabbitmqctl_timeout_and_retries_once() -> None:
    node = _Node([TimeoutError("list_queues"), "q1\t3\t1\n"])
    stats = fm._queue_stats(SimpleNamespace(node=node))  # type: ignore[arg-type]
    assert stats == {"q1": {"messages": 3, "consumers": 1}}
    assert len(node.calls) == 2
    args, timeout = node.calls[0]
    assert args[:3] == ("list_queues", "--timeout", "20") and timeout > 20


def test_queue_stats_not_read_is_none_not_empty() -> None:
    node = _Node([TimeoutError("a"), TimeoutError("b")])
    assert fm._queue_stats(SimpleNamespace(node=node)) is None  # type: ignore[arg-type]
    assert len(node.calls) == 2


def test_publish_probe_times_the_publish_not_imports_nor_close(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe's clock: from after the client's imports to when publish returns."""
    imported: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        matrix_clients,
        "import_client",
        lambda kind, guarded: (imported.append((kind, guarded)), time.sleep(1.2)),
    )

    class Conn:
        def __enter__(self) -> Conn:
            return self

        def __exit__(self, *exc: object) -> None:
            time.sleep(1.2)  # a close the broker does not answer

        def Producer(self) -> Any:
            return SimpleNamespace(publish=lambda *a, **k: None)

    monkeypatch.setattr(matrix_clients, "kombu_connection", lambda url, guarded, stall: Conn())
    monkeypatch.setattr(matrix_clients, "log_guard_events_to_cell", lambda guarded: None)
    assert matrix_clients.main(["publish", "kombu", "amqp://x/", "q1", "q1-during"]) == 0
    out = capsys.readouterr().out.strip()
    assert imported == [("kombu", False)]
    assert out.startswith("ok ") and float(out.split()[1].rstrip("s")) < 0.5, out


def test_import_client_imports_the_chosen_clients_modules() -> None:
    import sys

    matrix_clients.import_client("kombu", True)
    assert {"kombu", "hangproof.celery", "hangproof.kombu"} <= set(sys.modules)
