"""Helpers shared by the guard's lab tests: a guarded sample worker, by pid, and its liveness.

Over TLS: ``HANGPROOF_LAB_TLS=1`` makes every guard lab test dial the loopback
broker's TLS listener (``amqps://``, verified against the lab CA); a test can
also ask for TLS itself (``tls=True``), which is how CI's TLS subset runs.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from hangproof.lab.clients.accounting import Ledger
from hangproof.lab.components.rabbitmq import RabbitNode, free_port
from hangproof.lab.engine import processes

#: Run the guard lab tests over TLS (the broker's amqps:// listener).
LAB_TLS = os.environ.get("HANGPROOF_LAB_TLS") == "1"
#: Parametrisation for a test that runs over plain TCP, TLS, or both.
TRANSPORTS = ["tls"] if LAB_TLS else ["tcp"]

#: Workers :func:`start_worker` started, with their identity (pid, start
#: time, boot id, spawn token). tests/lab/conftest.py stops those still
#: running after every test, so a failed assertion cannot leak a worker.
STARTED: list[tuple[int, int | None, str, str | None]] = []


def broker(rabbit: RabbitNode, tls: bool | None = None) -> tuple[str, dict | None]:
    """(URL, broker_use_ssl) a client of ``rabbit`` uses: TLS if asked or ``HANGPROOF_LAB_TLS``."""
    if LAB_TLS if tls is None else tls:
        return rabbit.tls_url, rabbit.tls_files.client_options()
    return rabbit.url, None


def kombu_connection(rabbit: RabbitNode, tls: bool | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    """A kombu Connection to ``rabbit`` (TLS like :func:`broker`); kwargs as kombu's."""
    from kombu import Connection

    url, ssl_options = broker(rabbit, tls)
    return Connection(url, ssl=ssl_options or False, **kwargs)


def aio_url(rabbit: RabbitNode, tls: bool | None = None) -> str:
    """The aio-pika URL of ``rabbit`` (aiormq takes the CA as a ``cafile`` query)."""
    url, ssl_options = broker(rabbit, tls)
    return f"{url}?cafile={ssl_options['ca_certs']}" if ssl_options else url


def start_worker(
    rabbit: RabbitNode,
    tmp: Path,
    queue: str,
    *,
    stall: float,
    pool: str = "prefork",
    concurrency: int = 4,
    guard: bool = True,
    tls: bool | None = None,
    broker_use_ssl: dict | None = None,
) -> tuple[int, int, Ledger, Path]:
    """Start ``hangproof.lab.clients.celery_app`` consuming ``queue``; (pid, liveness port, ledger, log).

    ``broker_use_ssl`` replaces the TLS options (e.g. a wrong CA).
    """
    port = free_port()
    ledger, log = Ledger(tmp / f"{queue}.ledger"), tmp / f"{queue}.log"
    ledger.reset()
    url, ssl_options = broker(rabbit, tls)
    ssl_options = broker_use_ssl or ssl_options
    env = {
        "HANGPROOF_BROKER_URL": url,
        "HANGPROOF_BROKER_USE_SSL": json.dumps(ssl_options) if ssl_options else "",
        "HANGPROOF_GUARD": "1" if guard else "0",
        "HANGPROOF_STALL_TIMEOUT": str(stall),
        "HANGPROOF_LIVENESS_PORT": str(port),
        "HANGPROOF_LEDGER": str(ledger.directory),
        "HANGPROOF_PREFETCH": "1",
    }
    argv = [sys.executable, "-m", "celery", "-A", "hangproof.lab.clients.celery_app", "worker"]
    argv += ["-P", pool, "-c", str(concurrency), "-n", f"{queue}@%h", "-Q", queue]
    argv += ["--loglevel=INFO"]
    proc = processes.spawn(argv, env=env, log=log)
    track(proc.pid)
    return proc.pid, port, ledger, log


def track(pid: int) -> None:
    """Record ``pid`` with its identity, so :func:`stop_started` signals only that process."""
    STARTED.append(
        (pid, processes.start_time(pid), processes.boot_id(), processes.spawn_token(pid))
    )


def stop_started() -> None:
    """Stop every worker :func:`start_worker` started that is still that process."""
    while STARTED:
        pid, started_at, boot, token = STARTED.pop()
        processes.stop_if_ours(pid, start_time=started_at, boot_id=boot, token=token)


def health(port: int, path: str = "/healthz") -> tuple[int, dict]:
    """(HTTP status, JSON body) of the worker's liveness endpoint; (0, {}) if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}
