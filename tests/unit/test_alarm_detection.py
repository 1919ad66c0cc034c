"""The alarm faults' detect: the guarded publish's notice of connection.blocked, in the cell log.

No root, no broker: the fault's ``configure()``, the clients' log hook and the
matrix's own log reader, on a temporary file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.aio import _log_blocked
from hangproof.lab.clients.matrix_clients import EVENT_LOG_ENV, log_guard_events_to_cell
from hangproof.lab.faults import CellContext
from hangproof.lab.faults.disk_alarm import DiskAlarm
from hangproof.lab.faults.memory_alarm import MemoryAlarm
from hangproof.lab.scenarios.fault_matrix import _log_events


@pytest.fixture
def guard_logger() -> Iterator[logging.Logger]:
    guard = logging.getLogger("hangproof.guard")
    handlers, level = list(guard.handlers), guard.level
    yield guard
    for handler in guard.handlers[len(handlers) :]:
        handler.close()
    guard.handlers[:] = handlers
    guard.setLevel(level)


def _ctx(tmp_path: Path, guarded: bool) -> CellContext:
    return CellContext(
        queue="fm-memory-alarm-aio-pika-guard", client_netns="ns", client_url="amqp://x",
        producer_url="amqp://x", kind="aio-pika", guarded=guarded, work=tmp_path,
        stall_timeout=15.0,
    )  # fmt: skip


@pytest.mark.parametrize("fault", [MemoryAlarm, DiskAlarm])
def test_alarm_faults_point_the_publishes_at_the_cell_log(tmp_path: Path, fault: type) -> None:
    ctx = _ctx(tmp_path, guarded=True)
    fault(target=None).configure(ctx)
    assert ctx.env[EVENT_LOG_ENV] == str(tmp_path / f"{ctx.queue}.log")


def test_a_guarded_publish_notice_is_read_as_the_cells_detection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guard_logger: logging.Logger
) -> None:
    log = tmp_path / "cell.log"
    log.write_text("[2026-01-01 00:00:00,000: INFO/MainProcess] consumer ready.\n")
    monkeypatch.setenv(EVENT_LOG_ENV, str(log))
    since = time.time() - 1  # the log's stamps have millisecond resolution
    log_guard_events_to_cell(True)
    _log_blocked("connection blocked by the broker (aiormq)")
    events = _log_events(log, since)
    assert len(events) == 1, log.read_text()
    assert "hangproof.guard: broker-blocked" in events[0][1]
    assert "hangproof.guard: hangproof.guard" not in log.read_text()  # one prefix, as Celery's
    assert abs(events[0][0] - time.time()) < 5


def test_a_stock_publish_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guard_logger: logging.Logger
) -> None:
    log = tmp_path / "cell.log"
    monkeypatch.setenv(EVENT_LOG_ENV, str(log))
    log_guard_events_to_cell(False)
    _log_blocked("connection blocked by the broker (aiormq)")
    assert _log_events(log, 0.0) == []
