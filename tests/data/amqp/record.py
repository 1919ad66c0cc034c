"""Re-record the ``rabbitmq_*.bin`` files: what a real RabbitMQ sends during the handshake.

Run as root where rabbitmq-server is installed (takes ~15 s):

    .venv/bin/python tests/data/amqp/record.py

Each file holds the server-to-client bytes of one handshake, frames back to
back. The files in git were recorded from RabbitMQ 3.10.8 on Erlang/OTP 25.2.3
(Debian 12's rabbitmq-server).
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from pamqp import commands, frame, header

from hangproof.lab.components.rabbitmq import RabbitNode

C = commands.Connection
OUT = Path(__file__).resolve().parent
PROPS = {"product": "hangproof-recorder", "capabilities": {"authentication_failure_close": True}}


def read_frame(sock: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 7:
        buf += sock.recv(7 - len(buf)) or b"!"
    size = int.from_bytes(buf[3:7], "big")
    while len(buf) < 8 + size:
        buf += sock.recv(8 + size - len(buf))
    return buf


def session(port: int, user: str, password: str, vhost: str) -> bytes:
    """One handshake; returns the server's frames."""
    got: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(header.ProtocolHeader().marshal())
        got.append(read_frame(sock))  # Start
        response = f"\0{user}\0{password}"
        sock.sendall(frame.marshal(C.StartOk(client_properties=PROPS, response=response), 0))
        got.append(read_frame(sock))
        _, _, m = frame.unmarshal(got[-1])
        if isinstance(m, C.Tune):
            tune_ok = C.TuneOk(m.channel_max, m.frame_max, 0)
            sock.sendall(frame.marshal(tune_ok, 0) + frame.marshal(C.Open(vhost), 0))
            got.append(read_frame(sock))
            _, _, m = frame.unmarshal(got[-1])
            if isinstance(m, C.OpenOk):
                sock.sendall(frame.marshal(C.Close(200, "bye", 0, 0), 0))
                got.append(read_frame(sock))  # Close-Ok
        if isinstance(m, C.Close):
            sock.sendall(frame.marshal(C.CloseOk(), 0))
    return b"".join(got)


def rejected_header(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"AMQP\x01\x01\x00\x0a")  # an AMQP 0-10 style header
        return sock.recv(8)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hp-record-") as tmp:
        with RabbitNode("record", Path(tmp)) as node:
            node.ctl("add_user", "bob", "pw")
            node.ctl("add_vhost", "secret")  # bob has no permissions on it
            port = int(node.amqp_port or 0)
            cases = {
                "ok": ("guest", "guest", "/"),
                "auth_failed": ("guest", "wrong", "/"),
                "vhost_missing": ("guest", "guest", "nope"),
                "vhost_denied": ("bob", "pw", "secret"),
            }
            for name, args in cases.items():
                (OUT / f"rabbitmq_{name}.bin").write_bytes(session(port, *args))
            (OUT / "rabbitmq_protocol_mismatch.bin").write_bytes(rejected_header(port))


if __name__ == "__main__":
    main()
