"""What the unit tests' fake AMQP brokers share: the listener, and reading the client's frames.

tests/unit is on ``sys.path`` (pytest's rootdir import mode), so a test
imports this as ``from fake_amqp import client_frames``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pamqp import frame


def client_frames(
    conn: socket.socket, stop: threading.Event, born: float, limit: float = 30.0
) -> Iterator[tuple[int, str, Any]]:
    """``(channel, method name, frame)`` for each frame the client sends.

    Ends when the client closes, ``stop`` is set, or ``limit`` seconds after
    ``born`` (``conn`` must have a short timeout so these are checked).
    """
    buf = b""
    while not stop.is_set() and time.monotonic() - born < limit:
        try:
            data = conn.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        buf += data
        while buf:
            try:
                used, channel, value = frame.unmarshal(buf)
            except Exception:
                break  # incomplete frame
            buf = buf[used:]
            yield channel, getattr(value, "name", ""), value


@contextlib.contextmanager
def serving(
    session: Callable[[socket.socket, float], None], stop: threading.Event
) -> Iterator[int]:
    """A loopback listener running ``session(conn, born)`` per client; yields its port.

    Accepts for at most 30 s; on exit sets ``stop`` (which the sessions'
    :func:`client_frames` loops watch) and closes the listener.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)

    def serve() -> None:
        born = time.monotonic()
        while not stop.is_set() and time.monotonic() - born < 30:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=session, args=(conn, born), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()
