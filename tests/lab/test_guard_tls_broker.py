"""The guard over TLS against a real RabbitMQ TLS listener (RabbitNode(tls=True), loopback).

Part of every run (CI's TLS subset):

- a user's own Celery project (its own module, ``harden(app)``, an
  ``amqps://`` URL and ``broker_use_ssl``) runs a real worker; every task is
  executed, and the broker reports each of the project's connections as TLS;
- a TLS port that accepts TCP and never sends ServerHello (the real broker,
  SIGSTOPped: the kernel still accepts): every guarded attempt ends within
  ``handshake_deadline``, a hardened worker started against it comes up once
  the broker does, and stock py-amqp with ``connect_timeout=None`` (Celery
  under gevent) is still in the TLS handshake long after;
- a wrong CA and a wrong hostname: one clear line per attempt, attempts paced
  by Celery's retry (no storm), the worker stays up and not ready.

Workers are started by pid and stopped by pid in finalizers; the broker is
SIGCONTed in a finalizer.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import amqp
import pytest
from guard_workers import health, start_worker

from connect_timing import time_connect
from hangproof.failure import Policy
from hangproof.guard.transport import (
    GuardConnection,
    HandshakeDeadlineExceeded,
    TLSVerificationFailed,
)
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.components.tls import make_tls_files
from hangproof.lab.engine import processes

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

STALL = 3.0
DEADLINE = float(Policy(stall_timeout=STALL).handshake_deadline or 0)
SLACK = 1.5  # scheduling slack on a loaded 2-core box

USER_PROJECT = '''
"""A user's Celery project, as its author writes it (not hangproof's sample app)."""
import os
import ssl

from celery import Celery

from hangproof.celery import harden

app = Celery("shop", broker=os.environ["SHOP_BROKER_URL"])  # amqps://...
app.conf.broker_use_ssl = {
    "ca_certs": os.environ["SHOP_CA"],
    "cert_reqs": ssl.CERT_REQUIRED,
}
app.conf.task_ignore_result = True
harden(app, liveness_port=int(os.environ.get("SHOP_LIVENESS_PORT", "0")) or None)


@app.task(name="shop.charge")
def charge(order: str) -> None:
    with open(os.environ["SHOP_DONE"], "a") as done:
        done.write(order + "\\n")
'''


def tls_connections(node: RabbitNode) -> list[tuple[int, str]]:
    """(server port, ssl flag) of every client connection, from the broker itself."""
    rows = []
    for line in node.ctl("list_connections", "port", "ssl", timeout=30).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            rows.append((int(parts[0]), parts[1]))
    return rows


def wait_for(predicate, limit: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {limit} s")


def test_users_celery_project_runs_tasks_over_amqps(rabbit: RabbitNode, tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(USER_PROJECT)
    done = tmp_path / "done.txt"
    env = {
        "SHOP_BROKER_URL": rabbit.tls_url,
        "SHOP_CA": str(rabbit.tls_files.ca_certs),
        "SHOP_DONE": str(done),
        "PYTHONPATH": str(tmp_path),
    }
    log = tmp_path / "worker.log"
    argv = [sys.executable, "-m", "celery", "-A", "shop", "worker", "-P", "prefork", "-c", "2"]
    argv += ["-n", "shop@%h", "--loglevel=INFO", "--without-mingle", "--without-gossip"]
    worker = processes.spawn(argv, env=env, log=log, cwd=tmp_path)
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.path.insert(0, str(tmp_path))
    try:
        wait_for(lambda: " ready." in log.read_text(), 60, "worker ready")
        import shop  # the user's module, hardened at import like in their web app

        orders = [f"order-{i}" for i in range(20)]
        started = time.monotonic()
        for order in orders:
            shop.charge.delay(order)
        ran = wait_for(
            lambda: done.exists() and len(done.read_text().split()) >= len(orders), 60, "tasks"
        )
        assert sorted(done.read_text().split()) == sorted(orders)  # each exactly once
        connections = tls_connections(rabbit)
        print(f"20 tasks over amqps executed in {ran:.1f} s (sent in "
              f"{time.monotonic() - started - ran:.2f} s); broker connections: {connections}")  # fmt: skip
        assert connections, "the broker lists no client connection"
        # Every connection of the project (worker and producer) is on the TLS
        # listener and is TLS: nothing spoke plain AMQP.
        assert all(port == rabbit.tls_port and flag == "true" for port, flag in connections)
        assert processes.pid_alive(worker.pid)
    finally:
        processes.stop_pid(worker.pid)
        sys.path.remove(str(tmp_path))
        sys.modules.pop("shop", None)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        print(log.read_text()[-2000:] if log.exists() else "")


@contextlib.contextmanager
def frozen(node: RabbitNode) -> Iterator[None]:
    """SIGSTOP the broker's VM: its TLS port accepts TCP (kernel) and never answers."""
    beam = node.beam_pid()
    assert beam is not None
    os.kill(beam, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(beam, signal.SIGCONT)


def test_silent_tls_port_fails_within_handshake_deadline(
    rabbit: RabbitNode, tmp_path: Path
) -> None:
    host = f"{rabbit.host}:{rabbit.tls_port}"
    options = rabbit.tls_files.client_options()
    report: dict[str, str] = {}
    pid = None
    with frozen(rabbit):
        # -- the guard transport: every attempt ends at the deadline ----------
        for connect_timeout in (None, 30.0):
            conn = GuardConnection(
                host=host, ssl=options, connect_timeout=connect_timeout,
                handshake_deadline=DEADLINE,
            )  # fmt: skip
            elapsed, error = time_connect(conn, DEADLINE + 10)
            report[f"guard, connect_timeout={connect_timeout}"] = f"{error!r} after {elapsed:.2f} s"
            assert isinstance(error, HandshakeDeadlineExceeded), error
            assert elapsed <= DEADLINE + SLACK, elapsed
        # -- stock py-amqp, connect_timeout=None (Celery's under gevent) -------
        limit = 3 * DEADLINE
        stock = amqp.Connection(host=host, ssl=options, connect_timeout=None)
        elapsed, error = time_connect(stock, limit)
        report["stock py-amqp, connect_timeout=None"] = (
            f"still in the TLS handshake after {elapsed:.1f} s" if error is None else repr(error)
        )
        assert error is None and elapsed >= limit, report
        # -- stock py-amqp, connect_timeout=4 (Celery's default) ---------------
        stock4 = amqp.Connection(host=host, ssl=options, connect_timeout=4)
        elapsed, error = time_connect(stock4, 30)
        report["stock py-amqp, connect_timeout=4"] = f"{error!r} after {elapsed:.2f} s"
        # -- a hardened worker started against the silent port ------------------
        pid, port, ledger, log = start_worker(rabbit, tmp_path, "silent", stall=STALL, tls=True)
        time.sleep(3 * DEADLINE)
        assert processes.pid_alive(pid), "the worker exited"
        text = log.read_text()
        attempts = len(re.findall(r"handshake-deadline", text))
        report["hardened worker while silent"] = f"{attempts} attempts ended by the deadline"
        assert attempts >= 1, text[-3000:]
    try:
        thawed = time.monotonic()
        wait_for(lambda: health(port, "/readyz")[0] == 200, 60, "worker ready after thaw")
        report["hardened worker ready after thaw"] = f"{time.monotonic() - thawed:.1f} s"
        from celery import Celery

        app = Celery("silent-producer", broker=rabbit.tls_url, set_as_current=False)
        app.conf.broker_use_ssl = options
        app.send_task("hangproof.record", args=("after-thaw",), queue="silent")
        wait_for(lambda: ledger.has_run("after-thaw"), 30, "task ran")
    finally:
        print(report)
        if pid is not None:
            processes.stop_pid(pid)


def test_wrong_ca_one_clear_line_per_paced_attempt(rabbit: RabbitNode, tmp_path: Path) -> None:
    other = make_tls_files(tmp_path / "other-ca", ca_name="not the broker's CA")
    wrong = {"ca_certs": str(other.ca_certs), "cert_reqs": ssl.CERT_REQUIRED}
    pid, port, _, log = start_worker(
        rabbit, tmp_path, "wrongca", stall=STALL, tls=True, broker_use_ssl=wrong
    )
    watch = 14.0
    try:
        time.sleep(watch)
        assert processes.pid_alive(pid), "the worker exited on a refused certificate"
        text = log.read_text()
        lines = [line for line in text.splitlines() if "TLS: the broker's certificate" in line]
        expected = f"not trusted by the CA in broker_use_ssl['ca_certs'] ({other.ca_certs})"
        assert lines and all(expected in line for line in lines), text[-3000:]
        # Paced by the policy's linear backoff (harden: 0, +0.5 s a step, at most
        # 5 s): no two attempts closer than the first step, and the steps grow.
        stamps = [
            datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp() for line in lines
        ]
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(stamps)]
        assert len(lines) >= 3 and min(gaps) >= 0.4, gaps
        assert gaps[-1] >= 2.0 and len(lines) <= 10, gaps
        assert "Traceback" not in text
        assert health(port, "/readyz")[0] != 200
        print(f"wrong CA: {len(lines)} attempts in {watch:.0f} s, gaps {gaps}: {lines[0]}")
    finally:
        processes.stop_pid(pid)


def test_wrong_hostname_one_clear_line(rabbit: RabbitNode) -> None:
    options = {**rabbit.tls_files.client_options(), "server_hostname": "mq.example.com"}
    conn = GuardConnection(
        host=f"{rabbit.host}:{rabbit.tls_port}", ssl=options, handshake_deadline=DEADLINE
    )
    started = time.monotonic()
    with pytest.raises(TLSVerificationFailed) as raised:
        conn.connect()
    message = str(raised.value)
    assert "does not name broker_use_ssl['server_hostname'] 'mq.example.com'" in message, message
    assert "\n" not in message and time.monotonic() - started < DEADLINE
    # The control: a name the certificate has (SNI + hostname check), with a
    # client certificate (mutual TLS), connects.
    good = {
        **rabbit.tls_files.client_options(with_client_cert=True),
        "server_hostname": "localhost",
    }
    conn = GuardConnection(
        host=f"{rabbit.host}:{rabbit.tls_port}", ssl=good, handshake_deadline=DEADLINE
    )
    conn.connect()
    try:
        assert conn.connected and conn.transport.sock.server_hostname == "localhost"
        assert conn.transport.sock.getpeercert()["subjectAltName"]
    finally:
        conn.close()
