"""Task accounting: the arithmetic, and many processes recording at once."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from hangproof.lab.clients.accounting import Ledger, tally


def test_tally_counts_each_kind_once() -> None:
    c = tally(["a", "b", "c", "d"], ["a", "b", "b", "b", "c", "zz"])
    assert (c.published, c.executed, c.duplicates, c.lost, c.unexpected) == (4, 3, 2, 1, 1)


def test_nothing_published_nothing_lost() -> None:
    assert tally([], []).to_dict() == {
        "published": 0,
        "executed": 0,
        "duplicates": 0,
        "lost": 0,
        "unexpected": 0,
    }


def test_ledger_records_and_detects_a_second_execution(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l")
    ledger.reset()
    ledger.record_published("t1")
    ledger.record_published("t2")
    assert ledger.record_executed("t1") is True
    assert ledger.record_executed("t1") is False
    assert ledger.counts().to_dict() == {
        "published": 2,
        "executed": 1,
        "duplicates": 1,
        "lost": 1,
        "unexpected": 0,
    }
    ledger.reset()
    assert ledger.counts().published == 0


def test_ledger_rejects_ids_that_are_not_file_names(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.reset()
    with pytest.raises(ValueError):
        ledger.record_executed("../escape")


def _execute_all(directory: str, ids: list[str]) -> None:
    ledger = Ledger(Path(directory))
    for task_id in ids:
        ledger.record_executed(task_id)


def test_concurrent_workers_never_lose_or_merge_an_execution(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l")
    ledger.reset()
    ids = [f"t{i}" for i in range(200)]
    for task_id in ids:
        ledger.record_published(task_id)
    # Four processes each execute every task: 3 duplicates per task, exactly.
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_execute_all, args=(str(ledger.directory), ids)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    c = ledger.counts()
    assert (c.published, c.executed, c.duplicates, c.lost) == (200, 200, 600, 0)


def test_wait_drained_is_bounded(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.reset()
    ledger.record_published("never-runs")
    assert ledger.wait_drained(timeout=0.3, poll=0.05).lost == 1


def test_a_consumer_that_starts_first_creates_the_ledger_and_every_process_counts(
    tmp_path: Path,
) -> None:
    # The fault matrix's consumers (Celery, kombu, aio-pika) may record before
    # anyone reset the directory: the first execution creates executed/.
    ledger = Ledger(tmp_path / "not-yet")
    assert ledger.executions() == [] and not ledger.has_run("q-1")
    assert ledger.record_executed("q-1") is True
    pid = os.fork()
    if pid == 0:  # another worker process: a redelivery, then a new key
        Ledger(tmp_path / "not-yet").record_executed("q-1")
        Ledger(tmp_path / "not-yet").record_executed("q-2")
        os._exit(0)
    os.waitpid(pid, 0)
    assert sorted(ledger.executions()) == ["q-1", "q-1", "q-2"]
    assert ledger.has_run("q-2") and not ledger.has_run("q-3")
    # Each record names the process that ran it, then when.
    first = (ledger.executed_dir / "q-1").read_text().split()
    again = (ledger.executed_dir / "q-1.dup-1").read_text().split()
    assert first[0] == str(os.getpid()) and again[0] == str(pid)
    assert float(again[1]) >= float(first[1]) > 1.7e9
