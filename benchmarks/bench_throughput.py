"""No-op tasks per second through one real RabbitMQ: guarded vs stock Celery.

    sudo .venv/bin/python benchmarks/bench_throughput.py --tasks 4000 --rounds 5

Starts one RabbitNode on loopback (private ports). After one discarded warm-up
round per profile, runs ``--rounds`` rounds; each round runs both profiles,
in alternating order (stock first, then guard first, ...), so slow drift of a
shared machine lands on both equally. Both profiles use the same worker
command line, concurrency and prefetch; only ``HANGPROOF_GUARD`` differs. A
profile round fills a fresh queue with ``--tasks`` no-op tasks, starts a
prefork worker on it (by pid), and times the queue draining from the first
consumed message to empty (polled with a passive ``queue_declare``; a ledger
per task would cost more than the task). Prints per-round rates, the median
and best of each profile, and both ratios (the median ratio is the figure;
best-of is less sensitive to other load). ``--py-spy DIR`` also records a
py-spy profile of each measured worker (slower; for finding costs, not for
the figure). Bounded: every wait has a limit; everything is stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kombu import Connection

from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import processes

ROUND_LIMIT = 300.0  # seconds per profile, whatever happens


def queue_depth(conn: Connection, queue: str) -> tuple[int, int]:
    channel = conn.default_channel
    ok = channel.queue_declare(queue=queue, passive=True)
    return ok.message_count, ok.consumer_count


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of every live process in group ``pgid`` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process exited meanwhile
        # after "(comm)": state ppid pgrp ... utime(12th) stime(13th)
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def run_profile(
    node: RabbitNode,
    tmp: Path,
    guard: bool,
    tasks: int,
    concurrency: int,
    prefetch: int,
    py_spy: Path | None = None,
) -> tuple[float, float]:
    """One round: (tasks per second, worker CPU milliseconds per task).

    The CPU figure (parent + pool children, between the first consumed
    message and an empty queue) is much less sensitive to other load on a
    shared machine than the rate: it is what the guard would cost.
    """
    queue = f"bench-{'guard' if guard else 'stock'}-{time.time_ns()}"
    env = {
        "HANGPROOF_BROKER_URL": node.url,
        "HANGPROOF_GUARD": "1" if guard else "0",
        "HANGPROOF_PREFETCH": str(prefetch),
    }
    os.environ.update(env)
    from hangproof.lab.clients.celery_app import app

    app.conf.broker_url = node.url
    with Connection(node.url) as conn:
        # Fill the queue first, so the worker's rate is measured, not ours.
        producer = app.amqp.Producer(conn)
        conn.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        for _ in range(tasks):
            app.send_task("hangproof.noop", queue=queue, producer=producer)
        argv = [sys.executable, "-m", "celery", "-A", "hangproof.lab.clients.celery_app", "worker"]
        argv += ["-P", "prefork", "-c", str(concurrency), "-Q", queue, "--loglevel=WARNING"]
        argv += ["--without-gossip", "--without-mingle", "-n", f"{queue}@%h"]
        worker = processes.spawn(argv, env=env, log=tmp / f"{queue}.log")
        spy = None
        if py_spy is not None:
            py_spy.mkdir(parents=True, exist_ok=True)
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy_argv = [spy_bin, "record", "--subprocesses", "--nonblocking", "--format", "raw"]
            spy_argv += ["-o", str(py_spy / f"{queue}.txt"), "--pid", str(worker.pid)]
            spy = subprocess.Popen(
                spy_argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            started = None
            deadline = time.monotonic() + ROUND_LIMIT
            while time.monotonic() < deadline:
                depth, consumers = queue_depth(conn, queue)
                if consumers and started is None and depth < tasks:
                    started = time.monotonic()
                    first_depth = depth
                    cpu_at_start = group_cpu_seconds(worker.pid)
                if started is not None and depth == 0:
                    elapsed = time.monotonic() - started
                    cpu = group_cpu_seconds(worker.pid) - cpu_at_start
                    return first_depth / elapsed, 1000.0 * cpu / first_depth
                time.sleep(0.02)
            raise SystemExit(f"profile {'guard' if guard else 'stock'} did not finish in time")
        finally:
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
                try:
                    spy.wait(10)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(5)
            processes.stop_pid(worker.pid)
            conn.default_channel.queue_delete(queue=queue)


def summary(rates: list[float]) -> tuple[float, float]:
    """(median, best) of one profile's rates."""
    return statistics.median(rates), max(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per profile")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds per profile")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=64, help="worker_prefetch_multiplier")
    parser.add_argument("--py-spy", type=Path, default=None, help="record profiles here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {"stock": [], "guard": []}
    cpu: dict[str, list[float]] = {"stock": [], "guard": []}
    with tempfile.TemporaryDirectory(prefix="hp-bench-") as d:
        tmp = Path(d)
        node = RabbitNode("bench", tmp / "rabbit")
        try:
            node.start(timeout=90)
            for i in range(args.warmup + args.rounds):
                measured = i >= args.warmup
                order = (False, True) if i % 2 == 0 else (True, False)
                for guard in order:
                    name = "guard" if guard else "stock"
                    rate, cpu_ms = run_profile(
                        node,
                        tmp,
                        guard,
                        args.tasks,
                        args.concurrency,
                        args.prefetch,
                        args.py_spy if measured else None,
                    )
                    if measured:
                        rates[name].append(rate)
                        cpu[name].append(cpu_ms)
                    label = f"round {i - args.warmup + 1}" if measured else "warm-up"
                    print(
                        f"{label}: {name}: {rate:.0f} tasks/s, {cpu_ms:.3f} worker CPU ms/task",
                        file=sys.stderr,
                    )
        finally:
            node.stop()
    load_after = os.getloadavg()
    stock_median, stock_best = summary(rates["stock"])
    guard_median, guard_best = summary(rates["guard"])
    n = args.rounds
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.platform()}")
    print(
        f"load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"{args.tasks} tasks/round, -c {args.concurrency}, prefetch x{args.prefetch}"
    )
    print(f"stock celery : median {stock_median:6.0f}  best {stock_best:6.0f} tasks/s ({n} rounds)")
    print(f"harden(app)  : median {guard_median:6.0f}  best {guard_best:6.0f} tasks/s ({n} rounds)")
    print(
        f"ratio        : median {guard_median / stock_median:.3f}  "
        f"best {guard_best / stock_best:.3f} (target >= 0.98)"
    )
    stock_cpu, guard_cpu = statistics.median(cpu["stock"]), statistics.median(cpu["guard"])
    print(
        f"worker CPU   : stock {stock_cpu:.3f} ms/task, guard {guard_cpu:.3f} ms/task "
        f"(medians; guard/stock {guard_cpu / stock_cpu:.3f}, lower is better)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
