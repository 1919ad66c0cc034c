"""A small Celery app for measuring the guard: lab tests, the benchmark, the fault matrix.

Configured by environment, so the same module runs stock or guarded:

- ``HANGPROOF_BROKER_URL`` (required; ``amqps://`` for TLS);
- ``HANGPROOF_BROKER_USE_SSL``: ``broker_use_ssl`` as JSON, e.g.
  ``{"ca_certs": "/path/ca.pem", "cert_reqs": 2}`` (2 is ``ssl.CERT_REQUIRED``);
- ``HANGPROOF_GUARD=1`` to call :func:`hangproof.celery.harden`;
- ``HANGPROOF_STALL_TIMEOUT`` (seconds, default 15);
- ``HANGPROOF_LIVENESS_PORT`` and ``HANGPROOF_HEARTBEAT_FILE`` (opt-in);
- ``HANGPROOF_LATE_ACKS=1`` for at-least-once delivery;
- ``HANGPROOF_CONSUMING_PROBE=0`` turns harden()'s consuming probe off;
- ``HANGPROOF_LEDGER``: a :class:`~hangproof.lab.clients.accounting.Ledger`
  directory; every executed task records itself there, so a test counts
  executed, lost and duplicated tasks without a result backend.

Run a worker::

    HANGPROOF_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// HANGPROOF_GUARD=1 \\
        celery -A hangproof.guard.sample_app worker -P prefork -c 2
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import Celery

from hangproof.lab.clients.accounting import Ledger

app = Celery("hangproof_sample", broker=os.environ.get("HANGPROOF_BROKER_URL", "amqp://"))
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("HANGPROOF_PREFETCH", "4")),
)
if os.environ.get("HANGPROOF_BROKER_USE_SSL"):
    app.conf.broker_use_ssl = json.loads(os.environ["HANGPROOF_BROKER_USE_SSL"])

if os.environ.get("HANGPROOF_GUARD") == "1":
    from hangproof.celery import harden
    from hangproof.failure import Policy

    port = os.environ.get("HANGPROOF_LIVENESS_PORT")
    harden(
        app,
        Policy(stall_timeout=float(os.environ.get("HANGPROOF_STALL_TIMEOUT", "15"))),
        late_acks=os.environ.get("HANGPROOF_LATE_ACKS") == "1",
        liveness_port=int(port) if port else None,
        heartbeat_file=os.environ.get("HANGPROOF_HEARTBEAT_FILE") or None,
        consuming_probe=os.environ.get("HANGPROOF_CONSUMING_PROBE", "1") == "1",
    )
elif os.environ.get("HANGPROOF_LATE_ACKS") == "1":
    app.conf.task_acks_late = True
    app.conf.task_reject_on_worker_lost = True


def _ledger(task_id: str) -> None:
    ledger = os.environ.get("HANGPROOF_LEDGER")
    if ledger:
        Ledger(Path(ledger)).record_executed(task_id)  # the lab's one ledger format


@app.task(name="hangproof.noop")
def noop() -> None:
    """Does nothing: the throughput benchmark's task."""


@app.task(name="hangproof.record", bind=True)
def record(self: object, key: str) -> None:
    """Append ``key`` to the ledger (counts executed/lost/duplicated)."""
    _ledger(key)


@app.task(name="hangproof.sleep_then_record", bind=True)
def sleep_then_record(self: object, key: str, seconds: float) -> None:
    """A long task: sleeps ``seconds`` (cooperatively under gevent), then records."""
    time.sleep(seconds)
    _ledger(key)


if os.environ.get("HANGPROOF_WEDGE_ON_SIGUSR2") == "1":
    # Lab only (tests/lab/test_guard_health.py): SIGUSR2 wedges the worker's
    # event loop for good, the way a handler that blocks on a lock held by a
    # forked-away thread, or a call without a timeout, wedges it in the field.
    # Signal handlers run on the main thread, which under prefork *is* the
    # consumer's loop; the watchdog and the liveness server (threads) keep
    # running and must report the wedge. A socket shutdown cannot free it.
    import signal
    import threading

    _never = threading.Lock()
    _never.acquire()

    def _wedge(signum: int, frame: object) -> None:
        _never.acquire()

    signal.signal(signal.SIGUSR2, _wedge)


if os.environ.get("HANGPROOF_RUN_INFO_ON_SIGUSR2") and not os.environ.get(
    "HANGPROOF_WEDGE_ON_SIGUSR2"
):
    # Lab only (diagnosing a wedged gevent worker): SIGUSR2 appends the stack
    # of every greenlet and thread (gevent.util.print_run_info, or every
    # thread's stack without gevent) to the file the variable names. A
    # sampling profiler sees only the greenlet that runs; this sees them all.
    import signal
    import sys
    import traceback

    _run_info_path = os.environ["HANGPROOF_RUN_INFO_ON_SIGUSR2"]

    def _run_info(signum: int, frame: object) -> None:
        with open(_run_info_path, "a", encoding="utf-8") as out:
            out.write(f"=== {time.time():.3f} pid {os.getpid()}\n")
            try:
                from gevent import util

                util.print_run_info(file=out)
            except ImportError:
                for ident, stack in sys._current_frames().items():
                    out.write(f"--- thread {ident}\n")
                    traceback.print_stack(stack, file=out)

    signal.signal(signal.SIGUSR2, _run_info)
