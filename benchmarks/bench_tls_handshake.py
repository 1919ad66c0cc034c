"""Connect time over TLS, guarded vs stock, and how long a silent TLS port holds each.

    sudo labrun .venv/bin/python benchmarks/bench_tls_handshake.py --connects 40 --json

Starts one RabbitNode on loopback with a TLS listener (lab CA made at run
time). Measures, interleaved round by round so drift lands on all profiles:

- full connect (TCP [+ TLS] + AMQP Start..Open-Ok) then close, for stock
  py-amqp and the guard's ``GuardConnection``, over plain TCP, TLS, and TLS
  with a client certificate: p50 and p99 milliseconds, guard/stock ratios;
- a silent TLS port (the same broker, SIGSTOPped: the kernel accepts TCP, no
  ServerHello ever comes): time until the guard gives up vs its
  ``handshake_deadline``, and stock py-amqp with ``connect_timeout=None``
  (Celery under gevent; observed for ``--silent-watch`` seconds) and with
  ``connect_timeout=4`` (Celery's default ``broker_connection_timeout``).

Prints a table, or JSON (``--json``) with the versions and commit. Bounded:
every wait has a limit; the broker is SIGCONTed and stopped by pid in
``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import amqp

from hangproof.guard.transport import GuardConnection
from hangproof.lab.components.rabbitmq import RabbitNode

DEADLINE = 2.0  # the guard's handshake_deadline for the silent-port rows


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _connect_ms(make: Any) -> float:
    conn = make()
    started = time.perf_counter()
    conn.connect()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    return elapsed


def _timed_attempt(conn: amqp.Connection, limit: float) -> tuple[float, str]:
    result: list[str] = []

    def run() -> None:
        try:
            conn.connect()
            result.append("connected")
        except BaseException as exc:  # measured: what ended the attempt
            result.append(f"{type(exc).__name__}: {exc}"[:160])

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        with contextlib.suppress(Exception):
            fd = os.dup(conn._transport.sock.fileno())
            socket.socket(fileno=fd).shutdown(socket.SHUT_RDWR)
        thread.join(5)
        return elapsed, f"still waiting after {elapsed:.1f} s"
    return elapsed, result[0]


def run(connects: int, silent_watch: float) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="hp-bench-tls-"))
    node = RabbitNode("benchtls", state, tls=True)
    try:
        node.start(timeout=120)
        plain = f"{node.host}:{node.amqp_port}"
        tls = f"{node.host}:{node.tls_port}"
        verified = node.tls_files.client_options()
        with_cert = node.tls_files.client_options(with_client_cert=True)
        profiles: dict[str, Any] = {
            "stock tcp": lambda: amqp.Connection(host=plain, connect_timeout=5),
            "guard tcp": lambda: GuardConnection(host=plain, handshake_deadline=5),
            "stock tls": lambda: amqp.Connection(host=tls, ssl=verified, connect_timeout=5),
            "guard tls": lambda: GuardConnection(host=tls, ssl=verified, handshake_deadline=5),
            "stock tls+client cert": lambda: amqp.Connection(
                host=tls, ssl=with_cert, connect_timeout=5
            ),
            "guard tls+client cert": lambda: GuardConnection(
                host=tls, ssl=with_cert, handshake_deadline=5
            ),
        }
        for make in profiles.values():  # warm-up, discarded
            _connect_ms(make)
        samples: dict[str, list[float]] = {name: [] for name in profiles}
        for i in range(connects):
            names = list(profiles) if i % 2 == 0 else list(reversed(profiles))
            for name in names:
                samples[name].append(_connect_ms(profiles[name]))
        connect = {
            name: {
                "p50_ms": round(statistics.median(values), 2),
                "p99_ms": round(_percentile(values, 0.99), 2),
                "n": len(values),
            }
            for name, values in samples.items()
        }
        ratios = {
            kind: {
                "p50": round(connect[f"guard {kind}"]["p50_ms"] / connect[f"stock {kind}"]["p50_ms"], 2),
                "p99": round(connect[f"guard {kind}"]["p99_ms"] / connect[f"stock {kind}"]["p99_ms"], 2),
            }
            for kind in ("tcp", "tls", "tls+client cert")
        }  # fmt: skip

        beam = node.beam_pid()
        assert beam is not None
        silent: dict[str, Any] = {"handshake_deadline_s": DEADLINE}
        os.kill(beam, signal.SIGSTOP)
        try:
            for label, conn, limit in (
                ("guard, connect_timeout=None",
                 GuardConnection(host=tls, ssl=verified, connect_timeout=None,
                                 handshake_deadline=DEADLINE), DEADLINE + 10),
                ("stock py-amqp, connect_timeout=None",
                 amqp.Connection(host=tls, ssl=verified, connect_timeout=None), silent_watch),
                ("stock py-amqp, connect_timeout=4",
                 amqp.Connection(host=tls, ssl=verified, connect_timeout=4), 30.0),
            ):  # fmt: skip
                elapsed, outcome = _timed_attempt(conn, limit)
                silent[label] = {"seconds": round(elapsed, 2), "outcome": outcome}
        finally:
            os.kill(beam, signal.SIGCONT)
        return {
            "benchmark": "tls-handshake",
            "connects_per_profile": connects,
            "connect": connect,
            "guard_over_stock": ratios,
            "silent_tls_port": silent,
            "versions": {p: version(p) for p in ("celery", "kombu", "amqp")}
            | {"python": platform.python_version(), "rabbitmq": _rabbit_version(node)},
            "commit": _commit(),
            "load": os.getloadavg(),
        }
    finally:
        with contextlib.suppress(Exception):
            beam = node.beam_pid()
            if beam:
                os.kill(beam, signal.SIGCONT)
        node.stop()
        shutil.rmtree(state, ignore_errors=True)  # the broker's data and the lab CA's keys


def _rabbit_version(node: RabbitNode) -> str:
    with contextlib.suppress(Exception):
        return node.ctl("version", timeout=30).strip()
    return "?"


def _commit() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent, check=False,
        ).stdout.strip()  # fmt: skip
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=40, help="connects per profile")
    parser.add_argument("--silent-watch", type=float, default=20.0,
                        help="seconds to watch stock py-amqp on the silent port")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.connects, args.silent_watch)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'profile':<24}{'p50 ms':>10}{'p99 ms':>10}")
    for name, row in result["connect"].items():
        print(f"{name:<24}{row['p50_ms']:>10}{row['p99_ms']:>10}")
    print("guard/stock:", result["guard_over_stock"])
    print("silent TLS port:", json.dumps(result["silent_tls_port"], indent=1))
    print("versions:", result["versions"], "commit", result["commit"], "load", result["load"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
