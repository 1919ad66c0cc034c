"""client-freeze: the client's own process stops; the broker drops it for missed heartbeats.

Real-world event: the worker's main process is frozen while its TCP stays up:
a long blocking call on the event loop's thread (a C extension holding the
GIL, a synchronous DNS lookup, a debugger), the cgroup freezer, a VM paused,
SIGSTOP by a supervisor, heavy swapping. Nobody answers the broker's
heartbeats, so after two missed intervals RabbitMQ closes the connection
(``missed heartbeats from client, timeout: Ns``). When the process thaws, its
sockets are dead: the client must notice, reconnect and consume again, and a
task it was running (acks_late) is redelivered. Upstream reports: celery#4980
and celery#5157 (worker stops consuming after the broker dropped it for
missed heartbeats), celery#5998 (connection reset after heartbeat loss, the
worker hangs), kombu#806 (heartbeat not sent while busy: the broker closes
the connection), py-amqp#396 (``ConnectionResetError`` after a missed
heartbeat, then no recovery).

Injected as SIGSTOP of the consumer's main process (the Celery main process
for Celery profiles; the prefork children are left running, as a frozen
parent would leave them), known by pid *identity*: ``attach(ctx)`` records
the pid and its start time (``/proc/PID/stat``), ``inject()`` and ``heal()``
signal it only if it is still that process. The matrix holds the fault for
:data:`HEARTBEATS` x the guard's heartbeat at the matrix's ``stall_timeout``
(``DEFAULT_HOLD`` is 3 x 5 s for the default 15 s; pass ``--hold`` for
another). Healed by SIGCONT.

``detail``: ``stopped`` (``/proc/PID/stat`` state ``T`` right after SIGSTOP),
``heartbeats`` (the heartbeat the broker negotiated with each of the client's
connections, ``list_connections timeout``; 0 = none), and, read just before
SIGCONT, ``dropped_by_broker`` (how many of those connections the broker had
closed) and ``broker_log`` (its ``missed heartbeats`` lines); ``sigstop_after_s``
(``inject()`` start to SIGSTOP) and ``frozen_s`` (SIGSTOP to SIGCONT), so
detection can be counted from the SIGCONT. A stock client
whose negotiated heartbeat is longer than the freeze is not dropped: that is
part of what the cell measures.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from typing import Any

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.engine import processes
from hangproof.lab.faults import CellContext, Fault
from hangproof.lab.faults.broker_view import client_connections, log_since, log_size

#: The freeze lasts this many heartbeat intervals (the broker needs two).
HEARTBEATS = 3
_MISSED = re.compile(r"missed heartbeats from client[^\n]*")


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``T`` when stopped), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


class ClientFreeze(Fault):
    """SIGSTOP / SIGCONT of the consumer's main process, by pid identity."""

    name = FaultClass.CLIENT_FREEZE.value

    def __post_init__(self) -> None:
        self.pid: int | None = None
        self.start_tick: int | None = None
        self.stopped = False
        self.detail: dict[str, Any] = {}
        self._conns: list[dict[str, Any]] = []
        self._log_offset = 0
        self._stopped_at = 0.0

    def attach(self, ctx: CellContext) -> None:
        """Record the consumer's pid, its identity, and its connections as the broker sees them."""
        if ctx.worker_pid is None:
            raise HangproofError("client-freeze needs the consumer's pid (attach after ready)")
        self.pid = ctx.worker_pid
        self.start_tick = processes.start_time(self.pid)

    def _ours(self) -> bool:
        return (
            self.pid is not None
            and self.start_tick is not None
            and processes.start_time(self.pid) == self.start_tick
        )

    def inject(self) -> None:
        """SIGSTOP the consumer's main process (only if it is still the one attached)."""
        if not self._ours():
            raise HangproofError("client-freeze: the consumer process is gone or not attached")
        assert self.pid is not None
        started = time.monotonic()
        with contextlib.suppress(Exception):
            self._conns = client_connections(self.target.node)
        self._log_offset = log_size(self.target.node)
        os.kill(self.pid, signal.SIGSTOP)
        self._stopped_at = time.monotonic()
        self.stopped = True
        state = None
        for _ in range(40):  # bounded: <= 2 s
            state = process_state(self.pid)
            if state == "T":
                break
            time.sleep(0.05)
        self.detail = {
            "pid": self.pid,
            "stopped": state == "T",
            "heartbeats": sorted({c["heartbeat"] for c in self._conns}),
            "connections": len(self._conns),
            # inject() start -> SIGSTOP (the broker read before it).
            "sigstop_after_s": round(self._stopped_at - started, 2),
        }

    def heal(self) -> None:
        """Read what the broker did (dropped connections), then SIGCONT (idempotent)."""
        if not self.stopped:
            return
        try:
            with contextlib.suppress(Exception):
                now = {c["pid"] for c in client_connections(self.target.node)}
                self.detail["dropped_by_broker"] = sum(c["pid"] not in now for c in self._conns)
            missed = _MISSED.findall(log_since(self.target.node, self._log_offset))
            self.detail["broker_log"] = [line[:160] for line in missed[:4]]
        finally:
            if self._ours():
                assert self.pid is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGCONT)
            # SIGSTOP -> SIGCONT: the hold plus heal()'s broker read.
            self.detail["frozen_s"] = round(time.monotonic() - self._stopped_at, 2)
            self.stopped = False
