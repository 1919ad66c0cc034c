"""The health contract on real hardened Celery workers and a real RabbitMQ (the faults' testbed).

guard/health.py, docs/guard.md "Health contract". Prefork (three events in one
worker's life) and gevent (the outage):

1. **Broker outage** (blackhole: iptables DROP on the broker's AMQP port,
   held longer than ``recover_timeout``): readiness fails within a bound,
   liveness answers 200 in every sample throughout (no restart storm), no
   false "consuming" once the worker knows it is not, and after heal
   ``/consumingz`` proves consumption again (the broker shows a consumer on
   the queue and the canary comes back). The old ``/healthz`` is sampled
   alongside, to show what a liveness probe on it would have done.
2. **The broker cancels the consumer** (``rabbitmqctl delete_queue`` while it
   consumes): measured, Celery 5.7 takes py-amqp's ConsumerCancelled as a
   connection error, reconnects and declares the queue again, so a restart
   would not help: liveness must stay 200 and consuming come back.
3. **The event loop wedged for good** while the broker is reachable (the
   sample app's lab-only SIGUSR2 handler blocks the main thread, i.e. the
   prefork consumer's loop, on a lock nobody releases; the watchdog's socket
   shutdown cannot free it): readiness and consuming fail first, liveness
   fails after ``recover_timeout`` and not before, and the worker itself
   answers 503 (not a timeout).

The endpoints are sampled from inside the clients' namespace by one small
sampler process (monotonic clock, shared with this process), so the timeline
is measured, not inferred. Figures are printed (``-s``).
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

from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.engine import processes
from hangproof.lab.faults import make_fault

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

STALL = 3.0
RECOVER = 4 * STALL  # Policy.recover_timeout
#: The outage lasts longer than recover_timeout: the old /healthz fails in it.
OUTAGE = RECOVER + 8.0
#: Readiness fails within: stall detection (STALL) plus one watchdog and one
#: sampler period, plus slack for a loaded 2-core box.
READY_FAIL_BOUND = STALL + 3.0
#: Consuming proven again after heal: reconnect (backoff <= 5 s, Celery's
#: consumer restart) + the next probe round (interval STALL) + slack.
CONSUMING_BOUND = 30.0

SAMPLER = r"""
import json, sys, time, urllib.error, urllib.request
port, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
import os
with open(out, "a", buffering=1) as f:
    for _ in range(2000):
        if os.path.exists(stop):
            break
        row = {"t": time.monotonic()}
        for path in ("/livez", "/readyz", "/consumingz", "/healthz"):
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1.5) as r:
                    code, body = r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                code, body = e.code, json.loads(e.read() or b"{}")
            except Exception as e:
                code, body = 0, {"error": repr(e)}
            row[path] = code
            row[path + "_s"] = round(time.monotonic() - t0, 4)  # how long the answer took
            if path == "/consumingz":
                row["reason"] = {k: body.get(k) for k in ("live_reason", "ready_reason", "consuming_reason")}
                row["probe"] = body.get("probe")
        f.write(json.dumps(row) + "\n")
        time.sleep(0.5)
"""


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBed]:
    bed = FaultBed(tmp_path_factory.mktemp("healthbed"), prefix="hpfault-h")
    bed.up()
    try:
        yield bed
    finally:
        bed.close()


def spawn_worker(
    bed: FaultBed, tmp: Path, queue: str, port: int, pool: str = "prefork", probe: bool = True
) -> tuple[int, Path]:
    log = tmp / f"{queue}.log"
    env = {
        "HANGPROOF_BROKER_URL": bed.client_url,
        "HANGPROOF_GUARD": "1",
        "HANGPROOF_STALL_TIMEOUT": str(STALL),
        "HANGPROOF_LIVENESS_PORT": str(port),
        "HANGPROOF_LEDGER": str(tmp / f"{queue}.ledger"),
        "HANGPROOF_PREFETCH": "1",
        "HANGPROOF_WEDGE_ON_SIGUSR2": "1",
        "HANGPROOF_CONSUMING_PROBE": "1" if probe else "0",
    }
    argv = [sys.executable, "-m", "celery", "-A", "hangproof.lab.clients.celery_app", "worker"]
    argv += [
        "-P",
        pool,
        "-c",
        "2" if pool == "prefork" else "10",
        "-n",
        f"{queue}@%h",
        "-Q",
        queue,
        "--loglevel=INFO",
    ]
    argv += ["--without-mingle", "--without-gossip"]
    proc = processes.spawn(argv, netns=bed.client_netns, env=env, log=log)
    track(proc.pid)
    return proc.pid, log


class Sampler:
    """The endpoints' status codes (and how long each answer took, ``<path>_s``) every 0.5 s,
    from inside the clients' namespace."""

    def __init__(self, bed: FaultBed, tmp: Path, port: int) -> None:
        self.out, self.stop_file = tmp / "samples.jsonl", tmp / "samples.stop"
        self.proc = processes.spawn(
            [sys.executable, "-c", SAMPLER, str(port), str(self.out), str(self.stop_file)],
            netns=bed.client_netns,
        )

    def rows(self, since: float = 0.0, until: float = float("inf")) -> list[dict]:
        if not self.out.exists():
            return []
        rows = [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]
        return [r for r in rows if since <= r["t"] <= until]

    def wait_for(self, predicate, bound: float, since: float) -> float | None:  # type: ignore[no-untyped-def]
        """Seconds from ``since`` to the first sample matching ``predicate`` (None: not in ``bound``)."""
        end = time.monotonic() + bound
        while time.monotonic() < end:
            for r in self.rows(since):
                if predicate(r):
                    return r["t"] - since
            time.sleep(0.25)
        return None

    def close(self) -> None:
        self.stop_file.write_text("stop")
        time.sleep(1)
        processes.stop_pid(self.proc.pid, grace=1)


def brief(rows: list[dict]) -> str:
    """The rows that failed, with the worker's reasons (a CI failure must say why)."""
    keep = ("t", "/livez", "/readyz", "/consumingz", "reason")
    return json.dumps([{k: r.get(k) for k in keep} for r in rows[:3]], default=str)


def outage(bed: FaultBed, sampler: Sampler, pid: int, figures: dict[str, object]) -> list[dict]:
    """Blackhole the broker for OUTAGE s: ready fails in bound, live never 503, consuming back.

    Returns the samples in which ``/livez`` did not answer at all (status 0,
    no answer within the sampler's 1.5 s); the caller decides (prefork: none).
    """
    fault = make_fault("blackhole", bed.target)
    injected = time.monotonic()
    fault.inject()
    try:
        not_ready = sampler.wait_for(lambda r: r["/readyz"] != 200, READY_FAIL_BOUND + 5, injected)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - injected)))
    finally:
        fault.heal()
    healed = time.monotonic()
    consuming = sampler.wait_for(lambda r: r["/consumingz"] == 200, CONSUMING_BOUND + 10, healed)
    rows = sampler.rows(injected, healed)
    figures["ready_failed_after_s"] = None if not_ready is None else round(not_ready, 1)
    figures["live_ok_during_outage"] = f"{sum(r['/livez'] == 200 for r in rows)}/{len(rows)}"
    figures["healthz_ok_during_outage"] = f"{sum(r['/healthz'] == 200 for r in rows)}/{len(rows)}"
    figures["consuming_after_heal_s"] = None if consuming is None else round(consuming, 1)
    print("outage samples", json.dumps(rows[:: max(1, len(rows) // 12)], default=str)[:3000])
    assert processes.pid_alive(pid), "worker exited during the outage"
    assert not_ready is not None and not_ready <= READY_FAIL_BOUND, figures
    assert len(rows) >= 10, f"too few samples: {len(rows)}"
    said_restart = [r for r in rows if r["/livez"] not in (200, 0)]
    assert not said_restart, brief(said_restart)  # the contract never says "restart me" here
    # No false "consuming" once the worker knows it is not (1 s: the samples
    # of one row are separate requests).
    late = [r for r in rows if r["t"] >= injected + not_ready + 1.0]
    false_ok = [r for r in late if r["/consumingz"] == 200]
    figures["consuming_false_ok_during_outage"] = f"{len(false_ok)}/{len(late)}"
    assert not false_ok, false_ok[:2]
    assert consuming is not None and consuming <= CONSUMING_BOUND, figures
    after = sampler.rows(healed)
    restart_after = [r for r in after if r["/livez"] not in (200, 0)]
    assert not restart_after, f"healed at {healed:.1f}: {brief(restart_after)}"
    silent = [r for r in rows + after if r["/livez"] == 0]
    figures["livez_no_answer_samples"] = len(silent)
    return silent


def start(bed: FaultBed, tmp: Path, queue: str, pool: str) -> tuple[int, Path, Sampler, float]:
    from hangproof.lab.components.rabbitmq import free_port

    port = free_port()
    pid, log = spawn_worker(bed, tmp, queue, port, pool)
    sampler = Sampler(bed, tmp, port)
    t0 = time.monotonic()
    up = sampler.wait_for(lambda r: r["/consumingz"] == 200 and r["/livez"] == 200, 90, t0)
    assert up is not None, f"never consuming: {sampler.rows()[-3:]}\n{log.read_text()[-3000:]}"
    return pid, log, sampler, up


def test_gevent_outage(bed: FaultBed, tmp_path: Path) -> None:
    """The same outage contract under the gevent pool (threads are greenlets there)."""
    pid, log, sampler, up = start(bed, tmp_path, "health-gevent", "gevent")
    figures: dict[str, object] = {"pool": "gevent", "consuming_after_start_s": round(up, 1)}
    try:
        time.sleep(2)
        silent = outage(bed, sampler, pid, figures)
        # Before the guard rebound kombu's retry sleep under gevent
        # (upstream.cooperative_retry_sleep), each reconnect pause froze the
        # hub: /livez went unanswered in 3-5 of 13-19 samples, gaps up to 5 s
        # (xfail here until 2026-12-03); after it, 0 of 40.
        assert not silent, f"/livez unanswered within 1.5 s in {len(silent)} samples: {figures}"
    finally:
        print("figures", json.dumps(figures))
        sampler.close()
        processes.stop_pid(pid)
        print(log.read_text(errors="replace")[-3000:])


def test_prefork_outage_queue_delete_and_wedge(bed: FaultBed, tmp_path: Path) -> None:
    queue = "health-q"
    pid, log, sampler, up = start(bed, tmp_path, queue, "prefork")
    figures: dict[str, object] = {"pool": "prefork", "consuming_after_start_s": round(up, 1)}
    try:
        time.sleep(2)
        # -- 1. broker outage: ready fails, live stays 200, consuming comes back
        silent = outage(bed, sampler, pid, figures)
        assert not silent, f"prefork /livez did not answer: {silent[:2]}"

        # -- 2. the broker cancels the consumer (queue deleted while consumed):
        # Celery 5.7 takes py-amqp's ConsumerCancelled as a connection error,
        # reconnects and declares the queue again, so this is *not* a wedge:
        # liveness must stay 200 and consuming come back.
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
        assert all(r["/livez"] == 200 for r in rows), [r for r in rows if r["/livez"] != 200][:3]

        # -- 3. the event loop wedged for good (broker reachable): live must fail
        time.sleep(1)
        wedged = time.monotonic()
        os.kill(pid, signal.SIGUSR2)
        not_ready = sampler.wait_for(lambda r: r["/readyz"] != 200, 3 * STALL + 5, wedged)
        not_live = sampler.wait_for(lambda r: r["/livez"] != 200, RECOVER + 4 * STALL + 10, wedged)
        rows = sampler.rows(wedged)
        print("wedge samples", json.dumps(rows[:: max(1, len(rows) // 12)], default=str)[:4000])
        figures["wedge_not_ready_s"] = None if not_ready is None else round(not_ready, 1)
        figures["wedge_not_live_s"] = None if not_live is None else round(not_live, 1)
        assert not_ready is not None, figures
        assert not_live is not None, f"liveness never failed with a wedged loop: {figures}"
        # Not before the worker had recover_timeout to come back on its own.
        assert not_live >= RECOVER, figures
        late = [r for r in rows if r["t"] >= wedged + not_ready + 1.0]
        assert not [r for r in late if r["/consumingz"] == 200], figures
        last = sampler.rows(wedged)[-1]
        assert last["/livez"] != 200 and last["/healthz"] != 0, last  # it answers, with 503
    finally:
        print("figures", json.dumps(figures))
        sampler.close()
        processes.stop_pid(pid)
        print(log.read_text(errors="replace")[-4000:])
        if os.environ.get("HANGPROOF_HEALTH_KEEP"):
            print(sampler.out.read_text()[-8000:])
