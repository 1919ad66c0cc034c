"""One way for tests to time a py-amqp ``connect()`` that may hang.

Shared by the unit tests (local fake brokers) and the lab tests (real RabbitMQ);
importable from any test module because pytest puts ``tests/`` on sys.path for
the root conftest.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any


def time_connect(conn: Any, limit: float) -> tuple[float, BaseException | None]:
    """Run ``conn.connect()`` in a thread for at most ``limit`` seconds.

    Returns (seconds, error). ``error`` is None both when it connected and when
    it was still hung at ``limit``; then seconds >= limit, and the stuck reader is
    unblocked (its socket shut down) so the thread ends with the test.
    """
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            conn.connect()
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    elapsed = time.monotonic() - started
    if worker.is_alive():
        with contextlib.suppress(OSError, AttributeError):
            sock = conn._transport.sock
            socket.socket(fileno=os.dup(sock.fileno())).shutdown(socket.SHUT_RDWR)
        worker.join(5)
        return elapsed, None
    return elapsed, result[0]
