"""The guard looks the broker's name up within the handshake deadline (celery#2417).

py-amqp resolves with an unbounded ``socket.getaddrinfo``; against an
unreachable resolver glibc waits 10 s by default, past the 7.5 s deadline
(measured on the dns-stall lab fault). These tests stand in a slow resolver
(a patched ``getaddrinfo``: no root, no network) and check both the bound and
that the resolved addresses are still dialled.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from hangproof.guard import transport as guard_transport
from hangproof.guard.transport import (
    DNSLookupTimeout,
    GuardConnection,
    GuardTCPTransport,
    HandshakeDeadlineExceeded,
    bounded_getaddrinfo,
)

SLACK = 1.0  # scheduling slack on a loaded 2-core box
REAL_GETADDRINFO = socket.getaddrinfo


def slow_resolver(delay: float, answer: str = "127.0.0.1") -> Any:
    real = REAL_GETADDRINFO
    calls: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        try:
            socket.inet_aton(host)
        except OSError:  # a name: the "resolver" is slow
            time.sleep(delay)
            return real(answer, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    getaddrinfo.calls = calls  # type: ignore[attr-defined]
    return getaddrinfo


def test_lookup_gives_up_within_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", slow_resolver(5.0))
    started = time.monotonic()
    with pytest.raises(DNSLookupTimeout, match=r"no answer within 0\.5 s"):
        bounded_getaddrinfo("broker.example", 5672, 0.5)
    assert time.monotonic() - started < 0.5 + SLACK
    assert issubclass(DNSLookupTimeout, socket.timeout)  # kombu/Celery retry it


def test_lookup_passes_resolver_errors_and_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    def nxdomain(*_: Any, **__: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)
    with pytest.raises(socket.gaierror):
        bounded_getaddrinfo("broker.example", 5672, 1.0)
    monkeypatch.setattr(socket, "getaddrinfo", slow_resolver(0.05))
    assert bounded_getaddrinfo("broker.example", 5672, 2.0)[0][4] == ("127.0.0.1", 5672)


def _listener() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    return listener, listener.getsockname()[1]


def test_transport_connect_bounds_the_lookup_by_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", slow_resolver(5.0))
    t = GuardTCPTransport("broker.example:5672", connect_timeout=5.0)
    t.handshake_deadline_at = time.monotonic() + 0.5
    started = time.monotonic()
    with pytest.raises(HandshakeDeadlineExceeded, match=r"DNS lookup of broker\.example"):
        t.connect()
    assert time.monotonic() - started < 0.5 + SLACK


def test_transport_dials_the_resolved_address(monkeypatch: pytest.MonkeyPatch) -> None:
    listener, port = _listener()
    resolver = slow_resolver(0.05)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    t = GuardTCPTransport(f"broker.example:{port}", connect_timeout=2.0)
    t.handshake_deadline_at = time.monotonic() + 3.0
    try:
        t._connect("broker.example", port, 2.0)
        assert t.sock is not None and t.sock.getpeername() == ("127.0.0.1", port)
        assert resolver.calls[0] == "broker.example"  # looked up once, then dialled by IP
    finally:
        if t.sock is not None:
            t.sock.close()
        listener.close()


def test_guard_connection_to_a_name_with_a_dead_resolver_fails_on_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole py-amqp connect (as kombu calls it) ends by the deadline, not the resolver's."""
    monkeypatch.setattr(socket, "getaddrinfo", slow_resolver(6.0))
    monkeypatch.setattr(guard_transport, "_notify_deadline", lambda *a: None)
    conn = GuardConnection(host="broker.example:5672", connect_timeout=5.0, handshake_deadline=1.0)
    started = time.monotonic()
    with pytest.raises(HandshakeDeadlineExceeded):
        conn.connect()
    assert time.monotonic() - started < 1.0 + SLACK
    # The lookup thread is a daemon: it cannot keep the process alive.
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("hangproof-dns-"))
