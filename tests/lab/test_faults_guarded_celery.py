"""Guarded Celery (prefork + harden) against the lab faults, on a real RabbitMQ.

Each test measures one fault-matrix cell on the faults' testbed (own
namespaces ``hpfault-tb``/``hpfault-tc``, 198.18.200.0/30) and asserts the
guard's promise: the worker notices within ``stall_timeout``, resumes within
``stall_timeout`` plus reconnect time after heal, and loses no task.
Everything is stopped by pid and the namespaces deleted in finalizers.

Over TLS: blackhole always also runs on a TLS bed (CI's TLS subset: the worker
dials amqps:// verified against the lab CA, the fault drops the TLS port);
``HANGPROOF_LAB_TLS=1`` runs every cell over TLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from guard_workers import LAB_TLS

from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.scenarios.fault_matrix import run_cell

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

STALL = 4.0
#: Reconnect time after heal: backoff steps plus Celery's consumer restart on
#: 2 cores (measured 2-8 s); generous so a slow CI box is not a false failure.
RECONNECT = 20.0
#: Detection is counted from the start of inject(), which for some faults
#: includes rabbitmqctl (1-2 s on a loaded 2-core box): slack on top of STALL.
DETECT_SLACK = 4.0


class Beds:
    """At most one testbed at a time, rebuilt only when the transport changes."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.current: FaultBed | None = None
        self.tls: bool | None = None

    def get(self, tls: bool) -> FaultBed:
        if self.current is not None and self.tls == tls:
            return self.current
        self.close()  # one broker at a time on 2 cores
        bed = FaultBed(self.factory.mktemp("faultbed"), prefix="hpfault-t", tls=tls)
        bed.up()  # removes what it built if it fails
        self.current, self.tls = bed, tls
        return bed

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


@pytest.fixture(scope="module")
def beds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Beds]:
    """The faults' testbed, plain or TLS (clients dial amqps://, faults act on 5671)."""
    beds = Beds(tmp_path_factory)
    try:
        yield beds
    finally:
        beds.close()


CELLS = [
    ("blackhole", 12.0),
    ("broker-freeze", 12.0),
    ("heal-after-half-open", 12.0),
    ("heartbeat-only-handshake", 12.0),
]
TRANSPORT = "tls" if LAB_TLS else "tcp"
PARAMS = [(fault, hold, TRANSPORT) for fault, hold in CELLS]
if not LAB_TLS:
    PARAMS.append(("blackhole", 12.0, "tls"))


@pytest.mark.parametrize(("fault", "hold", "transport"), PARAMS)
def test_guarded_celery_recovers_without_loss(
    beds: Beds, tmp_path: Path, fault: str, hold: float, transport: str
) -> None:
    bed = beds.get(tls=transport == "tls")  # TLS cells come last: one switch
    cell = run_cell(
        bed, fault, "celery-prefork+harden", tmp_path, stall_timeout=STALL, hang_bound=60, hold=hold
    )
    print(cell)
    assert cell.worker_alive, cell.notes
    assert cell.detect_s is not None and cell.detect_s <= STALL + DETECT_SLACK, cell
    assert cell.resume_s != "HANG" and float(cell.resume_s or 0) <= STALL + RECONNECT, cell
    assert cell.published > 0
    assert cell.lost == 0, cell
