"""The guard transport's total handshake deadline, against a local fake peer.

The fake peer accepts, reads the protocol header, sends Connection.Start, and
then only drips heartbeat frames: the handshake never completes. Stock py-amqp
with the same per-read timeout keeps waiting; the guard gives up on time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import amqp
import pytest
from pamqp import commands, frame, heartbeat

from connect_timing import time_connect
from hangproof.guard.transport import GuardConnection, HandshakeDeadlineExceeded

SLACK = 1.0  # scheduling slack on a loaded 2-core box


@contextlib.contextmanager
def dripping_peer(*, send_start: bool = True, interval: float = 0.2) -> Iterator[str]:
    """A listener that starts the AMQP handshake then only sends heartbeats.

    Stops (and closes every socket) when the context exits; bounded by a
    60 s lifetime in case a test forgets it.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        born = time.monotonic()
        while not stop.is_set() and time.monotonic() - born < 60:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conns.append(conn)
            threading.Thread(target=drip, args=(conn, born), daemon=True).start()

    def drip(conn: socket.socket, born: float) -> None:
        try:
            conn.settimeout(5)
            conn.recv(8)  # the client's protocol header
            if send_start:
                start = commands.Connection.Start(
                    server_properties={"product": "fake"},
                    mechanisms="PLAIN",
                    locales="en_US",
                )
                conn.sendall(frame.marshal(start, 0))
            while not stop.is_set() and time.monotonic() - born < 60:
                if send_start:
                    conn.sendall(frame.marshal(heartbeat.Heartbeat(), 0))
                time.sleep(interval)
        except OSError:
            pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        server.join(5)
        for conn in conns:
            conn.close()
        listener.close()


@pytest.mark.timeout(30)
def test_guard_deadline_stops_heartbeat_drip() -> None:
    deadline = 1.5
    with dripping_peer() as host:
        conn = GuardConnection(host=host, connect_timeout=1.0, handshake_deadline=deadline)
        elapsed, error = time_connect(conn, limit=deadline + 5)
    assert isinstance(error, HandshakeDeadlineExceeded), error
    assert deadline - 0.1 <= elapsed <= deadline + SLACK


@pytest.mark.timeout(30)
def test_stock_pyamqp_keeps_waiting_on_heartbeat_drip() -> None:
    """The control: the same per-read timeout does not stop stock py-amqp."""
    with dripping_peer() as host:
        conn = amqp.Connection(host=host, connect_timeout=1.0)
        elapsed, error = time_connect(conn, limit=4.0)
    assert error is None and elapsed >= 4.0, (elapsed, error)


@pytest.mark.timeout(30)
def test_guard_deadline_holds_with_no_connect_timeout() -> None:
    """Celery sets connect_timeout=None under gevent; the deadline still holds."""
    with dripping_peer(send_start=False) as host:
        conn = GuardConnection(host=host, connect_timeout=None, handshake_deadline=1.0)
        elapsed, error = time_connect(conn, limit=6)
    assert isinstance(error, HandshakeDeadlineExceeded), error
    assert elapsed <= 1.0 + SLACK


def test_guard_connection_is_a_kombu_transport() -> None:
    from kombu import Connection

    conn = Connection(
        "amqp://guest:guest@127.0.0.1:1//",
        transport="hangproof.kombu:Transport",
        transport_options={"handshake_deadline": 0.5},
        connect_timeout=0.5,
    )
    with pytest.raises(OSError):
        conn.connect()
    assert conn.transport.Connection is GuardConnection


def test_no_per_frame_override_after_the_handshake() -> None:
    """After Open-Ok the read path is stock py-amqp's: no wrapper, no override."""
    import amqp.transport

    from hangproof.guard.transport import GuardTCPTransport

    assert GuardTCPTransport.read_frame is amqp.transport.TCPTransport.read_frame
    assert GuardTCPTransport._read is amqp.transport.TCPTransport._read
    a, b = socket.socketpair()
    try:
        transport = GuardTCPTransport.__new__(GuardTCPTransport)
        transport.sock = a
        transport.handshake_deadline_at = time.monotonic() + 5
        transport._setup_transport()
        assert transport._quick_recv != a.recv  # bounded during the handshake
        transport.end_handshake()
        assert transport._quick_recv == a.recv  # the bound method py-amqp uses
        assert transport.handshake_deadline_at is None
    finally:
        a.close()
        b.close()


def test_frame_clock_samples_pyamqp_frame_count() -> None:
    """The clock moves when py-amqp's inbound frame count moves, and only then."""
    conn = GuardConnection(host="127.0.0.1:1", handshake_deadline=1.0)
    assert conn.last_inbound_frame_at is None  # not connected
    conn._transport = object()  # stands for a connected transport
    conn.bytes_recv = 7
    first = conn.last_inbound_frame_at
    assert first is not None
    time.sleep(0.01)
    assert conn.last_inbound_frame_at == first  # no new frame: the clock stands
    conn.bytes_recv += 1
    assert conn.last_inbound_frame_at > first  # a frame arrived: stamped anew
    conn._transport = None
