"""The lab's one Celery app: every lab Celery worker, producer and waiter runs this module.

Configured by environment, so the same module serves the seed loop's fleet, the
fault matrix, the guard's lab tests, the benchmark and the alerts scenario::

    HANGPROOF_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// HANGPROOF_GUARD=1 \\
        celery -A hangproof.lab.clients.celery_app worker -P prefork -c 2

- ``HANGPROOF_BROKER_URL`` (``amqps://`` for TLS; default the seed lab's VIP);
- ``HANGPROOF_PROFILE``: ``seed`` | ``stock`` | ``gevent`` | ``harden``, the seed
  loop's client profiles (see :data:`PROFILES`, :data:`POOLS`). A profile is
  the whole configuration: late acks, prefetch 1, and ``harden`` the only
  guarded one; of the settings below it reads only ``HANGPROOF_STALL_TIMEOUT``
  (:data:`PROFILE_KNOBS`). Unset: the settings below decide;
- ``HANGPROOF_CELERY_CONFIG``: optional ``module:object`` applied on top (a user's settings);
- ``HANGPROOF_BROKER_USE_SSL``: ``broker_use_ssl`` as JSON, e.g.
  ``{"ca_certs": "/path/ca.pem", "cert_reqs": 2}`` (2 is ``ssl.CERT_REQUIRED``);
- ``HANGPROOF_GUARD=1`` to call :func:`hangproof.celery.harden`;
- ``HANGPROOF_STALL_TIMEOUT`` (seconds, default 15);
- ``HANGPROOF_LIVENESS_PORT`` and ``HANGPROOF_HEARTBEAT_FILE`` (opt-in);
- ``HANGPROOF_LATE_ACKS=1`` for at-least-once delivery;
- ``HANGPROOF_CONSUMING_PROBE=0`` turns harden()'s consuming probe off;
- ``HANGPROOF_PREFETCH`` (default 4; 1 with a profile);
- ``HANGPROOF_CONNECTION_TIMEOUT=none``: ``broker_connection_timeout=None``, the
  seed's Celery 3.1 / py-amqp 1.4 (no deadline on the handshake; Celery 5
  forces the same under gevent and eventlet), even after ``harden()``;
- ``HANGPROOF_LEDGER``: a :class:`~hangproof.lab.clients.accounting.Ledger`
  directory: every executed task records itself there, so a scenario counts
  published, executed, lost and duplicated tasks without a result backend;
- ``HANGPROOF_WEDGE_ON_SIGUSR2=1``, ``HANGPROOF_RUN_INFO_ON_SIGUSR2=FILE``: lab-only
  signal handlers (below).

It also has two small commands the scenarios run inside lab namespaces::

    python -m hangproof.lab.clients.celery_app ping TIMEOUT          # JSON list of hostnames
    python -m hangproof.lab.clients.celery_app produce RATE SECONDS  # publish at RATE/s
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery

from hangproof.lab.clients.accounting import Ledger

log = logging.getLogger("hangproof.lab.clients.celery_app")

#: Broker settings per client profile. Only what differs from Celery 5 defaults.
PROFILES: dict[str, dict[str, Any]] = {
    # Celery 3.1.19 on py-amqp 1.4 had no deadline on the AMQP handshake: the
    # socket had no timeout once connected. Celery 5's equivalent is
    # broker_connection_timeout=None (what it forces under gevent/eventlet).
    # Its pidbox (remote control) and event queues were auto-delete but not
    # exclusive, so a worker reconnecting while the broker still held its dead
    # connection carried on; Celery 5 declares them exclusive and dies with
    # RESOURCE_LOCKED instead (INCIDENT.md, "Stock Celery 5.7 on other faults").
    "seed": {
        "broker_connection_timeout": None,
        "control_queue_exclusive": False,
        "event_queue_exclusive": False,
    },
    "stock": {},
    # Stock settings; the gevent pool itself makes Celery drop the timeout.
    "gevent": {},
    # The seed's settings, then hangproof.celery.harden(app) (see make_app):
    # the guard on the report's app. Stall timeout from HANGPROOF_STALL_TIMEOUT (15 s).
    "harden": {
        "broker_connection_timeout": None,
        "control_queue_exclusive": False,
        "event_queue_exclusive": False,
    },
}
#: Pool and concurrency per profile (2 cores, 4 workers: keep them small).
POOLS: dict[str, tuple[str, int]] = {
    "seed": ("prefork", 1),
    "stock": ("prefork", 1),
    "gevent": ("gevent", 4),
    "harden": ("prefork", 1),
}
#: The only ``HANGPROOF_*`` settings a profile reads (the harden workers' stall timeout).
PROFILE_KNOBS = ("HANGPROOF_STALL_TIMEOUT",)
#: The seed loop's task: records, then 20 ms of work (see :func:`seed_record`).
TASK_NAME = "hangproof.lab.record"
DEFAULT_BROKER_URL = "amqp://guest:guest@198.18.0.100:32672//"


def load_object(spec: str) -> Any:
    """``"package.module:attr"`` -> the object (a user's Celery settings).

    >>> load_object("hangproof.lab.clients.celery_app:PROFILES")["stock"]
    {}
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--celery-config {spec!r}: expected module:object")
    return getattr(importlib.import_module(module_name), attr)


def settings_of(obj: Any) -> dict[str, Any]:
    """Celery settings from a dict, or from an object's/module's lowercase attributes.

    >>> settings_of({"broker_heartbeat": 10})
    {'broker_heartbeat': 10}
    """
    if isinstance(obj, dict):
        return dict(obj)
    names = [k for k in dir(obj) if k.islower() and not k.startswith("_")]
    # Skip what a settings module imports (modules, functions): not settings.
    return {
        k: getattr(obj, k)
        for k in names
        if not isinstance(getattr(obj, k), types.ModuleType) and not callable(getattr(obj, k))
    }


def make_app(
    broker_url: str,
    profile: str | None = None,
    celery_config: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Celery:
    """The lab app, configured for one profile (None: the ``HANGPROOF_*`` settings of ``env``).

    The tasks are this module's, registered on the module's :data:`app`.

    >>> make_app("amqp://guest:guest@198.18.0.100:32672//", "seed").conf.broker_connection_timeout
    >>> make_app("amqp://x//", env={"HANGPROOF_PREFETCH": "2"}).conf.worker_prefetch_multiplier
    2
    """
    env = os.environ if env is None else env
    if profile is not None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        env = {k: env[k] for k in PROFILE_KNOBS if k in env}
    app = Celery("hangproof_lab", broker=broker_url, set_as_current=True)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=int(env.get("HANGPROOF_PREFETCH") or (1 if profile else 4)),
    )
    if profile is not None:
        # The seed loop's accounting wants redelivery to be visible: acknowledge
        # after the task ran, so a connection lost mid-task shows up as a duplicate.
        app.conf.task_acks_late = True
        app.conf.update(PROFILES[profile])
    if env.get("HANGPROOF_BROKER_USE_SSL"):
        app.conf.broker_use_ssl = json.loads(env["HANGPROOF_BROKER_USE_SSL"])
    if celery_config:
        app.conf.update(settings_of(load_object(celery_config)))
    guard = profile == "harden" if profile is not None else env.get("HANGPROOF_GUARD") == "1"
    late_acks = env.get("HANGPROOF_LATE_ACKS") == "1"
    if guard:
        from hangproof.celery import harden
        from hangproof.failure import Policy

        port = env.get("HANGPROOF_LIVENESS_PORT")
        harden(
            app,
            Policy(stall_timeout=float(env.get("HANGPROOF_STALL_TIMEOUT") or "15")),
            late_acks=late_acks,
            liveness_port=int(port) if port else None,
            heartbeat_file=env.get("HANGPROOF_HEARTBEAT_FILE") or None,
            consuming_probe=env.get("HANGPROOF_CONSUMING_PROBE", "1") == "1",
        )
    elif late_acks:
        app.conf.task_acks_late = True
        app.conf.task_reject_on_worker_lost = True
    if env.get("HANGPROOF_CONNECTION_TIMEOUT") == "none":
        app.conf.broker_connection_timeout = None
    return app


app = make_app(
    os.environ.get("HANGPROOF_BROKER_URL") or DEFAULT_BROKER_URL,
    os.environ.get("HANGPROOF_PROFILE") or None,
    os.environ.get("HANGPROOF_CELERY_CONFIG") or None,
)


def record_execution(key: str) -> None:
    """The one recording path: one execution of ``key`` in ``$HANGPROOF_LEDGER`` (if set)."""
    ledger = os.environ.get("HANGPROOF_LEDGER")
    if ledger:
        Ledger(Path(ledger)).record_executed(key)


@app.task(name="hangproof.noop")
def noop() -> None:
    """Does nothing: the throughput benchmark's task."""


@app.task(name="hangproof.record")
def record(key: str) -> None:
    """Record ``key`` in the ledger (counts executed/lost/duplicated)."""
    record_execution(key)


@app.task(name="hangproof.sleep_then_record")
def sleep_then_record(key: str, seconds: float) -> None:
    """A long task: sleeps ``seconds`` (cooperatively under gevent), then records."""
    time.sleep(seconds)
    record_execution(key)


@app.task(name=TASK_NAME)
def seed_record(key: str) -> None:
    """The seed loop's task: records, then 20 ms of work."""
    record_execution(key)
    time.sleep(0.02)


@app.task(name="hangproof.publish_for")
def publish_for(routing_key: str, seconds: float) -> int:
    """Publish one small message a second for ``seconds`` on one connection; count the ok ones.

    The prometheus-alerts scenario's task: a worker whose tasks publish is what
    gets ``connection.blocked`` under a broker resource alarm, so its
    ``hangproof_broker_blocked`` is 1 for exactly as long as the broker blocks
    it. Run that worker with the threads pool: the guard's metrics live in the
    worker's main process, and a prefork child's connection is not seen there.
    """
    ok = 0
    deadline = time.monotonic() + seconds
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for n in range(int(seconds) + 2):
            if time.monotonic() > deadline:
                break
            try:
                producer.publish({"n": n}, routing_key=routing_key, retry=False)
                ok += 1
            except Exception as exc:  # BrokerBlocked / PublishTimeout while the alarm lasts
                log.warning("publish %d failed: %s", n, exc)
            time.sleep(1.0)
    return ok


def ping(timeout: float) -> list[str]:
    """Hostnames of the workers that answered ``inspect ping`` within ``timeout``."""
    replies = app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def produce(rate: float, seconds: float) -> int:
    """Publish one task every 1/rate s for at most ``seconds``; log confirmed ones."""
    ledger = Ledger(Path(os.environ["HANGPROOF_LEDGER"]))
    # Publisher confirms: a task counts as published only once the broker has it.
    app.conf.broker_transport_options = {"confirm_publish": True}
    app.conf.broker_connection_timeout = 4.0  # the producer is harness: it must not wedge
    start = time.monotonic()
    sent = 0
    for n in range(int(rate * seconds) + 1):
        if time.monotonic() - start > seconds:
            break
        task_id = f"t{os.getpid()}-{n:06d}"
        try:
            app.send_task(TASK_NAME, args=(task_id,), task_id=task_id, retry=True)
        except Exception as exc:  # the publish failed: not published
            print(f"publish {task_id} failed: {type(exc).__name__}: {exc}", flush=True)
        else:
            ledger.record_published(task_id)
            sent += 1
        # Steady rate: sleep to the next slot, not a fixed gap after a slow publish.
        time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
    return sent


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


def main(argv: list[str]) -> int:
    if argv[:1] == ["ping"]:
        print(json.dumps(ping(float(argv[1]))), flush=True)
        return 0
    if argv[:1] == ["produce"]:
        produce(float(argv[1]), float(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
