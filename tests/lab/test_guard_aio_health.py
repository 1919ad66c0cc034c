"""The health contract on a real aio-pika consumer (hangproof.aio.serve_health) and a real RabbitMQ.

The faults' testbed, as tests/lab/test_guard_health.py does for Celery, and
the same checks (its ``outage()``), on a consumer built the documented way
(``connect_robust`` + ``consume`` + ``serve_health``), in the clients'
namespace:

1. **Broker outage** (blackhole held longer than ``recover_timeout``):
   ``/readyz`` 503 within a bound, ``/livez`` 200 in every sample (no restart
   storm), no false ``/consumingz`` once the consumer knows, and after heal
   ``/consumingz`` 200 within a bound (consumer count and canary proven).
   Every answer is timed: the endpoints answer from the last probe round and
   must not wait on the blackholed broker.
2. **The broker cancels the consumer** (``rabbitmqctl delete_queue`` while
   it consumes): aio-pika's robust channel declares the queue again and
   consumes it, so a restart would not help: ``/livez`` 200 throughout and
   ``/consumingz`` back within a bound.
3. **The event loop wedged for good** while the broker is reachable (a
   lab-only SIGUSR2 handler blocks the loop on an Event nobody sets):
   ``/readyz`` fails first, ``/livez`` turns 503 after ``recover_timeout`` and
   not before, and the consumer answers it (503, not a timeout): the server
   lives on threads, not on the wedged loop.

The sampler (0.5 s period, monotonic clock shared with this process) runs in
the clients' namespace. Figures are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guard_workers import track
from test_guard_health import Sampler, brief, outage

from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.engine import processes

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

#: Not 3 s, the Celery test's: the broker's heartbeat sender skips a beat after
#: any other frame it sent (the canary's delivery), so an idle link's frame gap
#: reaches ``heartbeat`` (3 s, the floor) > silence_limit (2.4 s at 3 s).
#: Measured at 3 s: two false link-silent detections (2.65 s, 2.42 s) and
#: ``/readyz`` 503 in 2 of 17 steady-state samples. At 5 s silence_limit is 4 s.
STALL = 5.0
#: Explicit, the Celery test's 12 s: its outage() holds the blackhole 20 s,
#: which must be longer than recover_timeout.
RECOVER = 12.0
#: The endpoints answer from memory: 95 % of the answers within this, even with
#: the broker blackholed or the loop wedged ...
ANSWER_BOUND = 0.1
#: ... and every one within this. An answer that waited on the broker would
#: take a handshake_deadline (2.5 s) or hit the sampler's 1.5 s timeout; a
#: loaded 2-core box (a measurement runs alongside) delays a few: one answer
#: took 0.375 s in one run, 95 % were under 0.01 s.
ANSWER_MAX = 1.0
#: /livez turns 503 this long after recover_timeout at most: one tick period
#: (watchdog_interval 0.5 s), one sampler period (0.5 s), a loaded 2-core box.
LIVE_FAIL_SLACK = 2.0
#: Seconds of steady state sampled before the outage (several probe rounds).
STEADY = 10.0

CONSUMER = r"""
import asyncio, signal, sys, threading
from hangproof.aio import connect_robust, consume, serve_health
from hangproof.failure import Policy

url, queue, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
policy = Policy(stall_timeout=float(sys.argv[4]), recover_timeout=float(sys.argv[5]))

async def handle(message):
    pass

async def main():  # as docs/guard.md's snippet, plus the lab's wedge
    connection = await connect_robust(url, policy, give_up_after=None)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        tasks = await channel.declare_queue(queue, durable=True)
        await consume(tasks, handle)
        async with await serve_health(connection, [queue], port=port) as health:
            never = threading.Event()
            # Lab only: SIGUSR2 wedges the loop for good (a blocking call in a handler).
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, never.wait)
            print("serving on", health.url, flush=True)
            await asyncio.Future()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBed]:
    bed = FaultBed(tmp_path_factory.mktemp("aiohealthbed"), prefix="hpfault-a")
    bed.up()
    try:
        yield bed
    finally:
        bed.close()


def spawn_consumer(bed: FaultBed, tmp: Path, queue: str, port: int) -> tuple[int, Path]:
    log = tmp / f"{queue}.log"
    argv = [
        sys.executable,
        "-c",
        CONSUMER,
        bed.client_url,
        queue,
        str(port),
        str(STALL),
        str(RECOVER),
    ]
    proc = processes.spawn(argv, netns=bed.client_netns, log=log)
    track(proc.pid)
    return proc.pid, log


def answer_times(rows: list[dict]) -> dict[str, float]:
    """Every answer's time (unanswered ones too: they took the sampler's 1.5 s): max, p95."""
    times = sorted(r[k] for r in rows for k in r if k.endswith("_s"))
    if not times:
        return {"n": 0, "max": 0.0, "p95": 0.0}
    return {"n": len(times), "max": times[-1], "p95": times[int(0.95 * (len(times) - 1))]}


def assert_fast(answers: dict[str, float], figures: dict[str, object]) -> None:
    assert answers["n"] >= 40, answers
    assert answers["p95"] <= ANSWER_BOUND and answers["max"] <= ANSWER_MAX, figures


def test_aio_outage_and_wedged_loop(bed: FaultBed, tmp_path: Path) -> None:
    from hangproof.lab.components.rabbitmq import free_port

    queue = "aio-health-q"
    port = free_port()
    pid, log = spawn_consumer(bed, tmp_path, queue, port)
    sampler = Sampler(bed, tmp_path, port)
    figures: dict[str, object] = {"client": "aio-pika+serve_health"}
    try:
        t0 = time.monotonic()
        up = sampler.wait_for(lambda r: r["/consumingz"] == 200 and r["/livez"] == 200, 90, t0)
        assert up is not None, f"never consuming: {sampler.rows()[-3:]}\n{log.read_text()[-3000:]}"
        figures["consuming_after_start_s"] = round(up, 1)
        # -- 0. steady state: an idle consumer with its probe rounds is ready throughout
        steady = time.monotonic() + 1.0
        time.sleep(STEADY)
        rows = sampler.rows(steady)
        figures["ready_ok_steady"] = f"{sum(r['/readyz'] == 200 for r in rows)}/{len(rows)}"
        figures["consuming_ok_steady"] = f"{sum(r['/consumingz'] == 200 for r in rows)}/{len(rows)}"
        assert rows and all(r["/readyz"] == 200 and r["/livez"] == 200 for r in rows), brief(
            [r for r in rows if r["/readyz"] != 200 or r["/livez"] != 200]
        )

        # -- 1. broker outage: ready fails, live stays 200, consuming comes back
        started = time.monotonic()
        silent = outage(bed, sampler, pid, figures)
        outage_rows = sampler.rows(started)
        figures["answers_outage_s"] = answer_times(outage_rows)
        assert not silent, f"/livez did not answer: {silent[:2]}"
        assert_fast(figures["answers_outage_s"], figures)  # type: ignore[arg-type]

        # -- 2. the broker cancels the consumer (queue deleted while consumed):
        # aio-pika's robust channel declares the queue again and consumes it
        # (hangproof.aio.consume), so this is not a wedge: /livez stays 200
        # and /consumingz comes back.
        time.sleep(2)
        deleted = time.monotonic()
        bed.node.ctl("delete_queue", queue, timeout=30)
        time.sleep(STALL)
        back = sampler.wait_for(lambda r: r["/consumingz"] == 200, 30, time.monotonic())
        rows = sampler.rows(deleted)
        figures["consuming_after_delete_queue_s"] = (
            None if back is None else round(time.monotonic() - deleted, 1)
        )
        figures["live_ok_after_delete_queue"] = (
            f"{sum(r['/livez'] == 200 for r in rows)}/{len(rows)}"
        )
        assert back is not None, figures
        assert all(r["/livez"] == 200 for r in rows), brief([r for r in rows if r["/livez"] != 200])

        # -- 3. the event loop wedged for good (broker reachable): live must fail
        time.sleep(2)
        wedged = time.monotonic()
        os.kill(pid, signal.SIGUSR2)
        not_ready = sampler.wait_for(lambda r: r["/readyz"] != 200, 3 * STALL + 5, wedged)
        not_live = sampler.wait_for(
            lambda r: r["/livez"] != 200, RECOVER + LIVE_FAIL_SLACK + 10, wedged
        )
        time.sleep(2)
        rows = sampler.rows(wedged)
        print("wedge samples", json.dumps(rows[:: max(1, len(rows) // 12)], default=str)[:4000])
        figures["wedge_not_ready_s"] = None if not_ready is None else round(not_ready, 2)
        figures["wedge_not_live_s"] = None if not_live is None else round(not_live, 2)
        figures["answers_wedged_s"] = answer_times(rows)
        assert not_ready is not None, figures
        assert not_live is not None, f"liveness never failed with a wedged loop: {figures}"
        # Not before the loop had recover_timeout to come back; soon after it.
        assert RECOVER <= not_live <= RECOVER + LIVE_FAIL_SLACK, figures
        late = [r for r in rows if r["t"] >= wedged + not_ready + 1.0]
        assert not [r for r in late if r["/consumingz"] == 200], figures
        last = rows[-1]
        assert last["/livez"] == 503 and "event loop stalled" in last["reason"]["live_reason"], last
        assert all(r["/livez"] != 0 for r in rows), "a wedged loop silenced the endpoints"
        assert_fast(figures["answers_wedged_s"], figures)  # type: ignore[arg-type]
    finally:
        print("figures", json.dumps(figures))
        sampler.close()
        processes.stop_pid(pid)
        print(log.read_text(errors="replace")[-4000:])
