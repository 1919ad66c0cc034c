"""The call faults (issue 10): guarded ``delay()``, ``apply_async()``, ``inspect ping``, ``close()``.

Upstream reports: celery#6911 / kombu#1463 (``delay()`` hangs forever when the
broker is down, open), celery#5067 (``inspect ping`` ignores its timeout),
celery#1305, celery#1828 (publishes block under a disk alarm), pika#764
(``close()`` of a blocked connection hangs).

On one faults' testbed (own namespaces ``hpfault-qb``/``hpfault-qc``), each
fault is injected for real (RabbitMQ ``stop_app``, an iptables REJECT in the
broker's namespace, ``set_disk_free_limit`` above the free disk) and every
call is made from the clients' namespace by a hardened Celery app, cold (a
fresh process) and warm (a process that published before the fault), each
bounded from outside (:mod:`hangproof.lab.clients.call_probe`). Asserted:

- the fault really happened (its own evidence: AMQP stopped answering, the
  REJECT rule counted packets, the broker listed the disk alarm);
- broker down or rejecting: every guarded call returns an *error* within its
  deadline (publish_timeout + 1 s; ping + its 1 s reply wait);
- disk alarm: every guarded call returns within its deadline, and no ok
  publish is a false ok (the broker's own message count after the alarm
  clears); close() of the blocked connection returns.

Stock Celery is measured in docs/fault-matrix-calls.md, not here (its close()
under the alarm hangs: it would cost the bound).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.scenarios.fault_calls import CALLS_OF, MUST_FAIL, measure_fault

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

#: The matrix's stall_timeout (Policy default): publish_timeout 7.5 s.
STALL = 15.0
#: The outer bound of each call: well above every guarded deadline (16 s at most).
BOUND = 25.0
GUARDED = ["celery+harden", "celery+harden warm"]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBed]:
    bed = FaultBed(tmp_path_factory.mktemp("callbed"), prefix="hpfault-q")
    bed.up()  # removes what it built if it fails
    try:
        yield bed
    finally:
        bed.close()


@pytest.mark.parametrize("fault", list(CALLS_OF))
def test_guarded_calls_keep_their_deadline_during_the_fault(
    bed: FaultBed, fault: str, tmp_path: Path
) -> None:
    report = measure_fault(bed, fault, GUARDED, tmp_path, stall=STALL, bound=BOUND)
    assert report["fault_happened"], report["fault_detail"]
    calls = report["calls"]
    assert {(c["profile"], c["call"]) for c in calls} == {
        (p, c) for p in GUARDED for c in CALLS_OF[fault]
    }
    for c in calls:
        where = f"{c['profile']} {c['call']}: {c['label']} ({c['message'][:120]})"
        assert c["outcome"] != "HANG", where
        assert c["seconds"] is not None and c["seconds"] <= c["deadline_s"], where
        assert not c["false_ok"], where
        if c["warm_up"] is not None:
            assert c["warm_up"]["outcome"] == "ok", where  # warm really was warm
        if fault in MUST_FAIL:
            assert c["outcome"] == "error", where
        assert c["miss"] is None, where
    if fault == "disk-alarm":
        for c in calls:
            if c["call"] == "close":
                steps = {s["step"]: s for s in c["steps"]}
                assert steps["release"]["outcome"] == "ok", c["label"]  # close() returned


def test_stock_celery_under_the_disk_alarm_gives_a_false_ok_and_close_hangs(
    bed: FaultBed, tmp_path: Path
) -> None:
    """The upstream symptoms, so the assertions above can fail: celery#1828 and pika#764.

    Stock Celery's publish returns ok at once although the broker never queues
    the task (it is not even there after the alarm clears), and ``release()``
    of the blocked connection waits for Close-Ok past any bound.
    """
    report = measure_fault(
        bed, "disk-alarm", ["celery"], tmp_path, stall=STALL, bound=8.0,
        calls=["apply_async", "close"],
    )  # fmt: skip
    assert report["fault_happened"], report["fault_detail"]
    by_call = {c["call"]: c for c in report["calls"]}
    assert by_call["apply_async"]["false_ok"], by_call["apply_async"]["label"]
    assert by_call["close"]["outcome"] == "HANG", by_call["close"]["label"]
    assert by_call["close"]["hung_in"] == "release", by_call["close"]["label"]
