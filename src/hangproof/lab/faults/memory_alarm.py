"""memory-alarm: RabbitMQ blocks publishers (``connection.blocked``).

Real-world event: a broker hits its memory (or disk) high watermark because
consumers fell behind; every publishing connection is blocked until the alarm
clears. A web request that publishes a task then waits forever unless the
client bounds the publish.

Injected with ``rabbitmqctl set_vm_memory_high_watermark 0.0000001`` (any
memory use is over it), healed by restoring the node's configured 0.4.

Detection (issue 10's ``detect`` for this class): the consumer is not
affected by an alarm (RabbitMQ blocks a connection only once it publishes),
so the cell's detect time is the *guarded client noticing the alarm*: the
first ``connection.blocked`` / ``BrokerBlocked`` its publish sees (Celery and
kombu: the guard transport's ``hangproof.guard: broker-blocked`` line; aio-pika:
:mod:`hangproof.aio`'s same line), counted from the end of ``inject()``, when the
alarm is in force (fault_matrix's ``DETECT_FROM_END_OF_INJECT``: before it is
rabbitmqctl's own start-up). ``configure()`` points
the cell's client-side publishes at the consumer's log (``HANGPROOF_EVENT_LOG``,
:func:`hangproof.lab.clients.matrix_clients.log_guard_events_to_cell`), where the
matrix reads detections; a stock client logs no such notice, so its detect
stays "-" (what it shows).
"""

from __future__ import annotations

import contextlib

from hangproof.failure import FaultClass
from hangproof.lab.clients.matrix_clients import EVENT_LOG_ENV
from hangproof.lab.faults import CellContext, Fault

#: What RabbitNode.prepare configures (vm_memory_high_watermark.relative).
NORMAL_WATERMARK = "0.4"
ALARM_WATERMARK = "0.0000001"


class MemoryAlarm(Fault):
    """Set the memory watermark so low that the alarm fires."""

    name = FaultClass.MEMORY_ALARM.value

    def configure(self, ctx: CellContext) -> None:
        """Let the cell's guarded publishes log their notice of the alarm to the consumer's log."""
        ctx.env[EVENT_LOG_ENV] = str(ctx.work / f"{ctx.queue}.log")

    def inject(self) -> None:
        """Raise the alarm: publishers get blocked."""
        self.target.node.ctl("set_vm_memory_high_watermark", ALARM_WATERMARK, timeout=30)

    def heal(self) -> None:
        """Restore the configured watermark (idempotent)."""
        with contextlib.suppress(Exception):
            self.target.node.ctl("set_vm_memory_high_watermark", NORMAL_WATERMARK, timeout=30)
