"""The clients ``lab race`` measures, each run inside the client node's namespace.

``python -m hangproof.lab.clients.race_client CLIENT URL RESULT_FILE`` connects with
that client's defaults and writes one JSON object to RESULT_FILE when it gets
an answer or an error. If it hangs, it writes nothing: the race controller
decides ``hang`` when its observation window closes, and stops us by pid.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

#: A Connection.Start fits in a few reads; a peer dripping bytes gets this many.
MAX_READS = 10_000
#: When each handshake step happened (epoch seconds), for the race's timeline.
STEPS: dict[str, float] = {}


def raw(url: str) -> str:
    """The report's client, reduced: header, then wait for Connection.Start, no deadline.

    It drives the same sans-IO handshake machine as ``hangproof probe`` and the
    guard, over a blocking socket without a timeout, as py-amqp 1.x did.
    """
    from hangproof.amqp import ClientHandshake, StartReceived

    u = urlsplit(url)
    handshake = ClientHandshake(u.username or "guest", u.password or "guest", "/")
    sock = socket.create_connection((u.hostname, u.port or 5672))  # no timeout
    STEPS["estab"] = time.time()
    sock.sendall(handshake.initiate())
    STEPS["header-sent"] = time.time()
    # Bounded in count; in time it is bounded by the race's observation window,
    # after which the controller stops this process by pid.
    for _ in range(MAX_READS):
        data = sock.recv(65536)
        events = handshake.receive_data(data)
        if any(isinstance(e, StartReceived) for e in events):
            STEPS["start"] = time.time()
            return "Connection.Start received" + _finish(sock, handshake)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "peer closed before Connection.Start")
    raise RuntimeError(f"no Connection.Start after {MAX_READS} reads")


#: After Connection.Start the raw client completes the handshake within this
#: long, only so the timeline can show Tune and Open-Ok; the race's outcome was
#: already decided by Connection.Start.
FINISH_SECONDS = 5.0


def _finish(sock: socket.socket, handshake: Any) -> str:
    """Answer Start, take Tune and Open-Ok (timing both), then close; bounded, never raises."""
    from hangproof.amqp import OpenOkReceived, TuneReceived

    deadline = time.monotonic() + FINISH_SECONDS
    try:
        for _ in range(MAX_READS):
            sock.sendall(handshake.data_to_send())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "; no Open-Ok within 5 s"
            sock.settimeout(remaining)
            data = sock.recv(65536)
            for event in handshake.receive_data(data):
                if isinstance(event, TuneReceived):
                    STEPS["tune"] = time.time()
                if isinstance(event, OpenOkReceived):
                    STEPS["open-ok"] = time.time()
                    sock.sendall(handshake.close())
                    return "; Tune and Open-Ok received"
            if not data:
                return "; peer closed after Connection.Start"
    except Exception as exc:  # the outcome stands; this part only adds timeline steps
        return f"; handshake after Start: {type(exc).__name__}"
    return ""


def py_amqp(url: str) -> str:
    import amqp

    u = urlsplit(url)
    conn = amqp.Connection(
        f"{u.hostname}:{u.port}",
        userid=u.username,
        password=u.password,
        # py-amqp's public callbacks: when Tune was answered and Open-Ok came (timeline).
        on_tune_ok=lambda *_: STEPS.__setitem__("tune", time.time()),
        on_open=lambda *_: STEPS.__setitem__("open-ok", time.time()),
    )
    conn.connect()
    return f"py-amqp {amqp.__version__} connected"


def kombu_default(url: str) -> str:
    import kombu

    with kombu.Connection(url) as conn:
        conn.ensure_connection()
    return f"kombu {kombu.__version__} connected (connect_timeout default)"


def kombu_no_timeout(url: str) -> str:
    import kombu

    with kombu.Connection(url, connect_timeout=None) as conn:
        conn.ensure_connection()
    return f"kombu {kombu.__version__} connected (connect_timeout=None)"


def pika_default(url: str) -> str:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.close()
    return f"pika {pika.__version__} connected"


def aio_pika_robust(url: str) -> str:
    import asyncio

    import aio_pika

    async def go() -> None:
        conn = await aio_pika.connect_robust(url)
        await conn.close()

    asyncio.run(go())
    return f"aio-pika {aio_pika.__version__} connect_robust connected"


CLIENTS: dict[str, Callable[[str], str]] = {
    "raw": raw,
    "py-amqp": py_amqp,
    "kombu": kombu_default,
    "kombu-no-timeout": kombu_no_timeout,
    "pika": pika_default,
    "aio-pika": aio_pika_robust,
}

_RESET_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE}


def classify(exc: BaseException) -> str:
    """``reset`` for a fast, retryable refusal; ``error`` for anything else."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _RESET_ERRNOS:
            return "reset"
        if isinstance(e, ConnectionRefusedError | ConnectionResetError):
            return "reset"
        text = str(e).lower()
        if "refused" in text or "reset by peer" in text:
            return "reset"
        e = e.__cause__ or e.__context__
    return "error"


def main(argv: list[str]) -> int:
    name, url, result_file = argv
    start = time.monotonic()
    try:
        detail = CLIENTS[name](url)
        result = {"result": "connected", "detail": detail}
    except Exception as exc:
        result = {"result": classify(exc), "detail": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.monotonic() - start, 3)
    result["finished_at"] = time.time()
    result["steps"] = STEPS
    with open(result_file, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
