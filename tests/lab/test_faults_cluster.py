"""Guarded Celery against the name-resolution fault (dns-stall), on a real RabbitMQ.

One fault-matrix cell on its own testbed (namespaces ``hpfault-db``/``hpfault-dc``):
the worker dials the broker by name through a lab DNS server; the fault drops
DNS, flips the record to the broker's new address and black-holes the old one
(celery#2417, celery#2304). The guard's promise is asserted, and so is the
fault itself: DNS packets were dropped, the old address swallowed the worker's
traffic, and after heal the resolver answered with the new address (the worker
did look the name up again). The cluster faults (url-failover,
cluster-partition) need a 3-node cluster (~1 min to boot on 2 cores) and are
measured by the fault matrix only (docs/fault-matrix-cluster.md).

Budget: ~60-90 s on 2 cores (bed ~10 s, one cell with a 12 s hold).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.failure import Policy
from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.scenarios.fault_matrix import run_cell

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

STALL = 4.0
HOLD = 12.0
#: One backoff step plus Celery's consumer restart on a loaded 2-core box.
RECONNECT = 20.0
DETECT_SLACK = 4.0
#: Scheduling slack over the publish deadline (process start is not counted: the
#: probe measures from just before send_task).
PUBLISH_SLACK = 1.5


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBed]:
    bed = FaultBed(tmp_path_factory.mktemp("dnsbed"), prefix="hpfault-d")
    try:
        bed.up()
        yield bed
    finally:
        bed.close()


def test_guarded_celery_follows_the_flipped_record_without_loss(
    bed: FaultBed, tmp_path: Path
) -> None:
    cell = run_cell(
        bed, "dns-stall", "celery-prefork+harden", tmp_path, stall_timeout=STALL,
        hang_bound=60, hold=HOLD,
    )  # fmt: skip
    print(cell)
    detail = cell.fault_detail
    # The fault happened: the resolver was silent, the old address swallowed
    # traffic, and the worker's resolver got the new address after heal.
    assert detail["dns_packets_dropped"] > 0, detail
    assert detail["old_address_packets_dropped"] > 0, detail
    assert detail["queries_answered_new"] >= 1, detail
    # The promise.
    assert cell.worker_alive, cell.notes
    assert cell.detect_s is not None and cell.detect_s <= STALL + DETECT_SLACK, cell
    assert cell.resume_s not in ("HANG", "EXIT", "ERROR"), cell
    assert float(cell.resume_s or 0) <= STALL + RECONNECT, cell
    assert cell.published > 0 and cell.lost == 0 and cell.duplicated == 0, cell
    # A publish while DNS is silent fails within the publish deadline (the
    # guard bounds the name lookup too; stock py-amqp waits glibc's 10 s).
    m = re.match(r"error (\d+\.\d)s", cell.publish_during_fault)
    assert m, cell.publish_during_fault
    deadline = Policy(stall_timeout=STALL).publish_timeout
    assert deadline is not None
    assert float(m.group(1)) <= deadline + PUBLISH_SLACK, cell.publish_during_fault
