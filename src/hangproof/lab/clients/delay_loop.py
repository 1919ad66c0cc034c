"""A web-request-style producer: ``task.delay()`` one call at a time, each call timed.

What a web application does: one process, one Celery app, a pooled broker
connection, and a ``delay()`` per request. Every call is written as one JSON
line ``{"key", "ok", "seconds", "error", "at"}``, so a lab test can check
that no call took longer than ``publish_timeout`` + 1 s and that every "ok"
was really queued (no false ok), and the publish benchmark can take
percentiles. The app is :mod:`hangproof.lab.clients.celery_app`, so the same
environment makes it stock or guarded (``HANGPROOF_GUARD=1``)::

    HANGPROOF_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// HANGPROOF_GUARD=1 \\
        python -m hangproof.lab.clients.delay_loop run QUEUE calls.jsonl --seconds 30 --interval 0.2

``drain URL QUEUE`` prints the keys of the messages waiting in ``QUEUE`` (one
per line, bounded in time), to compare with the "ok" calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: The producer stops by itself after this long, whatever it was asked.
MAX_SECONDS = 600.0


def run(
    queue: str,
    out: Path,
    *,
    seconds: float = 30.0,
    interval: float = 0.2,
    count: int | None = None,
    prefix: str = "d",
    confirm_publish: bool | None = None,
    stop_file: Path | None = None,
) -> int:
    """Call ``record.delay(key)`` every ``interval`` s for ``seconds`` (or ``count`` calls).

    ``confirm_publish`` overrides the transport option (stock Celery has it
    off; the guard turns it on). Returns the number of calls made.
    """
    from hangproof.lab.clients.celery_app import app, record

    app.conf.task_default_queue = queue
    if confirm_publish is not None:
        app.conf.broker_transport_options = {
            **(app.conf.broker_transport_options or {}),
            "confirm_publish": confirm_publish,
        }
    started = time.monotonic()
    limit = min(seconds, MAX_SECONDS)
    calls = 0
    with open(out, "a", buffering=1) as f:
        for i in range(count if count is not None else int(limit / max(interval, 1e-4)) + 1):
            if time.monotonic() - started > (MAX_SECONDS if count is not None else limit):
                break
            if stop_file is not None and stop_file.exists():
                break
            key = f"{prefix}{i}"
            record_: dict[str, Any] = {"key": key, "at": time.time()}
            t0 = time.perf_counter()
            try:
                record.delay(key)
            except Exception as exc:  # what the web request would see
                record_.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:200])
            else:
                record_.update(ok=True, error=None)
            record_["seconds"] = round(time.perf_counter() - t0, 6)
            f.write(json.dumps(record_) + "\n")
            calls += 1
            if interval > 0:
                time.sleep(interval)
    return calls


def drain(url: str, queue: str, bound: float = 20.0) -> list[str]:
    """The keys of the messages in ``queue`` (consumed and acked), within ``bound`` seconds."""
    from kombu import Connection, Queue

    from hangproof.lab.clients.matrix_clients import message_key

    keys: list[str] = []
    deadline = time.monotonic() + bound
    with Connection(url, connect_timeout=5) as conn:
        simple = conn.SimpleQueue(Queue(queue, routing_key=queue, no_declare=True))
        try:
            while time.monotonic() < deadline:
                try:
                    message = simple.get(timeout=1.0)
                except simple.Empty:
                    break
                keys.append(message_key(message.body))
                message.ack()
        finally:
            simple.close()
    return keys


def main(argv: list[str] | None = None) -> int:
    """``run`` the producer or ``drain`` a queue (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="delay_loop")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("queue")
    r.add_argument("out")
    r.add_argument("--seconds", type=float, default=30.0)
    r.add_argument("--interval", type=float, default=0.2)
    r.add_argument("--count", type=int, default=None)
    r.add_argument("--prefix", default="d")
    r.add_argument("--confirms", choices=("on", "off"), default=None)
    r.add_argument("--stop-file", default=None)
    d = sub.add_parser("drain")
    d.add_argument("url")
    d.add_argument("queue")
    d.add_argument("--bound", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.cmd == "drain":
        for key in drain(args.url, args.queue, args.bound):
            print(key)
        return 0
    run(
        args.queue,
        Path(args.out),
        seconds=args.seconds,
        interval=args.interval,
        count=args.count,
        prefix=args.prefix,
        confirm_publish=None if args.confirms is None else args.confirms == "on",
        stop_file=Path(args.stop_file) if args.stop_file else None,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
