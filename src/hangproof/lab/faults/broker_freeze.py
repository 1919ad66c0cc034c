"""broker-freeze: the connected RabbitMQ node stops running, its kernel still ACKs.

Real-world event: a broker VM paused or live-migrated, a node stuck in a long
GC or swapping, a container frozen by the cgroup freezer. TCP stays up (the
kernel ACKs and buffers), so keepalives and TCP_USER_TIMEOUT see nothing; only
an AMQP heartbeat or a frame-age watchdog notices.

Injected as SIGSTOP of beam.smp (found by pid under the node we started),
healed by SIGCONT.
"""

from __future__ import annotations

import contextlib
import os
import signal

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.faults import Fault


class BrokerFreeze(Fault):
    """SIGSTOP / SIGCONT of the node's Erlang VM."""

    name = FaultClass.BROKER_FREEZE.value

    def __post_init__(self) -> None:
        self.beam_pid: int | None = None

    def inject(self) -> None:
        """SIGSTOP beam.smp (the pid is a descendant of the node we started)."""
        pid = self.target.node.beam_pid()
        if pid is None:
            raise HangproofError(f"no beam.smp under {self.target.node.nodename}")
        self.beam_pid = pid
        os.kill(pid, signal.SIGSTOP)

    def heal(self) -> None:
        """SIGCONT the pid we stopped (idempotent)."""
        if self.beam_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.beam_pid, signal.SIGCONT)
            self.beam_pid = None
