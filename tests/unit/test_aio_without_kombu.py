"""``hangproof.aio`` works where only aio-pika is installed: no kombu, Celery or py-amqp.

A subprocess in which importing kombu, celery or amqp fails (``sys.modules``
entries set to None, which is what Python does for a package that is not
there) imports ``hangproof.aio``, runs its start-up check, gives up on a
refusing port within its bound, refuses a publish on a blocked link with
``BrokerBlocked``, and serves the health contract (``serve_health``: the
Celery worker's GuardState and HTTP server, with no kombu behind them).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    for name in ("kombu", "celery", "amqp"):
        sys.modules[name] = None  # import kombu -> ImportError, as if not installed
    try:
        import kombu  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the shim did not hide kombu")

    import asyncio, socket, types

    import aio_pika, aiormq
    from aio_pika.connection import make_url

    import hangproof.aio
    from hangproof.aio import GuardedRobustConnection, connect_robust, publish
    from hangproof.failure import Policy
    from hangproof.guard import upstream
    from hangproof.guard.errors import BrokerBlocked

    assert BrokerBlocked.__mro__[2] is Exception, BrokerBlocked.__mro__
    upstream.check("aiormq")
    upstream.check("aio-pika")

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens: connection refused

    async def main():
        policy = Policy(stall_timeout=3, handshake_deadline=0.5, recover_timeout=1.5)
        try:
            await connect_robust(f"amqp://guest:guest@127.0.0.1:{port}/", policy)
        except TimeoutError as exc:
            print("gave up:", exc)
        else:
            raise SystemExit("connected to nothing?")
        connection = GuardedRobustConnection(make_url("amqp://guest:guest@127.0.0.1:1/"))
        link = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")  # unblocked Event unset
        connection.transport = types.SimpleNamespace(connection=link)
        channel = aio_pika.RobustChannel(connection)
        try:
            await publish(channel, aio_pika.Message(b"x"), "q", policy, exchange=object())
        except BrokerBlocked as exc:
            print("refused:", exc)
        else:
            raise SystemExit("publish on a blocked link did not raise")

        import json, urllib.error, urllib.request
        from hangproof.aio import serve_health
        health = await serve_health(connection, ["q"], port=0, policy=policy)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{health.port}/readyz", timeout=2)
        except urllib.error.HTTPError as exc:
            print("readyz:", exc.code, json.loads(exc.read())["state"])
        await health.close()

    asyncio.run(main())
    loaded = sorted(n for n, m in sys.modules.items()
                    if m is not None and n.split(".")[0] in ("kombu", "celery", "amqp"))
    assert not loaded, loaded
    print("aio without kombu: ok")
    """
)


@pytest.mark.timeout(60)
def test_hangproof_aio_needs_no_kombu() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=50, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gave up: hangproof.aio.connect_robust: no broker connection within 1.5 s" in (
        result.stdout
    )
    assert "refused: broker blocked publishing" in result.stdout
    assert "readyz: 503 reconnecting" in result.stdout
    assert "aio without kombu: ok" in result.stdout
