"""Record ``inet_diag_ipv6.hex``: a real netlink inet_diag dump that holds IPv6 sockets.

How it was recorded (root, under the lab lock, on Debian 12, Linux 6.x):

    labrun .venv/bin/python tests/data/doctor/record_ipv6.py

It creates a throwaway network namespace ``hpdoc6-rec-<pid>``, brings its
loopback up (which gives it ``::1``), and inside it, in one process:

- listens on ``[::1]:5672`` and connects a client to it; the client sends the
  8-byte AMQP header, which the server side never reads (Recv-Q 8, as in the
  incident, but over IPv6);
- listens on ``[::]:5673`` dual-stack and connects an IPv4 client to
  ``127.0.0.1:5673``: the server's socket is AF_INET6 with the IPv4-mapped
  address ``::ffff:127.0.0.1``, which doctor shows as plain IPv4;
- dumps every TCP socket with :func:`hangproof.doctor.sockets.read_tcp_dump`,
  writing each ``recv`` as one hex line.

The namespace is deleted in ``finally``. Nothing outside it is touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).with_name("inet_diag_ipv6.hex")
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def inside() -> None:
    from hangproof.doctor.sockets import read_tcp_dump

    v6 = socket.socket(socket.AF_INET6)
    v6.bind(("::1", 5672))
    v6.listen(8)
    client = socket.create_connection(("::1", 5672), timeout=5)
    client.sendall(AMQP_HEADER)
    server_side, _ = v6.accept()  # accepted but never read: Recv-Q 8

    dual = socket.socket(socket.AF_INET6)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(("::", 5673))
    dual.listen(8)
    v4_client = socket.create_connection(("127.0.0.1", 5673), timeout=5)
    mapped_side, _ = dual.accept()
    time.sleep(0.2)  # let the header land in the receive queue

    chunks: list[bytes] = []
    dump = read_tcp_dump(record=chunks)
    assert dump.complete and not dump.interrupted
    OUT.write_text("".join(chunk.hex() + "\n" for chunk in chunks))
    for s in dump.sockets:
        print(s.state, s.local, s.remote, f"recv_q={s.recv_q}", file=sys.stderr)
    for s in (client, server_side, v6, v4_client, mapped_side, dual):
        s.close()


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("record_ipv6.py needs root (it creates a network namespace); run under labrun")
    ns = f"hpdoc6-rec-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, __file__, "--inside"],
            check=True,
            timeout=60,
        )
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False, timeout=10)
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    inside() if sys.argv[1:] == ["--inside"] else main()
