"""memory-alarm: RabbitMQ blocks publishers (``connection.blocked``).

Real-world event: a broker hits its memory (or disk) high watermark because
consumers fell behind; every publishing connection is blocked until the alarm
clears. A web request that publishes a task then waits forever unless the
client bounds the publish.

Injected with ``rabbitmqctl set_vm_memory_high_watermark 0.0000001`` (any
memory use is over it), healed by restoring the node's configured 0.4.
"""

from __future__ import annotations

import contextlib

from hangproof.lab.faults import FaultTarget

#: What RabbitNode.prepare configures (vm_memory_high_watermark.relative).
NORMAL_WATERMARK = "0.4"
ALARM_WATERMARK = "0.0000001"


class MemoryAlarm:
    """Set the memory watermark so low that the alarm fires."""

    name = "memory-alarm"

    def __init__(self, target: FaultTarget) -> None:
        self.target = target

    def inject(self) -> None:
        """Raise the alarm: publishers get blocked."""
        self.target.node.ctl("set_vm_memory_high_watermark", ALARM_WATERMARK, timeout=30)

    def heal(self) -> None:
        """Restore the configured watermark (idempotent)."""
        with contextlib.suppress(Exception):
            self.target.node.ctl("set_vm_memory_high_watermark", NORMAL_WATERMARK, timeout=30)


def make(target: FaultTarget) -> MemoryAlarm:
    """The memory-alarm fault for ``target``."""
    return MemoryAlarm(target)
