"""The lab's small Celery app: one task that records its execution in a Ledger.

Workers run it with ``celery -A hangproof.lab.clients.celery_app worker``; the broker
and client profile come from the environment, so the same module serves every
profile:

- ``HP_BROKER_URL``: e.g. ``amqp://guest:guest@198.18.0.100:32672//``;
- ``HP_PROFILE``: ``seed`` | ``stock`` | ``gevent`` | ``harden`` (see :data:`PROFILES`);
- ``HP_CELERY_CONFIG``: optional ``module:object`` applied on top (a user's settings);
- ``HP_LEDGER``: the :class:`~hangproof.lab.clients.accounting.Ledger` directory.

It also has two small commands the scenarios run inside lab namespaces::

    python -m hangproof.lab.clients.celery_app ping TIMEOUT          # JSON list of hostnames
    python -m hangproof.lab.clients.celery_app produce RATE SECONDS  # publish at RATE/s
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

from celery import Celery

from hangproof.lab.clients.accounting import Ledger

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
    # the guard on the report's app. Stall timeout from HP_STALL_TIMEOUT (15 s).
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
TASK_NAME = "hangproof.lab.record"


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


def make_app(broker_url: str, profile: str = "stock", celery_config: str | None = None) -> Celery:
    """The lab app for one profile.

    >>> make_app("amqp://guest:guest@198.18.0.100:32672//", "seed").conf.broker_connection_timeout
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    app = Celery("hplab", broker=broker_url, set_as_current=True)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        # The accounting wants redelivery to be visible: acknowledge after the
        # task ran, so a connection lost mid-task shows up as a duplicate.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    app.conf.update(PROFILES[profile])
    if celery_config:
        app.conf.update(settings_of(load_object(celery_config)))
    if profile == "harden":
        from hangproof.celery import harden
        from hangproof.failure import Policy

        harden(app, Policy(stall_timeout=float(os.environ.get("HP_STALL_TIMEOUT", "15"))))

    @app.task(name=TASK_NAME)
    def record(task_id: str) -> None:
        ledger_dir = os.environ.get("HP_LEDGER")
        if ledger_dir:
            Ledger(Path(ledger_dir)).record_executed(task_id)
        time.sleep(0.02)

    return app


app = make_app(
    os.environ.get("HP_BROKER_URL", "amqp://guest:guest@198.18.0.100:32672//"),
    os.environ.get("HP_PROFILE", "stock"),
    os.environ.get("HP_CELERY_CONFIG") or None,
)


def ping(timeout: float) -> list[str]:
    """Hostnames of the workers that answered ``inspect ping`` within ``timeout``."""
    replies = app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def produce(rate: float, seconds: float) -> int:
    """Publish one task every 1/rate s for at most ``seconds``; log confirmed ones."""
    ledger = Ledger(Path(os.environ["HP_LEDGER"]))
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
