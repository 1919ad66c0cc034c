"""The guard transport over TLS, against local TLS peers on loopback (no root).

Certificates are made at test time (:mod:`hangproof.lab.components.tls`, openssl). The
peers:

- ``silent``: accepts TCP and never sends a byte (no ServerHello): the
  upstream report is py-amqp PR#398;
- ``drip``: completes TLS (optionally after a delay), sends Connection.Start,
  then only heartbeats: the AMQP handshake never completes;
- ``plain``: the plain-text dripping peer, to which a TLS client speaks.

The real-broker tests (RabbitMQ's TLS listener, a Celery worker over
``amqps://``) are in tests/lab/test_guard_tls_broker.py.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest
from pamqp import commands, frame, heartbeat

from connect_timing import time_connect
from hangproof.guard.transport import (
    GuardConnection,
    HandshakeDeadlineExceeded,
    TLSHandshakeFailed,
    TLSVerificationFailed,
)
from hangproof.lab.components.tls import TlsFiles, make_tls_files

SLACK = 1.0  # scheduling slack on a loaded 2-core box


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"), ("127.0.0.1", "localhost"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls-other"), ca_name="some other CA")


@contextlib.contextmanager
def tls_peer(files: TlsFiles, mode: str, *, tls_delay: float = 0.0) -> Iterator[str]:
    """A loopback listener in ``mode`` (silent, drip or plain); bounded 60 s life."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)

    def serve() -> None:
        born = time.monotonic()
        while not stop.is_set() and time.monotonic() - born < 60:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conns.append(conn)
            if mode != "silent":  # silent: hold the socket, never read, never write
                threading.Thread(target=talk, args=(conn, born), daemon=True).start()

    def talk(conn: socket.socket, born: float) -> None:
        try:
            conn.settimeout(5)
            sock: socket.socket = conn
            if mode == "drip":
                stop.wait(tls_delay)
                sock = context.wrap_socket(conn, server_side=True)
                conns.append(sock)
            sock.recv(8)  # the protocol header (plain: the first bytes of a ClientHello)
            start = commands.Connection.Start(
                server_properties={"product": "fake"}, mechanisms="PLAIN", locales="en_US"
            )
            sock.sendall(frame.marshal(start, 0))
            while not stop.is_set() and time.monotonic() - born < 60:
                sock.sendall(frame.marshal(heartbeat.Heartbeat(), 0))
                stop.wait(0.2)
        except (OSError, ssl.SSLError):
            pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        server.join(5)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()
        listener.close()


def _verified(files: TlsFiles, **extra: object) -> dict[str, object]:
    return {**files.client_options(), **extra}


# -- the two bugs of issue 8 -------------------------------------------------


@pytest.mark.timeout(30)
def test_kombu_ssl_true_reaches_tls(tls_files: TlsFiles) -> None:
    """Was: TypeError: SSLTransport.__init__() takes from 2 to 4 positional arguments."""
    from kombu import Connection

    with tls_peer(tls_files, "drip") as host:
        conn = Connection(
            f"amqp://guest:guest@{host}//",
            transport="hangproof.kombu:Transport",
            ssl=True,
            transport_options={"handshake_deadline": 3.0},
        )
        # ssl=True is py-amqp's default TLS: the system CAs, which do not know
        # the lab CA; so the handshake runs and the certificate is refused.
        with pytest.raises(TLSVerificationFailed) as raised:
            conn.connect()
    message = str(raised.value)
    assert "system's default CAs" in message and "\n" not in message, message


@pytest.mark.timeout(30)
def test_kombu_ssl_dict_is_tls_with_one_total_deadline(tls_files: TlsFiles) -> None:
    """Was: TypeError: ... got multiple values for argument 'connect_timeout'."""
    from kombu import Connection

    deadline = 1.5
    with tls_peer(tls_files, "drip") as host:
        conn = Connection(
            f"amqp://guest:guest@{host}//",
            transport="hangproof.kombu:Transport",
            ssl=_verified(tls_files, server_hostname="127.0.0.1"),
            connect_timeout=10,
            transport_options={"handshake_deadline": deadline},
        )
        started = time.monotonic()
        with pytest.raises(HandshakeDeadlineExceeded):
            # One attempt (kombu's connect() makes two, 2 s apart).
            conn.transport.establish_connection()
        elapsed = time.monotonic() - started
    assert deadline - 0.1 <= elapsed <= deadline + SLACK, elapsed


@pytest.mark.timeout(30)
def test_tcp_tls_and_amqp_share_one_deadline(tls_files: TlsFiles) -> None:
    """A slow TLS handshake is charged to the same total as the AMQP handshake after it."""
    deadline = 2.0
    with tls_peer(tls_files, "drip", tls_delay=0.6 * deadline) as host:
        conn = GuardConnection(
            host=host, ssl=_verified(tls_files), connect_timeout=30, handshake_deadline=deadline
        )
        elapsed, error = time_connect(conn, limit=deadline + 10)
    assert isinstance(error, HandshakeDeadlineExceeded), error
    assert deadline - 0.1 <= elapsed <= deadline + SLACK, elapsed


# -- a TLS port that accepts and never answers (py-amqp PR#398) ---------------


@pytest.mark.timeout(30)
def test_silent_tls_port_fails_within_handshake_deadline(tls_files: TlsFiles) -> None:
    deadline = 1.5
    with tls_peer(tls_files, "silent") as host:
        # connect_timeout=None: what Celery sets under gevent/eventlet.
        conn = GuardConnection(
            host=host, ssl=_verified(tls_files), connect_timeout=None, handshake_deadline=deadline
        )
        elapsed, error = time_connect(conn, limit=deadline + 10)
    assert isinstance(error, HandshakeDeadlineExceeded), error
    assert "no ServerHello" in str(error)
    assert deadline - 0.1 <= elapsed <= deadline + SLACK, elapsed
    print(f"guard: silent TLS port failed after {elapsed:.2f} s (handshake_deadline {deadline})")


@pytest.mark.timeout(30)
def test_stock_pyamqp_hangs_on_silent_tls_port(tls_files: TlsFiles) -> None:
    """The control: stock py-amqp with connect_timeout=None waits for ServerHello forever."""
    limit = 5.0
    with tls_peer(tls_files, "silent") as host:
        conn = amqp.Connection(host=host, ssl=_verified(tls_files), connect_timeout=None)
        elapsed, error = time_connect(conn, limit=limit)
    assert error is None and elapsed >= limit, (elapsed, error)
    print(f"stock py-amqp (connect_timeout=None): still in the TLS handshake after {elapsed:.1f} s")


# -- a refused certificate: one clear line ------------------------------------


@pytest.mark.timeout(30)
def test_wrong_ca_is_one_clear_line(tls_files: TlsFiles, other_ca: TlsFiles) -> None:
    with tls_peer(tls_files, "drip") as host:
        conn = GuardConnection(host=host, ssl=_verified(other_ca), handshake_deadline=3.0)
        started = time.monotonic()
        with pytest.raises(TLSVerificationFailed) as raised:
            conn.connect()
        elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith("TLS: the broker's certificate (127.0.0.1:"), message
    assert f"not trusted by the CA in broker_use_ssl['ca_certs'] ({other_ca.ca_certs})" in message
    assert "\n" not in message
    assert isinstance(raised.value, ssl.SSLCertVerificationError)  # still what users catch
    assert elapsed < 1.0  # refused at once, not after the deadline


@pytest.mark.timeout(30)
def test_wrong_hostname_is_one_clear_line(tls_files: TlsFiles) -> None:
    with tls_peer(tls_files, "drip") as host:
        conn = GuardConnection(
            host=host,
            ssl=_verified(tls_files, server_hostname="mq.example.com"),
            handshake_deadline=3.0,
        )
        with pytest.raises(TLSVerificationFailed) as raised:
            conn.connect()
    message = str(raised.value)
    assert "does not name broker_use_ssl['server_hostname'] 'mq.example.com'" in message, message
    assert "\n" not in message


@pytest.mark.timeout(30)
def test_tls_to_the_plain_port_says_so(tls_files: TlsFiles) -> None:
    with tls_peer(tls_files, "plain") as host:
        conn = GuardConnection(host=host, ssl=_verified(tls_files), handshake_deadline=3.0)
        with pytest.raises(TLSHandshakeFailed) as raised:
            conn.connect()
    assert "plain-text AMQP port" in str(raised.value), raised.value


# -- after the handshake: stock py-amqp ----------------------------------------


def test_tls_read_path_is_stock_pyamqp() -> None:
    import amqp.transport

    from hangproof.guard.transport import GuardSSLTransport

    assert GuardSSLTransport._read is amqp.transport.SSLTransport._read
    assert GuardSSLTransport.read_frame is amqp.transport.SSLTransport.read_frame
    assert GuardSSLTransport._write is amqp.transport.SSLTransport._write


def test_hangproofs_scheme_is_tls_on_5671() -> None:
    from kombu import Connection

    conn = Connection("hangproofs://guest:guest@mq.example.com//")
    assert conn.transport.client.ssl is True
    assert conn.transport.default_connection_params["port"] == 5671
    assert type(conn.transport).__name__ == "SSLTransport"


def test_tls_files_keys_are_private(tls_files: TlsFiles) -> None:
    for key in (tls_files.ca_key, tls_files.server_key, tls_files.client_key):
        assert key.stat().st_mode & 0o777 == 0o600, key
    assert Path(tls_files.directory).stat().st_mode & 0o077 == 0


# -- harden(): TLS wherever the user asked for it ------------------------------


def _hardened(broker: object, **conf: object):  # type: ignore[no-untyped-def]
    from celery import Celery

    from hangproof.celery import harden
    from hangproof.failure import Policy

    app = Celery("tls", broker=broker, set_as_current=False)
    app.conf.update(conf)
    harden(app, Policy(stall_timeout=3))
    return app


def test_harden_keeps_amqps_tls() -> None:
    """Was: harden() left ssl=False, so the worker spoke plain TCP to the TLS port."""
    conn = _hardened("amqps://guest:guest@mq.example.com//").connection_for_read()
    assert conn.transport.client.ssl is True
    assert conn.transport.Connection is GuardConnection
    assert conn.transport.default_connection_params["port"] == 5671


def test_harden_keeps_broker_use_ssl_dict_and_true() -> None:
    options = {"ca_certs": "/etc/ca.pem", "cert_reqs": ssl.CERT_REQUIRED}
    conn = _hardened("amqp://guest:guest@mq:5671//", broker_use_ssl=options).connection_for_read()
    assert conn.ssl == options and conn.transport.Connection is GuardConnection
    conn = _hardened("amqp://guest:guest@mq:5671//", broker_use_ssl=True).connection_for_read()
    assert conn.ssl is True


def test_harden_failover_alternates_keep_their_tls() -> None:
    from kombu import Connection

    urls = "amqps://u:p@a:5671//;amqp://u:p@b:5672//;amqps://u:p@c//"
    app = _hardened(urls)
    assert app.conf.broker_url.split(";") == [
        "hangproofs://u:p@a:5671//",
        "hangproof://u:p@b:5672//",
        "hangproofs://u:p@c//",
    ]

    def walk(conn: Connection) -> list[tuple[str, bool, int]]:
        seen = []
        for _ in range(3):
            seen.append((conn.hostname, bool(conn.transport.client.ssl), conn.port))
            conn.maybe_switch_next()
        return seen

    guarded, stock = walk(app.connection_for_read()), walk(Connection(urls))
    # Each alternate gets exactly what stock kombu gives it (TLS, port), on the guard.
    assert guarded == stock, (guarded, stock)
    assert [tls for _, tls, _ in guarded] == [True, False, True]
    conn = app.connection_for_read()
    for _ in range(3):
        assert conn.transport.Connection is GuardConnection
        conn.maybe_switch_next()


@pytest.mark.timeout(30)
def test_harden_amqps_speaks_tls_with_the_deadline(tls_files: TlsFiles) -> None:
    """Against a TLS peer that never finishes AMQP: TLS completes, the deadline ends it."""
    with tls_peer(tls_files, "drip") as host:
        app = _hardened(f"amqps://guest:guest@{host}//", broker_use_ssl=_verified(tls_files))
        conn = app.connection_for_read()
        started = time.monotonic()
        with pytest.raises(HandshakeDeadlineExceeded):
            conn.transport.establish_connection()
        elapsed = time.monotonic() - started
    assert elapsed <= 1.5 + SLACK  # Policy(stall_timeout=3).handshake_deadline


# -- teardown over TLS: nothing blocks, nothing crashes the reader -------------


@contextlib.contextmanager
def tls_session(files: TlsFiles) -> Iterator[ssl.SSLSocket]:
    """A client SSLSocket whose peer completed TLS and then goes silent (never closes)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.server_cert, files.server_key)
    held: list[socket.socket] = []

    def accept() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        held.append(server_context.wrap_socket(conn, server_side=True))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(files.ca_certs))
    raw = socket.create_connection(listener.getsockname(), timeout=5)
    client = client_context.wrap_socket(raw, server_hostname="127.0.0.1")
    thread.join(5)
    try:
        yield client
    finally:
        for sock in (client, *held, listener):
            with contextlib.suppress(OSError):
                sock.close()


@pytest.mark.timeout(30)
def test_shutdown_socket_leaves_the_tls_reader_an_oserror(tls_files: TlsFiles) -> None:
    """The watchdog's forced reconnect: was ValueError in the reader, and the worker died."""
    from hangproof.guard.transport import shutdown_socket

    with tls_session(tls_files) as client:
        client.settimeout(None)
        outcome: list[object] = []

        def read() -> None:
            try:
                outcome.append(client.read(1))  # blocked: the peer sends nothing
                outcome.append(client.read(1))  # and the next read on the same socket
            except Exception as exc:
                outcome.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.3)
        shutdown_socket(client)  # from another thread, as the watchdog does
        reader.join(5)
    assert not reader.is_alive()
    assert not any(isinstance(o, ValueError) for o in outcome), outcome
    assert all(o == b"" or isinstance(o, OSError) for o in outcome), outcome


@pytest.mark.timeout(30)
def test_tls_close_does_not_wait_for_a_silent_peers_close_notify(tls_files: TlsFiles) -> None:
    import amqp.transport

    from hangproof.guard.transport import GuardSSLTransport

    for cls, limit in ((GuardSSLTransport, 0.5), (amqp.transport.SSLTransport, 3.0)):
        with tls_session(tls_files) as client:
            transport = cls.__new__(cls)
            transport.sock, transport.connected = client, True
            client.settimeout(None)  # Celery under gevent: connect_timeout=None
            closer = threading.Thread(target=transport.close, daemon=True)
            started = time.monotonic()
            closer.start()
            closer.join(limit)
            elapsed = time.monotonic() - started
            still_closing = closer.is_alive()
            if still_closing:
                socket.socket.shutdown(client, socket.SHUT_RDWR)  # let it go
                closer.join(5)
        if cls is GuardSSLTransport:
            assert not still_closing and elapsed < limit, elapsed
        else:  # the control: stock py-amqp waits for the peer's close_notify
            assert still_closing, f"stock close returned after {elapsed:.2f} s"


@pytest.mark.timeout(30)
def test_hardened_delay_with_a_wrong_ca_fails_in_bounded_time_with_the_line(
    tls_files: TlsFiles, other_ca: TlsFiles
) -> None:
    """A web request's delay(): the publish retry policy (3 retries), then the same one line."""
    from kombu.exceptions import OperationalError

    with tls_peer(tls_files, "drip") as host:
        app = _hardened(f"amqps://guest:guest@{host}//", broker_use_ssl=_verified(other_ca))
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            app.send_task("shop.charge", args=("order-1",))
        elapsed = time.monotonic() - started
    assert "not trusted by the CA in broker_use_ssl['ca_certs']" in str(raised.value)
    # Policy(stall_timeout=3): retries after 0, 0.5 and 1.0 s.
    assert elapsed < 1.5 + 3 * SLACK, elapsed
