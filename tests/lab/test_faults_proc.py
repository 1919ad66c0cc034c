"""Guarded Celery (prefork + harden) when the client freezes or the broker closes its channel.

Two fault-matrix cells on the faults' testbed (own namespaces
``hpfault-pb``/``hpfault-pc``), each asserting the guard's promise *and* that
the fault really happened:

- client-freeze (celery#4980, celery#5157, celery#5998, kombu#806,
  py-amqp#396): the worker's main process is SIGSTOPped for 3 x heartbeat
  (the process was stopped; the broker dropped its connections for missed
  heartbeats), then SIGCONT. A frozen process cannot notice anything, so
  detection is bounded from the SIGCONT: within ``stall_timeout`` of it;
- consumer-timeout (celery#6760, open: stock Celery exits on the 406): a task
  runs longer than the broker's ``consumer_timeout``; the broker closed the
  channel (its log says so) and the hardened worker must stay alive, come
  back and lose nothing.

Everything is stopped by pid and the namespaces deleted in finalizers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.failure import Policy
from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.faults.client_freeze import HEARTBEATS
from hangproof.lab.scenarios.fault_matrix import Cell, run_cell

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

STALL = 4.0
PROFILE = "celery-prefork+harden"
#: The freeze: 3 x the guard's heartbeat (3 s at stall 4).
FREEZE = float(HEARTBEATS * (Policy(stall_timeout=STALL).heartbeat or 3))
#: heal() asks the broker (rabbitmqctl, 1-3 s on a loaded 2-core box) before SIGCONT.
HEAL_CTL = 5.0
#: As tests/lab/test_faults_guarded_celery.py: reconnect time and rabbitmqctl slack.
RECONNECT = 20.0
DETECT_SLACK = 4.0


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBed]:
    """One testbed for both cells."""
    bed = FaultBed(tmp_path_factory.mktemp("faultbed"), prefix="hpfault-p")
    bed.up()  # removes what it built if it fails
    try:
        yield bed
    finally:
        bed.close()


def _promise_after(cell: Cell, *, resume_bound: float) -> None:
    assert cell.worker_alive, cell.notes
    assert isinstance(cell.resume_s, float), cell  # not HANG / EXIT / ERROR
    assert cell.resume_s <= resume_bound, cell
    assert cell.published > 0, cell
    assert cell.lost == 0, cell


def test_client_freeze_guarded_celery_comes_back(bed: FaultBed, tmp_path: Path) -> None:
    cell = run_cell(
        bed, "client-freeze", PROFILE, tmp_path, stall_timeout=STALL, hang_bound=60, hold=FREEZE
    )
    print(cell)
    detail = cell.fault_detail
    assert detail["stopped"] is True, detail  # the kernel had the process stopped (state T)
    assert detail["heartbeats"] == [Policy(stall_timeout=STALL).heartbeat], detail
    assert detail["dropped_by_broker"] >= 1, detail  # the broker closed it for missed heartbeats
    assert any("missed heartbeats" in line for line in detail["broker_log"]), detail
    assert FREEZE <= detail["frozen_s"] <= FREEZE + HEAL_CTL, detail
    # Frozen, it cannot notice: detection is bounded from the SIGCONT.
    assert cell.detect_s is not None, cell
    after_sigcont = cell.detect_s - detail["sigstop_after_s"] - detail["frozen_s"]
    assert after_sigcont <= STALL + DETECT_SLACK, cell
    _promise_after(cell, resume_bound=STALL + RECONNECT)


def test_consumer_timeout_guarded_celery_survives_the_406(bed: FaultBed, tmp_path: Path) -> None:
    cell = run_cell(
        bed, "consumer-timeout", PROFILE, tmp_path, stall_timeout=STALL, hang_bound=60, hold=9.0
    )
    print(cell)
    detail = cell.fault_detail
    assert detail["channel_closed_by_broker"] >= 1, detail  # the broker's 406, from its log
    assert cell.detect_s is not None and cell.detect_s <= STALL + DETECT_SLACK, cell
    assert "PreconditionFailed" in (cell.detected_by or "") or "406" in (cell.detected_by or "")
    _promise_after(cell, resume_bound=STALL + RECONNECT)
