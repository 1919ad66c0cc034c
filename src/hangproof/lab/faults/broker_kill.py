"""broker-kill: the connected RabbitMQ node dies (OOM kill, node crash, pod evicted).

The kernel closes the node's sockets, so clients get RST/FIN at once; the
question is whether they reconnect and resume when the node (or, in a cluster,
another member) is back. Injected as SIGKILL of beam.smp by pid; healed by
starting the node again on the same data directory (durable queues and
persistent messages survive).
"""

from __future__ import annotations

import contextlib
import os
import signal

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.faults import Fault


class BrokerKill(Fault):
    """SIGKILL the node's Erlang VM; heal restarts the node."""

    name = FaultClass.BROKER_KILL.value

    def __post_init__(self) -> None:
        self.killed = False

    def inject(self) -> None:
        """SIGKILL beam.smp, then stop what is left of the node by its pids."""
        node = self.target.node
        pid = node.beam_pid()
        if pid is None:
            raise HangproofError(f"no beam.smp under {node.nodename}")
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        node.stop()  # the wrapper script and epmd, by the pids we started

    def heal(self) -> None:
        """Start the node again (same data directory); blocks until AMQP answers."""
        if self.killed:
            self.killed = False
            self.target.node.start(timeout=120)
