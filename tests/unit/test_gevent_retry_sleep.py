"""Under ``celery worker -P gevent``, kombu's reconnect pauses must not freeze the hub.

Measured (tests/lab/test_guard_health.py::test_gevent_outage, py-spy dumps of
the worker): while the broker was blackholed, the main thread sat in
``kombu.utils.functional.retry_over_time`` -> ``sleep`` for whole retry
intervals. Celery's ``maybe_patch_concurrency`` imports the pool (and with it
kombu.utils.functional, ``from time import sleep``) *before* gevent patches
``time``, so that ``sleep`` is the blocking one: every greenlet (the liveness
endpoint, heartbeats, tasks) stopped during each pause, and /livez went
unanswered for up to 5 s. Each case runs in a fresh interpreter, patched the
way the worker is.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("gevent")

PROBE = r"""
import json, sys
mode = sys.argv[-1]
sys.argv = ["celery", "-A", "x", "worker", "-P", "gevent"]
from celery import maybe_patch_concurrency
maybe_patch_concurrency()          # what `celery worker -P gevent` does first
import time
import gevent
import kombu.utils.functional as functional
from hangproof.guard import upstream

rebound = upstream.cooperative_retry_sleep() if mode == "guard" else None
ticks = []
def ticker():
    for _ in range(200):
        ticks.append(time.monotonic())
        gevent.sleep(0.05)
gevent.spawn(ticker)
gevent.sleep(0)
calls = []
def connect():
    calls.append(1)
    if len(calls) == 1:
        raise OSError("refused")
    return "ok"
start = time.monotonic()
functional.retry_over_time(connect, (OSError,), interval_start=1.0, interval_step=0, interval_max=1.0)
took = time.monotonic() - start
during = [t for t in ticks if start < t < start + took]
print(json.dumps({"rebound": rebound, "took": took, "ticks_during": len(during)}))
"""


def run(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_stock_kombu_retry_pause_freezes_every_greenlet_under_gevent() -> None:
    r = run("stock")
    assert r["took"] >= 0.9  # it paused about interval_start
    assert r["ticks_during"] <= 1, r  # and nothing else ran meanwhile


def test_with_the_guard_the_retry_pause_yields_to_other_greenlets() -> None:
    r = run("guard")
    assert r["rebound"] is True
    assert r["took"] >= 0.9
    assert r["ticks_during"] >= 10, r  # the 0.05 s ticker kept running
