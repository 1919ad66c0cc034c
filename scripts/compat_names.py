#!/usr/bin/env python3
"""Check, in the running interpreter, every private upstream name the guard relies on.

Run by ``scripts/compat.py`` inside each version set's virtualenv; prints one
JSON object: the installed versions and, per name, ``present`` (there and of
the shape the guard uses), ``changed`` (there, but of another shape: e.g. the
attribute exists but reads no longer go through it) or ``missing``. Exit 0
when every name is ``present``, 1 otherwise.

The checks look at the real classes (instances built without any network,
reads of their source where a name is only ever set inside a method), never
at hangproof's own test fakes: a fake with the same attribute would stay green
after an upstream rename (issue 8, "fail closed"). The start-up checks that
make ``harden()`` refuse to run are a separate module
(``hangproof.guard.upstream``); this is the compat matrix's evidence, per
version set.

    $ .compat/oldest/bin/python scripts/compat_names.py | jq .names
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import socket
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

PACKAGES = ("celery", "kombu", "amqp", "aio-pika", "aiormq", "pamqp", "vine", "billiard")

Check = Callable[[], tuple[str, str]]
CHECKS: list[tuple[str, str, str, Check]] = []


def check(package: str, name: str, used_by: str) -> Callable[[Check], Check]:
    """Register a check: it returns (status, detail) or raises (then ``missing``)."""

    def register(fn: Check) -> Check:
        CHECKS.append((package, name, used_by, fn))
        return fn

    return register


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def _shape(ok: bool, detail: str) -> tuple[str, str]:
    return ("present" if ok else "changed", detail)


# -- py-amqp -----------------------------------------------------------------
@check("amqp", "TCPTransport._setup_transport sets _quick_recv", "guard/transport.py _FrameClock")
def _tcp_quick_recv() -> tuple[str, str]:
    import amqp.transport

    a, b = socket.socketpair()
    try:
        t = amqp.transport.TCPTransport("127.0.0.1:1")
        t.sock = a
        t._setup_transport()
        recv = t._quick_recv
        return _shape(recv == a.recv, f"_quick_recv is {getattr(recv, '__qualname__', recv)!s}")
    finally:
        a.close()
        b.close()


@check("amqp", "TCPTransport._read reads through _quick_recv", "guard/transport.py _FrameClock")
def _tcp_read() -> tuple[str, str]:
    import amqp.transport

    return _shape("self._quick_recv" in _source(amqp.transport.TCPTransport._read), "source")


@check("amqp", "SSLTransport._setup_transport sets _quick_recv", "guard/transport.py _FrameClock")
def _ssl_quick_recv() -> tuple[str, str]:
    import amqp.transport

    src = _source(amqp.transport.SSLTransport._setup_transport)
    return _shape("self._quick_recv =" in src, "source")


@check("amqp", "SSLTransport._read reads through _quick_recv", "guard/transport.py _FrameClock")
def _ssl_read() -> tuple[str, str]:
    import amqp.transport

    return _shape("self._quick_recv" in _source(amqp.transport.SSLTransport._read), "source")


@check("amqp", "transport._AbstractTransport (.sock)", "guard/transport.py factory, abandon()")
def _abstract_transport() -> tuple[str, str]:
    import amqp.transport

    t = amqp.transport.TCPTransport("127.0.0.1:1")
    ok = issubclass(amqp.transport.TCPTransport, amqp.transport._AbstractTransport)
    return _shape(ok and hasattr(t, "sock"), "TCPTransport subclasses it; instance has .sock")


@check("amqp", "Connection._METHODS (Connection.Blocked)", "guard/transport.py GuardConnection")
def _methods() -> tuple[str, str]:
    import amqp
    from amqp import spec

    methods = amqp.Connection._METHODS
    ok = isinstance(methods, dict) and spec.Connection.Blocked in methods
    ok = ok and callable(spec.method)
    return _shape(ok, f"{type(methods).__name__} of {len(methods)} methods")


@check("amqp", "Connection._on_blocked / _on_unblocked", "guard/transport.py GuardConnection")
def _on_blocked() -> tuple[str, str]:
    import amqp

    methods = amqp.Connection._METHODS
    from amqp import spec

    handlers = amqp.Connection(host="127.0.0.1:1")._callbacks  # type: ignore[attr-defined]
    ok = callable(amqp.Connection._on_blocked) and callable(amqp.Connection._on_unblocked)
    ok = ok and handlers.get(spec.Connection.Blocked) is not None and bool(methods)
    return _shape(ok, "dispatched from Connection._callbacks")


@check("amqp", "Connection._transport, bytes_recv", "guard/transport.py, guard/runtime.py")
def _conn_transport() -> tuple[str, str]:
    import amqp
    import amqp.method_framing

    c = amqp.Connection(host="127.0.0.1:1")
    ok = "_transport" in vars(c) and c._transport is None and isinstance(c.bytes_recv, int)
    # The frame clock samples this counter: the frame handler must bump it.
    ok = ok and "connection.bytes_recv += 1" in _source(amqp.method_framing.frame_handler)
    return _shape(ok, "instance slot (None before connect); frame_handler counts bytes_recv")


@check("amqp", "Connection.connect builds self.Transport", "guard/transport.py GuardConnection")
def _conn_transport_factory() -> tuple[str, str]:
    import amqp

    return _shape("self.Transport(" in _source(amqp.Connection.connect), "source")


@check("amqp", "Channel._basic_publish", "guard/transport.py GuardChannel")
def _basic_publish() -> tuple[str, str]:
    import amqp

    params = inspect.signature(amqp.Channel._basic_publish).parameters
    return _shape("timeout" in params, f"parameters {', '.join(params)}")


@check("amqp", "Channel._confirm_selected", "guard/transport.py GuardChannel")
def _confirm_selected() -> tuple[str, str]:
    import amqp

    src = _source(amqp.Channel.__init__) + _source(amqp.Channel.basic_publish_confirm)
    return _shape("self._confirm_selected" in src, "set in __init__, read by basic_publish_confirm")


@check("amqp", "Channel._on_basic_ack / _on_basic_nack", "guard/transport.py GuardChannel")
def _on_basic_ack() -> tuple[str, str]:
    import amqp

    ok = all(
        list(inspect.signature(getattr(amqp.Channel, m)).parameters)
        == ["self", "delivery_tag", "multiple"]
        for m in ("_on_basic_ack", "_on_basic_nack")
    )
    return _shape(ok, "(self, delivery_tag, multiple)")


@check("amqp", "Channel._do_revive reopens via open()", "guard/transport.py GuardChannel")
def _do_revive() -> tuple[str, str]:
    import amqp

    src = _source(amqp.Channel._do_revive)
    resets = "self._confirm_selected = False" in src
    # Both shapes are fine (the guard resets it either way); say which this is.
    detail = "resets _confirm_selected" if resets else "keeps _confirm_selected (guard resets it)"
    ok = "self.open()" in src and "_do_revive()" in _source(amqp.Channel._on_close)
    return _shape(ok, detail)


# -- kombu -------------------------------------------------------------------
@check("kombu", "Connection._connection", "guard/transport.py, guard/runtime.py")
def _kombu_connection() -> tuple[str, str]:
    import kombu

    c = kombu.Connection("amqp://guest:guest@127.0.0.1:1//")
    # Reading it must never dial out (the public .connection property does).
    prop = _source(kombu.Connection.connection.fget)
    ok = c._connection is None and "return self._connection" in prop
    return _shape(ok, "attribute, None before connect; the public property connects")


@check("kombu", "Connection.ensure_connection(interval_*)", "guard/celery_steps.py")
def _ensure_connection() -> tuple[str, str]:
    import kombu

    params = inspect.signature(kombu.Connection._ensure_connection).parameters
    ok = {"interval_start", "interval_step", "interval_max"} <= set(params)
    ok = ok and "_ensure_connection" in _source(kombu.Connection.ensure_connection)
    return _shape(ok, "public ensure_connection forwards to _ensure_connection")


@check("kombu", "transport.pyamqp Connection/Channel/Transport", "guard/transport.py")
def _pyamqp() -> tuple[str, str]:
    import amqp
    from kombu.transport import TRANSPORT_ALIASES, pyamqp

    ok = issubclass(pyamqp.Connection, amqp.Connection) and issubclass(pyamqp.Channel, amqp.Channel)
    ok = ok and pyamqp.Transport.Connection is pyamqp.Connection
    return _shape(ok and isinstance(TRANSPORT_ALIASES, dict), "subclasses of py-amqp's")


# -- Celery ------------------------------------------------------------------
@check("celery", "Consumer.connection_for_read / ensure_connected", "guard/celery_steps.py")
def _consumer() -> tuple[str, str]:
    from celery.worker.consumer.consumer import Consumer

    params = list(inspect.signature(Consumer.connection_for_read).parameters)
    ok = params == ["self", "heartbeat"] and callable(Consumer.ensure_connected)
    ok = ok and "ensure_connection(" in _source(Consumer.ensure_connected)
    return _shape(ok, f"connection_for_read{tuple(params)}")


@check("celery", "Consumer.on_connection_error_{before,after}_connected", "guard/celery_steps.py")
def _consumer_errors() -> tuple[str, str]:
    from celery.worker.consumer.consumer import Consumer

    ok = callable(Consumer.on_connection_error_before_connected)
    return _shape(ok and callable(Consumer.on_connection_error_after_connected), "methods")


@check("celery", "worker.state.active_requests", "guard/celery_steps.py (solo pool)")
def _active_requests() -> tuple[str, str]:
    from celery.concurrency.solo import TaskPool
    from celery.worker.state import active_requests

    ok = hasattr(active_requests, "__len__") and TaskPool is not None
    return _shape(ok, f"{type(active_requests).__name__}; solo TaskPool")


@check("celery", "settings harden() sets", "celery.py harden")
def _settings() -> tuple[str, str]:
    from celery.app.defaults import DEFAULTS
    from celery.worker.consumer.consumer import Consumer

    wanted = [
        "broker_channel_error_retry",
        "broker_connection_retry_on_startup",
        "broker_connection_timeout",
        "broker_heartbeat_checkrate",
        "worker_cancel_long_running_tasks_on_connection_loss",
        "task_publish_retry_policy",
    ]
    missing = [k for k in wanted if k not in DEFAULTS]
    read = "broker_channel_error_retry" in _source(Consumer.start)
    return _shape(not missing and read, f"unknown: {missing}" if missing else "all known")


# -- aiormq / aio-pika ------------------------------------------------------
def _aiormq_instance() -> Any:
    import aiormq

    async def build() -> Any:
        return aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")

    return asyncio.run(build())


@check("aiormq", "Connection.__last_frame_time", "aio.py silence watchdog")
def _last_frame_time() -> tuple[str, str]:
    import aiormq.connection

    value = getattr(_aiormq_instance(), "_Connection__last_frame_time")  # noqa: B009
    # The reader must keep stamping it, not only __init__.
    stamps = len(
        re.findall(r"self\.__last_frame_time(?:: float)? = ", _source(aiormq.connection.Connection))
    )
    return _shape(isinstance(value, float) and stamps >= 2, f"float, stamped in {stamps} places")


@check("aiormq", "Connection.__connection_unblocked", "aio.py publish()")
def _connection_unblocked() -> tuple[str, str]:
    event = getattr(_aiormq_instance(), "_Connection__connection_unblocked")  # noqa: B009
    return _shape(isinstance(event, asyncio.Event), type(event).__name__)


@check("aio-pika", "Channel._connection, UnderlayConnection.connection", "aio.py")
def _channel_connection() -> tuple[str, str]:
    import aio_pika.abc
    import aio_pika.channel

    ok = "self._connection" in _source(aio_pika.channel.Channel.__init__)
    ok = ok and "connection" in aio_pika.abc.UnderlayConnection.__annotations__
    return _shape(ok, "Channel keeps its connection in _connection")


@check("aio-pika", "make_url, RobustConnection.connect(timeout)", "aio.py connect_robust")
def _robust() -> tuple[str, str]:
    from aio_pika.connection import make_url
    from aio_pika.robust_connection import RobustConnection

    params = inspect.signature(RobustConnection.connect).parameters
    return _shape(callable(make_url) and "timeout" in params, "connect(timeout=...)")


@check("amqp", "Channel._on_basic_return", "guard/transport.py GuardChannel (PublishUnroutable)")
def _on_basic_return() -> tuple[str, str]:
    import amqp

    params = list(inspect.signature(amqp.Channel._on_basic_return).parameters)
    expected = ["self", "reply_code", "reply_text", "exchange", "routing_key", "message"]
    ok = params == expected and "basic_return" in _source(amqp.Channel._on_basic_return)
    return _shape(ok, "(self, reply_code, reply_text, exchange, routing_key, message)")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run() -> dict[str, Any]:
    """Every check's result, with the versions installed here."""
    names = []
    for package, name, used_by, fn in CHECKS:
        try:
            status, detail = fn()
        except Exception as exc:  # the name is gone, or has another type
            status, detail = "missing", f"{type(exc).__name__}: {exc}"[:200]
        names.append(
            {"package": package, "name": name, "used_by": used_by, "status": status,
             "detail": detail}
        )  # fmt: skip
    return {
        "python": sys.version.split()[0],
        "versions": {p: _version(p) for p in PACKAGES},
        "names": names,
        "ok": all(n["status"] == "present" for n in names),
    }


if __name__ == "__main__":
    report = run()
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)
