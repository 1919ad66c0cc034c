"""The link faults of issue 10, guarded, on a real RabbitMQ: one-way loss and a middle box.

- ``one-way-loss-in`` (kombu#670, kombu#463): the faults' testbed drops only
  broker -> client on the broker's interface while a stock kombu filler
  publishes into the link. A guarded Celery worker (prefork + harden) must
  notice within ``stall_timeout``, resume after heal, and lose nothing; and the
  fault must really have happened: the DROP rule counted packets and the
  filler's publish stopped advancing (its send buffer filled).
- ``flow-state-expiry`` (celery#1503, celery#2236, py-amqp#101, celery#987):
  the router testbed's conntrack forgets the clients' flows (established
  timeout 0 s in the router namespace only, INVALID dropped). The guarded
  kombu consumer must keep the promise; and the router's table must have held
  the client's flow before inject and none after, with INVALID packets dropped.

One bed at a time (plain, then router), each stopped by pid and its namespaces
deleted in a finalizer. Measured ~110 s in all on a loaded 2-core box.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.scenarios.fault_matrix import Cell, run_cell

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(400)]

STALL = 4.0
HOLD = 10.0
#: One backoff step (Backoff().maximum 5 s) plus the consumer's restart on a
#: loaded 2-core box (Celery 2-8 s measured): generous, not a false failure.
RECONNECT = 15.0
#: inject() itself takes 0.5-1.5 s (iptables, sysctl, conntrack) on 2 cores.
DETECT_SLACK = 3.0


def _assert_promise(c: Cell) -> None:
    assert c.worker_alive, c
    assert c.detect_s is not None and c.detect_s <= STALL + DETECT_SLACK, c
    assert isinstance(c.resume_s, float) and c.resume_s <= STALL + RECONNECT, c
    assert c.published > 0 and c.lost == 0, c
    during = c.publish_during_fault
    assert during.startswith("error") or during.endswith("(executed)"), c  # no false ok


@pytest.mark.parametrize(
    ("fault", "profile", "router"),
    [
        ("one-way-loss-in", "celery-prefork+harden", False),
        ("flow-state-expiry", "kombu+guard", True),
    ],
)
def test_guard_keeps_its_promise_on_link_faults(
    tmp_path_factory: pytest.TempPathFactory, fault: str, profile: str, router: bool
) -> None:
    work: Path = tmp_path_factory.mktemp(fault)
    bed = FaultBed(work / "bed", prefix="hpfault-l", router=router)
    try:
        bed.up()
        cell = run_cell(bed, fault, profile, work, stall_timeout=STALL, hang_bound=60, hold=HOLD)
    finally:
        bed.close()
    print(cell)
    measured = cell.fault_detail["measured"]
    if fault.startswith("one-way-loss"):
        assert measured["dropped_packets"] > 0, cell  # the rule really dropped traffic
        assert measured["filler_blocked"] is True, cell  # the send buffer filled
    else:
        assert measured["entries_before"] >= 1, cell  # the router tracked the flow
        assert measured["entries_after"] == 0, cell  # ... and forgot it
        assert measured["invalid_packets"] > 0, cell  # its next packets were dropped
    _assert_promise(cell)
