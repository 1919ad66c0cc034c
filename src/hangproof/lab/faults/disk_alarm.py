"""disk-alarm: RabbitMQ's free-disk alarm blocks every publisher, and close() under it.

Real-world event: the broker's disk fills (logs, a backlog paged to disk, a
small volume) below ``disk_free_limit``; RabbitMQ raises the disk alarm and
blocks every publishing connection (``connection.blocked``) until it clears.
A publish then waits forever, or returns ok while the message sits unread in
the broker's socket buffer (a false ok); and because a blocked connection is
no longer read, even a graceful ``close()`` can wait forever for Close-Ok.
Upstream reports:

- celery#1828: publishing tasks hangs while RabbitMQ has a disk/memory alarm;
- pika#764: ``connection.close()`` hangs while the connection is blocked
  (py-amqp's ``Connection.close``/kombu's ``release()`` wait for Close-Ok the
  same way).

Injected through the lab's ``RabbitNode.ctl``: ``set_disk_free_limit`` to
more than the disk's free space (so the alarm is real: the broker's own disk
monitor raises it), healed by restoring the node's configured 50MB. ``inject``
waits (bounded) until the broker lists the disk alarm; ``detail`` records the
limit set, the free space, and that the alarm was seen.

Detection (issue 10's ``detect`` for this class): as for memory-alarm, the
guarded client's first notice of ``connection.blocked``, counted from the end
of ``inject()``; see :mod:`hangproof.lab.faults.memory_alarm`.
"""

from __future__ import annotations

import contextlib
import shutil
import time

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.clients.matrix_clients import EVENT_LOG_ENV
from hangproof.lab.faults import CellContext, Fault

#: What RabbitNode.prepare configures (disk_free_limit.absolute).
NORMAL_LIMIT = "50MB"
#: How long inject/heal wait for the broker's disk monitor to (un)raise the alarm.
ALARM_WAIT = 30.0


def alarm_limit(free_bytes: int) -> int:
    """A ``disk_free_limit`` (bytes) safely above ``free_bytes``: twice the free space + 1 GiB.

    >>> alarm_limit(10 * 2**30) == 21 * 2**30
    True
    """
    return 2 * free_bytes + 2**30


def has_disk_alarm(alarms: str) -> bool:
    """Whether ``rabbit_alarm:get_alarms()`` output lists the disk alarm.

    >>> has_disk_alarm("[{{resource_limit,disk,'rabbit@h'},[]}]")
    True
    >>> has_disk_alarm("[{{resource_limit,memory,'rabbit@h'},[]}]"), has_disk_alarm("[]")
    (False, False)
    """
    return "resource_limit,disk" in alarms.replace(" ", "")


class DiskAlarm(Fault):
    """Set ``disk_free_limit`` above the free disk so the broker raises its disk alarm."""

    name = FaultClass.DISK_ALARM.value

    def __post_init__(self) -> None:
        self.injected = False
        self.detail: dict[str, object] = {}

    def alarm_active(self) -> bool:
        """Whether the broker lists the disk alarm now."""
        return has_disk_alarm(
            self.target.node.ctl("eval", "rabbit_alarm:get_alarms().", timeout=30)
        )

    def _wait_alarm(self, active: bool) -> bool:
        deadline = time.monotonic() + ALARM_WAIT
        for _ in range(int(ALARM_WAIT / 0.5) + 1):
            with contextlib.suppress(Exception):
                if self.alarm_active() == active:
                    return True
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return False

    def configure(self, ctx: CellContext) -> None:
        """Let the cell's guarded publishes log their notice of the alarm to the consumer's log."""
        ctx.env[EVENT_LOG_ENV] = str(ctx.work / f"{ctx.queue}.log")

    def inject(self) -> None:
        """Raise the limit above the free disk; wait until the broker lists the alarm."""
        free = shutil.disk_usage(self.target.node.state_dir).free
        limit = alarm_limit(free)
        self.injected = True
        self.target.node.ctl("set_disk_free_limit", str(limit), timeout=30)
        self.detail.update(disk_free_bytes=free, disk_free_limit=limit)
        self.detail["alarm_seen"] = self._wait_alarm(True)
        if not self.detail["alarm_seen"]:
            raise HangproofError(f"no disk alarm {ALARM_WAIT:.0f} s after set_disk_free_limit")

    def heal(self) -> None:
        """Restore the configured limit (idempotent); wait (bounded) for the alarm to clear."""
        with contextlib.suppress(Exception):
            self.target.node.ctl("set_disk_free_limit", NORMAL_LIMIT, timeout=30)
        if self.injected:
            self.detail["alarm_cleared"] = self._wait_alarm(False)
        self.injected = False
