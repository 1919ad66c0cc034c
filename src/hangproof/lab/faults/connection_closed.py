"""connection-closed: the broker closes the consumer's connection (``connection.close`` 320).

Real-world event: an operator or an automation runs ``rabbitmqctl
close_connection`` (or the management UI's "force close"), a node in
maintenance mode or shutting down closes its clients' connections, a
policy closes idle connections. The broker sends ``connection.close``
(320 CONNECTION_FORCED) and closes the socket: a client must reconnect and
consume again. Upstream reports: celery#6760 and rabbitmq-server#13758 (the
broker-side close family), aio-pika#612 (robust connection comes back
without its consumer), kombu#814 (reconnected but not consuming).

Injected with ``rabbitmqctl close_connection PID REASON`` through the node's
``ctl()``, for every connection of the clients (peer not the broker's own
address: not the matrix's producer). Nothing to heal (the matrix holds it
0 s: resume counts from the end of ``inject()``). ``detail["closed"]``: how
many connections the broker closed.
"""

from __future__ import annotations

from typing import Any

from hangproof.failure import FaultClass
from hangproof.lab.faults import Fault
from hangproof.lab.faults.broker_view import client_connections

REASON = "hangproof lab: connection-closed fault"


class ConnectionClosed(Fault):
    """Close every client connection from the broker's side."""

    name = FaultClass.CONNECTION_CLOSED.value

    def __post_init__(self) -> None:
        self.detail: dict[str, Any] = {}

    def inject(self) -> None:
        """``close_connection`` on each of the clients' connections."""
        conns = client_connections(self.target.node)
        closed = 0
        for conn in conns:
            self.target.node.ctl("close_connection", conn["pid"], REASON, timeout=30)
            closed += 1
        self.detail = {"closed": closed}

    def heal(self) -> None:
        """Nothing to heal: the clients must reconnect."""
