"""silent-flow-loss: the open flows die silently, new flows work (issue 8, item 2).

On the faults' testbed (own namespaces ``hpfault-sb``/``hpfault-sc``), with
the policy's default ``stall_timeout`` (15 s, the reported case):

- a guarded Celery worker (prefork, late acks) resumes within
  ``stall_timeout`` + one backoff step of the fault, loses no task, and its
  new connection is never dropped for missed heartbeats while the old ones
  are torn down (before the fix: 41 s, 2 x read_timeout in the event
  dispatcher's Close-Ok wait);
- a guarded web-style producer (``delay()`` one call at a time) never says
  "ok" for a message the broker does not have, and no call takes longer than
  ``publish_timeout`` + 1 s.

Stock figures are measured beside them and printed, not judged. Takes about
3 minutes (one bed, two worker cells, one producer run).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from guard_workers import LAB_TLS

from hangproof.failure import Policy
from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.engine import processes
from hangproof.lab.faults import make_fault
from hangproof.lab.scenarios.fault_matrix import run_cell

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

STALL = 15.0
POLICY = Policy(stall_timeout=STALL)
#: The promise: fault -> first new task executed.
RESUME_BOUND = STALL + POLICY.backoff.delay(0)
#: Stock has no bound of its own; a minute shows the hang without a long test.
STOCK_HANG_BOUND = 60.0
#: The producers run this long; the fault comes after PRODUCE_BEFORE of it.
PRODUCE_SECONDS = 35.0
PRODUCE_BEFORE = 5.0


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBed]:
    bed = FaultBed(tmp_path_factory.mktemp("flowbed"), prefix="hpfault-s", tls=LAB_TLS)
    try:
        bed.up()
        yield bed
    finally:
        bed.close()


def _heartbeat_losses_after_reconnect(log: Path) -> int:
    """Heartbeat losses on the connection the guard opened after the fault.

    The fault's own loss is noticed either as ``heartbeat-missed`` or, first,
    by the consuming probe (``not-consuming``: the broker dropped the dead
    consumer); either way it comes before the first ``reconnected``. Any
    heartbeat loss after that line is the new connection being dropped.
    """
    text = log.read_text(errors="replace") if log.exists() else ""
    at = text.find("hangproof.guard: reconnected")
    assert at >= 0, "the guard never reconnected"
    return len(re.findall(r"connection-error .*heartbeat-missed", text[at:]))


def test_guarded_worker_resumes_within_the_promise(bed: FaultBed, tmp_path: Path) -> None:
    guarded = run_cell(
        bed, "silent-flow-loss", "celery-prefork+harden", tmp_path, stall_timeout=STALL,
        hang_bound=60,
    )  # fmt: skip
    stock = run_cell(
        bed, "silent-flow-loss", "celery-prefork", tmp_path, stall_timeout=STALL,
        hang_bound=STOCK_HANG_BOUND,
    )  # fmt: skip
    for cell in (guarded, stock):
        print(
            f"silent-flow-loss {cell.profile}: flows cut {cell.fault_detail.get('flows')}, "
            f"detect {cell.detect_s} s, fault -> first new task executed {cell.resume_s} s, "
            f"published {cell.published}, executed {cell.executed}, stranded {cell.stranded}, "
            f"lost {cell.lost}, alive {cell.worker_alive}"
        )
    assert guarded.fault_detail.get("flows", 0) >= 2, guarded  # consumer + event dispatcher
    assert guarded.worker_alive, guarded.notes
    assert isinstance(guarded.resume_s, float), guarded
    assert guarded.resume_s <= RESUME_BOUND, guarded
    assert guarded.detect_s is not None and guarded.detect_s <= STALL, guarded
    assert guarded.published > 0 and guarded.lost == 0, guarded
    # The new connection kept its heartbeats while the old ones were torn
    # down: the broker never dropped it (the fault's loss comes before the
    # reconnect, noticed as heartbeat-missed or by the consuming probe).
    log = tmp_path / "fm-silent-flow-loss-celery-prefork-harden.log"
    assert _heartbeat_losses_after_reconnect(log) == 0, log.read_text()[-3000:]


def _calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drain(bed: FaultBed, queue: str) -> set[str]:
    out = processes.run(
        [
            sys.executable,
            "-m",
            "hangproof.lab.clients.delay_loop",
            "drain",
            bed.producer_url,
            queue,
        ],
        netns=bed.broker_netns,
        timeout=60,
    )
    return set(out.stdout.split())


def test_guarded_producer_never_lies_nor_hangs(bed: FaultBed, tmp_path: Path) -> None:
    fault = make_fault("silent-flow-loss", bed.target)
    runs = {"guarded": "1", "stock": "0"}
    procs = {}
    try:
        fault.prepare()  # type: ignore[attr-defined]  # conntrack tracks the flows from SYN
        for name, guard in runs.items():
            env = {
                "HANGPROOF_BROKER_URL": bed.client_url,
                # amqps:// verified against the lab CA with HANGPROOF_LAB_TLS=1
                "HANGPROOF_BROKER_USE_SSL": json.dumps(bed.client_ssl) if bed.client_ssl else "",
                "HANGPROOF_GUARD": guard,
                "HANGPROOF_STALL_TIMEOUT": str(STALL),
            }
            argv = [sys.executable, "-m", "hangproof.lab.clients.delay_loop", "run", f"sfl-{name}"]
            argv += [str(tmp_path / f"{name}.jsonl"), "--seconds", str(PRODUCE_SECONDS)]
            argv += ["--interval", "0.25", "--prefix", f"{name}-"]
            procs[name] = processes.spawn(
                argv, netns=bed.client_netns, env=env, log=tmp_path / f"{name}.log"
            )
        time.sleep(PRODUCE_BEFORE)
        injected_at = time.time()
        fault.inject()
        for proc in procs.values():
            # Bounded: a hung stock call is stopped at the end (and shows as such).
            try:
                proc.wait(timeout=PRODUCE_SECONDS + 30)
            except Exception:
                processes.stop_pid(proc.pid)
    finally:
        for proc in procs.values():
            processes.stop_pid(proc.pid)
        fault.close()  # type: ignore[attr-defined]
    figures = {}
    for name in runs:
        calls = _calls(tmp_path / f"{name}.jsonl")
        queued = _drain(bed, f"sfl-{name}")
        after = [c for c in calls if c["at"] >= injected_at]
        ok_keys = {c["key"] for c in calls if c["ok"]}
        figures[name] = {
            "calls": len(calls),
            "calls_after_fault": len(after),
            "ok_after_fault": sum(c["ok"] for c in after),
            "errors": sum(not c["ok"] for c in calls),
            "false_ok": len(ok_keys - queued),
            "max_call_s": max((c["seconds"] for c in calls), default=None),
            "first_error": next((c["error"] for c in calls if not c["ok"]), None),
        }
        print(f"silent-flow-loss producer {name}: {json.dumps(figures[name])}")
    g = figures["guarded"]
    assert g["calls_after_fault"] > 0 and g["ok_after_fault"] > 0, g  # it came back
    assert g["false_ok"] == 0, g
    assert POLICY.publish_timeout is not None
    assert g["max_call_s"] is not None and g["max_call_s"] <= POLICY.publish_timeout + 1.0, g
