"""``probe()`` against real peers on 127.0.0.1 ephemeral ports, one per verdict.

Every peer is a plain socket server in a thread. Each is bounded (it stops on
its own after PEER_LIFETIME seconds, and every loop checks a stop flag) and the
``peers`` fixture stops and closes all of them, even when a test fails. No root,
nothing beyond loopback.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pamqp import commands, frame

from hangproof.amqp import heartbeat_frame
from hangproof.failure import Verdict
from hangproof.probe import ProbeResult, probe

DATA = Path(__file__).resolve().parent.parent / "data" / "amqp"
C = commands.Connection

#: No peer thread lives longer than this, whatever happens to the test.
PEER_LIFETIME = 30.0
#: How far past its deadline a probe may return: scheduling on a loaded 2-core
#: box, thread start-up. Generous on purpose; the point is "not forever".
SLACK = 1.0

Handler = Callable[[socket.socket, threading.Event], None]


class Peer:
    """A listener on 127.0.0.1 whose connections are handled by ``handler`` in a thread."""

    def __init__(self, handler: Handler | None, *, accept: bool = True, backlog: int = 8) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.port = int(self.listener.getsockname()[1])
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.handler = handler
        if accept:
            self.thread = threading.Thread(target=self._serve, daemon=True)
            self.thread.start()

    def url(self, user: str = "guest", password: str = "guest", vhost: str = "") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{vhost}"

    def _serve(self) -> None:
        self.listener.settimeout(0.05)
        end = time.monotonic() + PEER_LIFETIME
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(0.05)
                if self.handler is not None:
                    with contextlib.suppress(OSError):
                        self.handler(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(handler: Handler | None = None, **kwargs: object) -> Peer:
        peer = Peer(handler, **kwargs)  # type: ignore[arg-type]
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


def recv_some(conn: socket.socket, stop: threading.Event, n: int, within: float = 5.0) -> bytes:
    """Read up to ``n`` bytes, giving up after ``within`` s or when stopped."""
    data = b""
    end = time.monotonic() + within
    while len(data) < n and not stop.is_set() and time.monotonic() < end:
        try:
            chunk = conn.recv(n - len(data))
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    return data


def recv_frame(conn: socket.socket, stop: threading.Event) -> bytes:
    head = recv_some(conn, stop, 7)
    if len(head) < 7:
        return head
    return head + recv_some(conn, stop, int.from_bytes(head[3:7], "big") + 1)


def for_a_while(stop: threading.Event, seconds: float, every: float) -> Iterator[int]:
    """Bounded ticks: at most ``seconds / every`` of them, and none after stop."""
    for i in range(int(seconds / every)):
        if stop.wait(every):
            return
        yield i


def run_probe(url: str, timeout: float) -> tuple[ProbeResult, float]:
    t0 = time.monotonic()
    result = probe(url, timeout=timeout)
    took = time.monotonic() - t0
    assert took <= timeout + SLACK, f"probe took {took:.2f} s with a {timeout} s deadline"
    assert result.seconds <= took
    return result, took


def stage_names(result: ProbeResult) -> list[str]:
    return [s.stage for s in result.stages]


def recorded_frames(name: str) -> list[bytes]:
    data = (DATA / f"rabbitmq_{name}.bin").read_bytes()
    frames = []
    while data:
        n, _, _ = frame.unmarshal(data)
        frames.append(data[:n])
        data = data[n:]
    return frames


def replay(name: str) -> Handler:
    """A fake broker that answers each client frame with the next recorded one."""
    frames = recorded_frames(name)

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        assert recv_some(conn, stop, 8) == b"AMQP\x00\x00\x09\x01"
        for i, server_frame in enumerate(frames):
            conn.sendall(server_frame)
            if i == len(frames) - 1:
                break
            # Start-Ok; Tune-Ok + Open; Close: read one or two client frames.
            recv_frame(conn, stop)
            if isinstance(frame.unmarshal(server_frame)[2], C.Tune):
                recv_frame(conn, stop)  # Tune-Ok and Open come together
        recv_some(conn, stop, 64, within=1.0)

    return handler


# -- verdicts ------------------------------------------------------------------
def test_ok_against_a_replayed_rabbitmq(peers: Callable[..., Peer]) -> None:
    peer = peers(replay("ok"))
    result, _ = run_probe(peer.url(), timeout=5)
    assert result.verdict is Verdict.OK, result.detail
    assert stage_names(result) == [
        "dns",
        "tcp-connect",
        "protocol-header",
        "start",
        "start-ok",
        "tune",
        "tune-ok",
        "open",
        "open-ok",
        "close",
    ]
    assert all(s.ok for s in result.stages)
    assert result.to_dict()["server"]["product"] == "RabbitMQ"
    assert result.tune == {"channel_max": 2047, "frame_max": 131072, "heartbeat": 60}


def test_auth_failed_against_a_replayed_rabbitmq(peers: Callable[..., Peer]) -> None:
    peer = peers(replay("auth_failed"))
    result, _ = run_probe(peer.url(password="wrong"), timeout=5)
    assert result.verdict is Verdict.AUTH_FAILED
    assert result.reply_code == 403
    assert stage_names(result)[-1] == "tune" and not result.stages[-1].ok


def test_vhost_denied_against_a_replayed_rabbitmq(peers: Callable[..., Peer]) -> None:
    peer = peers(replay("vhost_denied"))
    result, _ = run_probe(peer.url(vhost="secret"), timeout=5)
    assert result.verdict is Verdict.VHOST_DENIED
    assert result.reply_code == 530 and "secret" in (result.reply_text or "")


def test_silent_listener_that_never_accepts(peers: Callable[..., Peer]) -> None:
    # The incident's port holder: the kernel completes the handshake, nobody reads.
    peer = peers(None, accept=False)
    result, took = run_probe(peer.url(), timeout=1.5)
    assert result.verdict is Verdict.SILENT
    assert took >= 1.4  # it waited for the whole deadline, not less
    assert stage_names(result)[-1] == "start" and not result.stages[-1].ok
    assert result.bytes_received == 0


def test_http_server_is_not_amqp(peers: Callable[..., Peer]) -> None:
    def http(conn: socket.socket, stop: threading.Event) -> None:
        # Like nginx: an invalid request line gets a 400 at once.
        recv_some(conn, stop, 8)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    peer = peers(http)
    result, took = run_probe(peer.url(), timeout=5)
    assert result.verdict is Verdict.NOT_AMQP
    assert "HTTP" in result.detail
    assert took < 2


def test_start_then_only_heartbeats_is_stalled(peers: Callable[..., Peer]) -> None:
    start = recorded_frames("ok")[0]

    def heartbeats_only(conn: socket.socket, stop: threading.Event) -> None:
        recv_some(conn, stop, 8)
        conn.sendall(start)
        for _ in for_a_while(stop, 10, 0.1):
            conn.sendall(heartbeat_frame())

    peer = peers(heartbeats_only)
    result, took = run_probe(peer.url(), timeout=1.5)
    assert result.verdict is Verdict.STALLED
    assert result.heartbeats_received >= 5
    assert stage_names(result)[-1] == "tune" and not result.stages[-1].ok
    assert took >= 1.4  # heartbeats did not count as progress, nor reset the deadline


def test_closed_port_is_refused() -> None:
    # A bound, non-listening socket keeps the port ours and answers SYN with RST.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        result, took = run_probe(f"amqp://guest:guest@127.0.0.1:{port}/", timeout=5)
    assert result.verdict is Verdict.REFUSED
    assert took < 1


def test_peer_that_closes_at_once_is_closed(peers: Callable[..., Peer]) -> None:
    peer = peers(lambda conn, stop: None)  # accept, then the with-block closes it
    result, took = run_probe(peer.url(), timeout=5)
    assert result.verdict is Verdict.CLOSED
    assert took < 3.5  # includes the bounded tls-check second opinion


def test_drip_of_one_byte_per_second_stays_within_deadline(peers: Callable[..., Peer]) -> None:
    start = recorded_frames("ok")[0]

    def drip(conn: socket.socket, stop: threading.Event) -> None:
        recv_some(conn, stop, 8)
        for i in for_a_while(stop, 20, 1.0):
            conn.sendall(start[i : i + 1])

    peer = peers(drip)
    result, took = run_probe(peer.url(), timeout=2.5)
    assert result.verdict is Verdict.STALLED
    assert 1 <= result.bytes_received <= 4
    assert took >= 2.4


def test_endless_heartbeat_flood_stays_within_deadline(peers: Callable[..., Peer]) -> None:
    burst = heartbeat_frame() * 8192  # 64 KiB per send, as fast as the socket takes it

    def flood(conn: socket.socket, stop: threading.Event) -> None:
        recv_some(conn, stop, 8)
        conn.settimeout(0.2)
        for _ in range(100_000):
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                conn.sendall(burst)

    peer = peers(flood)
    result, took = run_probe(peer.url(), timeout=1.5)
    assert result.verdict is Verdict.STALLED
    assert result.heartbeats_received > 1000
    assert took >= 1.4


def test_tls_alert_is_tls_required(peers: Callable[..., Peer]) -> None:
    def tls_alert(conn: socket.socket, stop: threading.Event) -> None:
        # What a TLS stack answers to a record that is not TLS: fatal
        # protocol_version alert (RFC 8446 §6), record type 0x15.
        recv_some(conn, stop, 8)
        conn.sendall(b"\x15\x03\x03\x00\x02\x02\x46")

    peer = peers(tls_alert)
    result, _ = run_probe(peer.url(), timeout=5)
    assert result.verdict is Verdict.TLS_REQUIRED
    assert "TLS alert" in result.detail


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed (apt-get install -y openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    argv += ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_openssl_tls_only_port_is_tls_required(
    peers: Callable[..., Peer], certificate: tuple[Path, Path]
) -> None:
    # A real TLS server (OpenSSL, like stunnel or haproxy) closes on our plain
    # header without an alert; the probe's tls-check finds it speaks TLS.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)

    def tls_server(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(3)
        with context.wrap_socket(conn, server_side=True) as tls:
            recv_some(tls, stop, 8, within=1.0)

    peer = peers(tls_server)
    result, _ = run_probe(peer.url(), timeout=5)
    assert result.verdict is Verdict.TLS_REQUIRED, result.detail
    assert stage_names(result)[-1] == "tls-check" and result.stages[-1].ok


def test_protocol_header_echo_is_protocol_mismatch(peers: Callable[..., Peer]) -> None:
    def amqp10_broker(conn: socket.socket, stop: threading.Event) -> None:
        recv_some(conn, stop, 8)
        conn.sendall(b"AMQP\x00\x01\x00\x00")  # AMQP 1.0, then close (§4.2.2)

    peer = peers(amqp10_broker)
    result, _ = run_probe(peer.url(), timeout=5)
    assert result.verdict is Verdict.PROTOCOL_MISMATCH
    assert "1-0-0" in result.detail


def test_full_accept_queue_is_unreachable(peers: Callable[..., Peer]) -> None:
    # Linux drops a SYN when the listener's accept queue is full
    # (tcp_conn_request: "sk_acceptq_is_full -> drop"), so connect() times out:
    # exactly what a client sees when nobody answers its SYN.
    peer = peers(None, accept=False, backlog=0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", peer.port))
            fillers.append(s)
        time.sleep(0.2)
        result, took = run_probe(peer.url(), timeout=1.5)
    finally:
        for s in fillers:
            s.close()
    assert result.verdict is Verdict.UNREACHABLE, result.detail
    assert stage_names(result)[-1] == "tcp-connect"
    assert took >= 1.4


def test_password_never_in_result(peers: Callable[..., Peer]) -> None:
    peer = peers(replay("auth_failed"))
    result, _ = run_probe(peer.url(user="bob", password="hunter2"), timeout=5)
    text = repr(result) + str(result.to_dict())
    assert "hunter2" not in text
    assert result.url == f"amqp://bob:***@127.0.0.1:{peer.port}/"


def tls_replay(certificate: tuple[Path, Path], name: str) -> Handler:
    """A fake broker behind TLS (amqps://), replaying recorded frames."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    inner = replay(name)

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(3)
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(0.05)
            inner(tls, stop)

    return handler


def test_amqps_ok_through_tls(peers: Callable[..., Peer], certificate: tuple[Path, Path]) -> None:
    peer = peers(tls_replay(certificate, "ok"))
    url = f"amqps://guest:guest@127.0.0.1:{peer.port}/"
    t0 = time.monotonic()
    result = probe(url, timeout=5, tls_verify=False)
    assert time.monotonic() - t0 <= 5 + SLACK
    assert result.verdict is Verdict.OK, result.detail
    assert stage_names(result)[:4] == ["dns", "tcp-connect", "tls", "protocol-header"]


def test_amqps_untrusted_certificate(
    peers: Callable[..., Peer], certificate: tuple[Path, Path]
) -> None:
    peer = peers(tls_replay(certificate, "ok"))
    result, _ = run_probe(f"amqps://guest:guest@127.0.0.1:{peer.port}/", timeout=5)
    # The server failed to authenticate itself; the detail says how to skip the check.
    assert result.verdict is Verdict.AUTH_FAILED
    assert "certificate" in result.detail and "--insecure" in result.detail
    assert stage_names(result)[-1] == "tls" and not result.stages[-1].ok
