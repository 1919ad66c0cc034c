"""The client-freeze / broker-close faults' own logic, without a broker or root.

client-freeze is exercised on a real process this test starts (``sleep``):
SIGSTOP only by pid identity, SIGCONT on heal. The broker reads go to a
stand-in node whose rabbitmqctl fails, which the fault must survive.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hangproof.errors import HangproofError
from hangproof.lab.clients.accounting import Ledger
from hangproof.lab.engine import processes
from hangproof.lab.faults import FAULTS, CellContext, FaultTarget, make_fault
from hangproof.lab.faults.broker_view import parse_connections, parse_queue_consumers
from hangproof.lab.faults.client_freeze import process_state
from hangproof.lab.faults.queue_deleted import _DELETED
from hangproof.lab.scenarios.fault_matrix import DEFAULT_HOLD

NEW = ("client-freeze", "consumer-timeout", "queue-deleted", "connection-closed")


@dataclass
class NoBroker:
    """A node whose rabbitmqctl always fails (the fault must not depend on it to signal)."""

    state_dir: Path
    host: str = "198.18.200.1"

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        raise HangproofError("rabbitmqctl: no broker in a unit test")


def _target(tmp_path: Path) -> FaultTarget:
    return FaultTarget(NoBroker(tmp_path), "hpfault-b", "hpf-b0")  # type: ignore[arg-type]


def _ctx(tmp_path: Path, pid: int | None = None) -> CellContext:
    return CellContext(
        queue="q", client_netns="hpfault-c", client_url="amqp://x", producer_url="amqp://y",
        kind="celery", guarded=True, work=tmp_path, stall_timeout=4.0, worker_pid=pid,
    )  # fmt: skip


def test_the_new_faults_are_registered_held_and_name_their_upstream_reports(
    tmp_path: Path,
) -> None:
    for name in NEW:
        assert name in FAULTS and name in DEFAULT_HOLD
        fault = make_fault(name, _target(tmp_path))
        assert fault.name == name
        doc = sys.modules[type(fault).__module__].__doc__ or ""
        assert "#" in doc, name  # e.g. celery#6760
    assert DEFAULT_HOLD["queue-deleted"] == DEFAULT_HOLD["connection-closed"] == 0.0


def test_consumer_timeout_runs_the_cell_with_late_acks(tmp_path: Path) -> None:
    fault = make_fault("consumer-timeout", _target(tmp_path))
    ctx = _ctx(tmp_path)
    fault.configure(ctx)  # type: ignore[attr-defined]
    assert ctx.env["HANGPROOF_LATE_ACKS"] == "1"


@pytest.mark.timeout(20)
def test_client_freeze_stops_and_continues_the_attached_process(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        fault = make_fault("client-freeze", _target(tmp_path))
        fault.attach(_ctx(tmp_path, child.pid))  # type: ignore[attr-defined]
        fault.inject()
        assert process_state(child.pid) == "T"
        assert fault.detail["stopped"] is True  # type: ignore[attr-defined]
        fault.heal()
        for _ in range(40):
            if process_state(child.pid) != "T":
                break
            time.sleep(0.05)
        assert process_state(child.pid) in ("S", "R")
        fault.heal()  # idempotent
    finally:
        child.kill()
        child.wait(5)


@pytest.mark.timeout(20)
def test_client_freeze_never_signals_a_pid_that_is_another_process_now(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        fault = make_fault("client-freeze", _target(tmp_path))
        with pytest.raises(HangproofError, match="not attached"):
            fault.inject()  # no attach(): no pid
        fault.attach(_ctx(tmp_path, child.pid))  # type: ignore[attr-defined]
        fault.start_tick = (processes.start_time(child.pid) or 0) + 1  # type: ignore[attr-defined]
        with pytest.raises(HangproofError, match="gone"):
            fault.inject()
        assert process_state(child.pid) != "T"
    finally:
        child.kill()
        child.wait(5)


def test_broker_view_parsers() -> None:
    rows = parse_connections("<rabbit@n.1.2.3>\t198.18.200.2\t41000\t3\nListing...\n")
    assert rows == [
        {"pid": "<rabbit@n.1.2.3>", "peer_host": "198.18.200.2", "peer_port": 41000, "heartbeat": 3}
    ]
    assert parse_queue_consumers("a\t1\nq\t0\n", "q") == 0
    assert parse_queue_consumers("a\t1\n", "q") is None
    found = _DELETED.search("Queue was successfully deleted with 5 ready messages")
    assert found and found.group(1) == "5"


def test_a_shared_injection_acts_on_every_cells_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared faults act on every queue; queue-deleted is one injection per cell (issue 10):
    one rabbitmqctl call to inject (no consumer count: the engine reads consumers_before),
    at most one to heal, so detection counts from that queue's own deletion."""
    from dataclasses import replace

    from hangproof.lab.faults import consumer_timeout, queue_deleted
    from hangproof.lab.scenarios.fault_matrix import (
        DETECT_FROM_END_OF_INJECT,
        _cell_detail,
        _fault_parallel,
    )

    calls: list[tuple[str, ...]] = []

    class Node:
        def ctl(self, *args: str, timeout: float = 0) -> str:
            calls.append(args)
            if args[0] == "delete_queue":
                return "Queue was successfully deleted with 2 ready messages"
            return "q1\t1\n"

    fault = queue_deleted.QueueDeleted(FaultTarget(Node(), "hpfault-b", "hpf-b0"))  # type: ignore[arg-type]
    assert _fault_parallel("queue-deleted", fault) is False
    assert "queue-deleted" in DETECT_FROM_END_OF_INJECT
    fault.configure(replace(_ctx(tmp_path), queue="q1"))
    fault.inject()
    assert calls == [("delete_queue", "q1")]
    fault.heal()
    assert len(calls) == 2 and calls[1][0] == "list_queues"
    assert _cell_detail(fault.detail, "q1")["deleted"] == 2
    assert _cell_detail(fault.detail, "q1")["consumers_at_heal"] == 1

    slow: list[str] = []
    monkeypatch.setattr(consumer_timeout, "publish_slow", lambda t, q, key, s: slow.append(key))
    monkeypatch.setattr(consumer_timeout, "log_size", lambda node: 0)
    monkeypatch.setattr(consumer_timeout, "log_since", lambda node, offset: "")
    monkeypatch.setattr(consumer_timeout, "set_env", lambda *a: None)
    ct = consumer_timeout.ConsumerTimeout(_target(tmp_path))
    for queue in ("q1", "q2"):
        ct.configure(replace(_ctx(tmp_path), queue=queue))
    Ledger(tmp_path / "q2.ledger").record_executed("q2-slow-during")  # q2's consumer finished it
    ct.inject()
    ct.heal()
    assert slow == ["q1-slow-during", "q2-slow-during"]
    assert _cell_detail(ct.detail, "q1")["slow_task_runs_completed"] == 0
    assert _cell_detail(ct.detail, "q2")["slow_task_runs_completed"] == 1
