"""Helpers shared by the guard's lab tests: a guarded sample worker, by pid, and its liveness."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from hangproof.lab import processes
from hangproof.lab.rabbitmq import RabbitNode, free_port


def start_worker(
    rabbit: RabbitNode,
    tmp: Path,
    queue: str,
    *,
    stall: float,
    pool: str = "prefork",
    concurrency: int = 4,
    guard: bool = True,
) -> tuple[int, int, Path, Path]:
    """Start ``hangproof.guard.sample_app`` consuming ``queue``; (pid, liveness port, ledger, log)."""
    port = free_port()
    ledger, log = tmp / f"{queue}.ledger", tmp / f"{queue}.log"
    env = {
        "HANGPROOF_BROKER_URL": rabbit.url,
        "HANGPROOF_GUARD": "1" if guard else "0",
        "HANGPROOF_STALL_TIMEOUT": str(stall),
        "HANGPROOF_LIVENESS_PORT": str(port),
        "HANGPROOF_LEDGER": str(ledger),
        "HANGPROOF_PREFETCH": "1",
    }
    argv = [sys.executable, "-m", "celery", "-A", "hangproof.guard.sample_app", "worker"]
    argv += ["-P", pool, "-c", str(concurrency), "-n", f"{queue}@%h", "-Q", queue]
    argv += ["--loglevel=INFO"]
    proc = processes.spawn(argv, env=env, log=log)
    return proc.pid, port, ledger, log


def health(port: int, path: str = "/healthz") -> tuple[int, dict]:
    """(HTTP status, JSON body) of the worker's liveness endpoint; (0, {}) if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}
