"""heartbeat-only-handshake: at reconnect time the peer starts AMQP, then only sends heartbeats.

Real-world event: the client's reconnect lands on something that speaks just
enough AMQP to keep it waiting: a broker wedged mid-boot or mid-partition, a
proxy/NodePort forwarding to a half-dead pod. py-amqp's per-read timeout is
reset by every heartbeat, so a client without a total handshake deadline
waits forever.

``inject()`` starts a fake peer in the broker's namespace (Connection.Start,
then heartbeats every second, never Tune), redirects new client connections to
the AMQP port there (iptables REDIRECT on the client-facing interface), and
closes the broker's client connections so clients reconnect into it.
``heal()`` removes the redirect; the peer keeps dripping heartbeats to the
connections it already holds (a client stuck there stays stuck, as in the real
event); ``close()`` stops the peer by pid.

On a TLS broker (``node.tls``) the peer completes TLS with the broker's own
certificate first, so the client's TLS checks pass and the AMQP handshake is
what never ends.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time

from hangproof.failure import FaultClass
from hangproof.lab.engine import processes
from hangproof.lab.faults import Fault

#: Where the fake peer listens inside the broker namespace.
FAKE_PEER_PORT = 5679
#: A RabbitMQ-like heartbeat cadence; each one resets a per-read timeout.
DRIP_INTERVAL = 1.0
#: The peer exits by itself after this long, in case nobody heals.
PEER_LIFETIME = 3600.0
RULE_COMMENT = "hpfault-heartbeat-only"


class HeartbeatOnlyHandshake(Fault):
    """Redirect new AMQP connections to a peer that never finishes the handshake."""

    name = FaultClass.HEARTBEAT_ONLY_HANDSHAKE.value

    def __post_init__(self) -> None:
        self.peer_pid: int | None = None

    def _rule(self) -> list[str]:
        iface, port = self.target.broker_iface, str(self.target.node.client_port)
        return ["PREROUTING", "-i", iface, "-p", "tcp", "--dport", port,
                "-m", "comment", "--comment", RULE_COMMENT,
                "-j", "REDIRECT", "--to-ports", str(FAKE_PEER_PORT)]  # fmt: skip

    def inject(self) -> None:
        """Start the peer, redirect new connections, close the broker's client connections."""
        node = self.target.node
        argv = [sys.executable, "-m", MODULE, node.host]
        if getattr(node, "tls", False):
            argv += [str(node.tls_files.server_cert), str(node.tls_files.server_key)]
        peer = processes.spawn(argv, netns=self.target.broker_netns)
        self.peer_pid = peer.pid
        processes.run(
            ["iptables", "-w", "5", "-t", "nat", "-I", *self._rule()],
            netns=self.target.broker_netns,
        )
        self.target.node.ctl("close_all_connections", "hangproof fault", timeout=30)

    def heal(self) -> None:
        """Remove the redirect: new connections reach the broker again (idempotent).

        Connections already caught keep getting heartbeats, as they would from
        a real wedged peer: healing the path does not rescue a client that is
        stuck in the handshake. :meth:`close` stops the peer.
        """
        with contextlib.suppress(Exception):
            processes.run(
                ["iptables", "-w", "5", "-t", "nat", "-D", *self._rule()],
                netns=self.target.broker_netns,
                check=False,
            )

    def close(self) -> None:
        """Heal, then stop the peer by pid (its caught connections close)."""
        self.heal()
        if self.peer_pid is not None:
            processes.stop_pid(self.peer_pid, grace=2)
            self.peer_pid = None


MODULE = "hangproof.lab.faults.heartbeat_only_handshake"


def serve(
    host: str,
    port: int = FAKE_PEER_PORT,
    lifetime: float = PEER_LIFETIME,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    """Accept AMQP clients; send Connection.Start, then only heartbeats (bounded lifetime).

    With ``certfile``/``keyfile`` each client first gets a real TLS handshake.
    """
    import ssl

    from pamqp import commands, frame, heartbeat

    context = None
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)

    born = time.monotonic()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    listener.settimeout(0.5)

    def drip(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(5)
            if context is not None:
                conn = context.wrap_socket(conn, server_side=True)
            conn.recv(8)  # the client's protocol header
            start = commands.Connection.Start(
                server_properties={"product": "hangproof heartbeat-only peer"},
                mechanisms="PLAIN AMQPLAIN",
                locales="en_US",
            )
            conn.sendall(frame.marshal(start, 0))
            while time.monotonic() - born < lifetime:
                conn.sendall(frame.marshal(heartbeat.Heartbeat(), 0))
                time.sleep(DRIP_INTERVAL)

    while time.monotonic() - born < lifetime:
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        threading.Thread(target=drip, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    tls_files = sys.argv[2:4]
    serve(
        sys.argv[1],
        certfile=tls_files[0] if tls_files else None,
        keyfile=tls_files[1] if tls_files else None,
    )
