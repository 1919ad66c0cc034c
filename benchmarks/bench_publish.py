"""Publish latency of a web-request-style ``delay()``: guarded vs stock, with confirms.

    sudo .venv/bin/python benchmarks/bench_publish.py --calls 1000 --rounds 3

Starts one RabbitNode on loopback (private ports), like bench_throughput.py.
Each profile round is one producer process (:mod:`hangproof.lab.clients.delay_loop`)
that calls ``record.delay(key)`` once every ``--interval`` seconds, ``--calls``
times, on the app's pooled connection, and times every call; the first
``--warmup`` calls of a round (connect, declare) are discarded. Profiles:

- ``stock+confirms``: stock Celery with ``confirm_publish=True`` (py-amqp
  waits for the broker's Basic.Ack): the fair baseline;
- ``harden``: ``harden(app)`` (confirms on by default, one total deadline,
  connection.blocked check);
- ``stock``: stock Celery as shipped, no confirms (for reference: it returns
  before the broker has the message).

Rounds alternate the profile order so drift of a shared machine lands on all
alike. Prints p50 and p99 per profile over all measured calls, and the
ratios harden / stock+confirms (targets: p50 <= 1.5, p99 <= 2.0). ``--json``
prints the figures as JSON on stdout (progress on stderr). Bounded: every
round has a time limit; everything is stopped by pid; no queue survives.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kombu import Connection

from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import processes

#: Profile name -> (HANGPROOF_GUARD, delay_loop --confirms).
PROFILES: dict[str, tuple[str, str | None]] = {
    "stock+confirms": ("0", "on"),
    "harden": ("1", None),
    "stock": ("0", "off"),
}
BASELINE = "stock+confirms"
ROUND_LIMIT = 300.0  # seconds per profile round, whatever happens


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile(list(range(100)), 0.99)
    (2.0, 98)
    """
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return ordered[min(len(ordered), rank) - 1]


def run_round(
    node: RabbitNode, tmp: Path, profile: str, calls: int, interval: float
) -> list[float]:
    """One producer process of ``profile``; the seconds of each of its calls."""
    guard, confirms = PROFILES[profile]
    queue = f"benchpub-{profile.replace('+', '-')}-{time.time_ns()}"
    out = tmp / f"{queue}.jsonl"
    env = {"HANGPROOF_BROKER_URL": node.url, "HANGPROOF_GUARD": guard}
    argv = [sys.executable, "-m", "hangproof.lab.clients.delay_loop", "run", queue, str(out)]
    argv += ["--count", str(calls), "--interval", str(interval), "--prefix", "b"]
    if confirms is not None:
        argv += ["--confirms", confirms]
    proc = processes.spawn(argv, env=env, log=tmp / f"{queue}.log")
    try:
        proc.wait(timeout=ROUND_LIMIT)
    finally:
        processes.stop_pid(proc.pid)
        with Connection(node.url) as conn:
            conn.default_channel.queue_delete(queue=queue)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    failed = [r for r in rows if not r["ok"]]
    if failed or len(rows) != calls:
        raise SystemExit(
            f"{profile}: {len(rows)} of {calls} calls, {len(failed)} failed: "
            f"{failed[0]['error'] if failed else 'producer stopped early'}"
        )
    return [float(r["seconds"]) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="delay() calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per profile")
    parser.add_argument("--warmup", type=int, default=50, help="discarded calls per round")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between calls")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    args = parser.parse_args()
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in PROFILES}
    names = list(PROFILES)
    with tempfile.TemporaryDirectory(prefix="hp-benchpub-") as d:
        tmp = Path(d)
        node = RabbitNode("benchpub", tmp / "rabbit")
        try:
            node.start(timeout=90)
            for i in range(args.rounds):
                order = names if i % 2 == 0 else names[::-1]
                for name in order:
                    calls = run_round(node, tmp, name, args.calls + args.warmup, args.interval)
                    measured = calls[args.warmup :]
                    seconds[name] += measured
                    print(
                        f"round {i + 1}: {name}: p50 {1000 * percentile(measured, 0.5):.2f} ms, "
                        f"p99 {1000 * percentile(measured, 0.99):.2f} ms",
                        file=sys.stderr,
                    )
        finally:
            node.stop()
    load_after = os.getloadavg()
    figures: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "load_before": round(load_before[0], 2),
        "load_after": round(load_after[0], 2),
        "calls_per_round": args.calls,
        "rounds": args.rounds,
        "interval_s": args.interval,
        "profiles": {},
    }
    for name, values in seconds.items():
        figures["profiles"][name] = {
            "calls": len(values),
            "p50_ms": round(1000 * percentile(values, 0.5), 3),
            "p99_ms": round(1000 * percentile(values, 0.99), 3),
            "mean_ms": round(1000 * statistics.fmean(values), 3),
        }
    base, guard = figures["profiles"][BASELINE], figures["profiles"]["harden"]
    figures["ratio_p50"] = round(guard["p50_ms"] / base["p50_ms"], 3)
    figures["ratio_p99"] = round(guard["p99_ms"] / base["p99_ms"], 3)
    figures["target"] = {"ratio_p50": 1.5, "ratio_p99": 2.0}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"machine: {figures['machine']}")
    print(
        f"load average: {figures['load_before']} before, {figures['load_after']} after; "
        f"{args.calls} delay() calls/round x {args.rounds} rounds, {args.interval} s apart"
    )
    for name, f in figures["profiles"].items():
        print(
            f"{name:15s}: p50 {f['p50_ms']:7.3f} ms  p99 {f['p99_ms']:7.3f} ms  ({f['calls']} calls)"
        )
    print(
        f"ratio harden / {BASELINE}: p50 {figures['ratio_p50']:.3f} (target <= 1.5), "
        f"p99 {figures['ratio_p99']:.3f} (target <= 2.0)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
