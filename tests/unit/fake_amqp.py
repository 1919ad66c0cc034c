"""What the unit tests' fake AMQP brokers share: reading the client's frames.

tests/unit is on ``sys.path`` (pytest's rootdir import mode), so a test
imports this as ``from fake_amqp import client_frames``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
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
