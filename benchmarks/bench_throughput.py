"""No-op tasks per second through one real RabbitMQ: guarded vs stock Celery.

    sudo .venv/bin/python benchmarks/bench_throughput.py --tasks 5000

Starts one RabbitNode on loopback (private ports). For each profile, in
alternating rounds: fills a fresh queue with ``--tasks`` no-op tasks, starts a
prefork worker on it (by pid), and times the queue draining from the first
consumed message to empty (polled with a passive ``queue_declare``; a ledger
per task would cost more than the task). Prints both rates and the ratio.
Bounded: every wait has a limit; everything is stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from kombu import Connection

from hangproof.lab import processes
from hangproof.lab.rabbitmq import RabbitNode

ROUND_LIMIT = 300.0  # seconds per profile, whatever happens


def queue_depth(conn: Connection, queue: str) -> tuple[int, int]:
    channel = conn.default_channel
    ok = channel.queue_declare(queue=queue, passive=True)
    return ok.message_count, ok.consumer_count


def run_profile(node: RabbitNode, tmp: Path, guard: bool, tasks: int, concurrency: int) -> float:
    queue = f"bench-{'guard' if guard else 'stock'}-{int(time.time())}"
    env = {
        "HANGPROOF_BROKER_URL": node.url,
        "HANGPROOF_GUARD": "1" if guard else "0",
        "HANGPROOF_PREFETCH": "64",
    }
    os.environ.update(env)
    from hangproof.guard.sample_app import app

    app.conf.broker_url = node.url
    with Connection(node.url) as conn:
        # Fill the queue first, so the worker's rate is measured, not ours.
        producer = app.amqp.Producer(conn)
        conn.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        for _ in range(tasks):
            app.send_task("hangproof.noop", queue=queue, producer=producer)
        argv = [sys.executable, "-m", "celery", "-A", "hangproof.guard.sample_app", "worker"]
        argv += ["-P", "prefork", "-c", str(concurrency), "-Q", queue, "--loglevel=WARNING"]
        argv += ["--without-gossip", "--without-mingle", "-n", f"{queue}@%h"]
        worker = processes.spawn(argv, env=env, log=tmp / f"{queue}.log")
        try:
            started = None
            deadline = time.monotonic() + ROUND_LIMIT
            while time.monotonic() < deadline:
                depth, consumers = queue_depth(conn, queue)
                if consumers and started is None and depth < tasks:
                    started = time.monotonic()
                    first_depth = depth
                if started is not None and depth == 0:
                    return first_depth / (time.monotonic() - started)
                time.sleep(0.02)
            raise SystemExit(f"profile {'guard' if guard else 'stock'} did not finish in time")
        finally:
            processes.stop_pid(worker.pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per profile")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hp-bench-") as d:
        tmp = Path(d)
        node = RabbitNode("bench", tmp / "rabbit")
        try:
            node.start(timeout=90)
            rates: dict[str, list[float]] = {"stock": [], "guard": []}
            for _ in range(args.rounds):
                for guard in (False, True):
                    rate = run_profile(node, tmp, guard, args.tasks, args.concurrency)
                    rates["guard" if guard else "stock"].append(rate)
                    print(f"{'guard' if guard else 'stock'}: {rate:.0f} tasks/s", file=sys.stderr)
        finally:
            node.stop()
    stock = max(rates["stock"])
    guard = max(rates["guard"])
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.platform()}")
    print(f"stock celery : {stock:8.0f} no-op tasks/s (best of {args.rounds})")
    print(f"harden(app)  : {guard:8.0f} no-op tasks/s (best of {args.rounds})")
    print(f"ratio        : {guard / stock:.3f} (target >= 0.98)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
