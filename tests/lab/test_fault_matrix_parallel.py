"""The fault matrix's parallel mode on a real RabbitMQ: several profiles, ONE injection.

blackhole (a silent half-open link) is injected once, held and healed once
while three guarded profiles (Celery prefork + harden, kombu + guard,
aio-pika + guard) each consume their own queue with their own ledger,
producer and publish probes. Every cell must carry the matrix's keys
(consumers after heal from the broker's own view, the publish verdict, false
ok, the promise) and every guarded cell must keep the promise as
:func:`judge_promise` states it: detect <= stall_timeout, resume <=
stall_timeout + one backoff step after heal, 0 lost, 0 false ok, the worker
alive, a consumer on the queue again. Namespaces ``hpfault-pb``/``hpfault-pc``;
everything stopped by pid and removed in finalizers. About 90 s on 2 cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.scenarios.fault_matrix import PUBLISH_VERDICTS, judge_promise, run_group

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

#: As tests/lab/test_faults_guarded_celery.py.
STALL = 4.0
HOLD = 12.0
PROFILES = ["celery-prefork+harden", "kombu+guard", "aio-pika+guard"]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBed]:
    bed = FaultBed(tmp_path_factory.mktemp("faultbed"), prefix="hpfault-p")
    bed.up()  # removes what it built if it fails
    try:
        yield bed
    finally:
        bed.close()


def test_parallel_blackhole_guarded_profiles_keep_the_promise(
    bed: FaultBed, tmp_path: Path
) -> None:
    cells = run_group(
        bed, "blackhole", PROFILES, tmp_path, stall_timeout=STALL, hang_bound=60, hold=HOLD
    )
    for cell in cells:
        print(cell)
    assert [c.profile for c in cells] == PROFILES
    # One injection: every cell shares the same inject -> heal span.
    assert {c.shared_with for c in cells} == {len(PROFILES)}
    assert len({c.heal_s for c in cells}) == 1 and cells[0].heal_s >= HOLD, cells
    for cell in cells:
        assert cell.published > 0, cell
        assert cell.publish_verdict in PUBLISH_VERDICTS, cell
        assert isinstance(cell.consumers_after_heal, int), cell
        assert cell.promise is not None and set(cell.promise) == {
            "met",
            "failures",
            "rules",
            "unmeasured",
        }, cell
        # The stored verdict is the pure function's on the recorded cell.
        assert judge_promise(asdict(cell), STALL) == cell.promise
        assert cell.promise["met"], (cell.profile, cell.promise["failures"], cell)
        assert cell.lost == 0 and not cell.false_ok and cell.worker_alive, cell
        assert cell.consumers_after_heal >= 1, cell
