"""Guarded Celery workers against a real RabbitMQ on loopback (RabbitNode).

- No false stall: tasks lasting 3 x stall_timeout cause no forced reconnect
  and no failed liveness (prefork and gevent).
- Survives its own recovery: the broker still holds the exclusive pidbox
  queue (ResourceLocked 405) -> the guarded worker backs off and retries, and
  works once the queue is released; it does not exit.

Workers are started by pid and stopped by pid in finalizers. Over TLS with
``HANGPROOF_LAB_TLS=1`` (guard_workers); the ResourceLocked test also runs
over TLS in every run (CI's TLS subset).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from guard_workers import TRANSPORTS, broker, health, kombu_connection, start_worker

from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import processes

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

STALL = 3.0


def wait_ready(port: int, pid: int, limit: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        assert processes.pid_alive(pid), "worker exited"
        if health(port, "/readyz")[0] == 200:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"worker not ready within {limit} s")


def producer(rabbit: RabbitNode, tls: bool):  # type: ignore[no-untyped-def]
    url, ssl_options = broker(rabbit, tls)
    os.environ["HANGPROOF_BROKER_URL"] = url
    from hangproof.lab.clients.celery_app import app

    app.conf.broker_url = url
    app.conf.broker_use_ssl = ssl_options
    return app


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_long_tasks_are_not_a_stall(
    rabbit: RabbitNode, tmp_path: Path, pool: str, transport: str
) -> None:
    name = f"long-{pool}-{transport}"
    tls = transport == "tls"
    pid, port, ledger, log = start_worker(rabbit, tmp_path, name, stall=STALL, pool=pool, tls=tls)
    try:
        wait_ready(port, pid)
        app = producer(rabbit, tls)
        n = 4
        for i in range(n):
            app.send_task("hangproof.sleep_then_record", args=(f"t{i}", 3 * STALL), queue=name)
        failed_probes = 0
        started = time.monotonic()
        while time.monotonic() - started < 3 * STALL + 15:
            code, _ = health(port)
            failed_probes += code != 200
            if len(ledger.executions()) >= n:
                break
            time.sleep(0.5)
        keys = ledger.executions()
        assert sorted(keys) == [f"t{i}" for i in range(n)], keys  # executed once each
        assert failed_probes == 0
        assert metric(port, "hangproof_forced_reconnects_total") == 0
        assert metric(port, "hangproof_reconnects_total") == 0
        assert processes.pid_alive(pid)
    finally:
        processes.stop_pid(pid)
        print(log.read_text()[-3000:])


@pytest.mark.parametrize("transport", sorted({*TRANSPORTS, "tls"}))
def test_resource_locked_pidbox_is_survived(
    rabbit: RabbitNode, tmp_path: Path, transport: str
) -> None:
    """The broker still holds the worker's exclusive pidbox queue (INCIDENT.md, last table)."""
    from kombu import Queue

    tls = transport == "tls"
    queue = f"locked-{transport}"
    hostname = f"{queue}@{os.uname().nodename}"
    holder = kombu_connection(rabbit, tls)
    holder.connect()
    channel = holder.channel()
    # What the dead connection of the worker's previous life still holds.
    Queue(f"{hostname}.celery.pidbox", exclusive=True, channel=channel).declare()
    pid, port, ledger, log = start_worker(rabbit, tmp_path, queue, stall=STALL, tls=tls)
    try:
        time.sleep(8)  # several ResourceLocked rounds
        assert processes.pid_alive(pid), "the worker exited on ResourceLocked"
        assert "resource-locked" in log.read_text()
        released = time.monotonic()
        holder.release()  # the broker finally drops the old connection
        resumed = wait_ready(port, pid, limit=30)
        producer(rabbit, tls).send_task("hangproof.record", args=("after",), queue=queue)
        for _ in range(40):
            if ledger.has_run("after"):
                break
            time.sleep(0.25)
        assert ledger.has_run("after")
        assert metric(port, 'hangproof_stalls_detected_total{detection="resource-locked"') >= 1
        print(
            f"resumed {resumed:.1f} s after the lock was released ({time.monotonic() - released:.1f})"
        )
    finally:
        processes.stop_pid(pid)
        holder.release()
        print(log.read_text()[-3000:])
