"""consumer-timeout: the broker closes the channel of a consumer whose task runs too long.

Real-world event: RabbitMQ (3.8.15+) enforces ``consumer_timeout`` on
unacknowledged deliveries. A task that runs longer than it (with acks_late,
or while prefetched messages wait unacked) makes the broker close the whole
channel with ``406 PRECONDITION_FAILED - delivery acknowledgement on channel
N timed out``. Every unacked message goes back to the queue; the consumer is
gone. Upstream reports: celery#6760 (the worker exits on that 406, open),
kombu PR#1953, aio-pika#612 (the robust channel comes back without its
consumer), rabbitmq-server#13758.

Injected on the lab's RabbitMQ 3.10.8 at run time, through the node's
``ctl()``:

- ``configure(ctx)`` gives the cell ``HANGPROOF_LATE_ACKS=1`` (the Celery
  setting celery#6760 is about; the kombu and aio-pika clients ack after
  processing anyway);
- ``prepare()``, before the consumer connects, lowers ``consumer_timeout``
  to :data:`CONSUMER_TIMEOUT_MS` and ``channel_tick_interval`` (how often a
  channel checks it; 60 s by default) to :data:`TICK_MS` with ``rabbitmqctl
  eval 'application:set_env(rabbit, ...)'``: a channel reads both when it
  opens, so they must be set before;
- ``inject()`` publishes one slow task (``hangproof.sleep_then_record``,
  :data:`SLOW_SECONDS`; the kombu and aio-pika matrix clients sleep on a
  second argument too) from the broker's namespace: it runs longer than the
  timeout, so the broker closes the consumer's channel while it runs;
- ``heal()`` restores both settings (channels opened from then on get them)
  and reads the broker's log: ``detail["channel_closed_by_broker"]`` counts
  its ``delivery acknowledgement ... timed out`` lines since ``inject()``.

The slow task's key ends in ``-during``, so the matrix leaves it out of the
executed counts, as it does the publish probe.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any

from hangproof.failure import FaultClass
from hangproof.lab.clients.accounting import Ledger
from hangproof.lab.engine import processes
from hangproof.lab.faults import CellContext, Fault, FaultTarget
from hangproof.lab.faults.broker_view import log_since, log_size

CONSUMER_TIMEOUT_MS = 1000
TICK_MS = 250
SLOW_SECONDS = 3.0
#: RabbitMQ 3.10's defaults (restored by heal()).
DEFAULT_CONSUMER_TIMEOUT_MS = 1800000
DEFAULT_TICK_MS = 60000
_TIMED_OUT = re.compile(r"delivery acknowledgement on channel \d+ timed out[^\n]*")


def set_env(target: FaultTarget, key: str, value: int) -> None:
    """``application:set_env(rabbit, key, value)`` on the node (an integer setting)."""
    target.node.ctl("eval", f"application:set_env(rabbit, {key}, {int(value)}).", timeout=30)


def publish_slow(target: FaultTarget, queue: str, key: str, seconds: float) -> None:
    """Publish ``hangproof.sleep_then_record(key, seconds)`` to ``queue``, confirmed, from the broker's side."""
    code = (
        "import sys\n"
        "from celery import Celery\n"
        "app = Celery('hpfault-slow', broker=sys.argv[1])\n"
        "app.conf.broker_transport_options = {'confirm_publish': True}\n"
        "app.conf.broker_connection_timeout = 5\n"
        "app.send_task('hangproof.sleep_then_record', args=(sys.argv[3], float(sys.argv[4])),"
        " queue=sys.argv[2], retry=False)\n"
    )
    processes.run(
        [sys.executable, "-c", code, target.node.url, queue, key, str(seconds)],
        netns=target.broker_netns,
        timeout=30,
    )


class ConsumerTimeout(Fault):
    """A running task outlives the broker's consumer_timeout: 406 and the channel is closed."""

    name = FaultClass.CONSUMER_TIMEOUT.value

    def __post_init__(self) -> None:
        self.queue = ""
        self.work: Path | None = None
        #: Every cell's queue: the profiles of a matrix run share one injection,
        #: so each queue gets its own slow task (``detail["per_queue"]``).
        self.queues: list[str] = []
        self.detail: dict[str, Any] = {}
        self._offset = 0
        self._set = False

    def configure(self, ctx: CellContext) -> None:
        """The celery#6760 setting: acks_late, so the running task is unacked."""
        self.queue = ctx.queue
        self.work = ctx.work
        if ctx.queue not in self.queues:
            self.queues.append(ctx.queue)
        ctx.env["HANGPROOF_LATE_ACKS"] = "1"

    def prepare(self) -> None:
        """Lower consumer_timeout and the channel tick before the consumer opens its channel."""
        self._set = True
        set_env(self.target, "consumer_timeout", CONSUMER_TIMEOUT_MS)
        set_env(self.target, "channel_tick_interval", TICK_MS)

    def inject(self) -> None:
        """Publish the slow task; the broker closes the channel ~timeout after delivering it."""
        if not self._set:
            self.prepare()
        self._offset = log_size(self.target.node)
        per_queue: dict[str, dict[str, Any]] = {}
        for queue in self.queues or [self.queue]:
            key = f"{queue}-slow-during"
            publish_slow(self.target, queue, key, SLOW_SECONDS)
            per_queue[queue] = {"slow_key": key}
        self.detail = {
            "consumer_timeout_ms": CONSUMER_TIMEOUT_MS,
            "channel_tick_interval_ms": TICK_MS,
            "slow_task_s": SLOW_SECONDS,
            "per_queue": per_queue,
        }

    def heal(self) -> None:
        """Restore RabbitMQ's defaults and count the broker's channel closes (idempotent)."""
        if not self._set:
            return
        with contextlib.suppress(Exception):
            set_env(self.target, "consumer_timeout", DEFAULT_CONSUMER_TIMEOUT_MS)
        with contextlib.suppress(Exception):
            set_env(self.target, "channel_tick_interval", DEFAULT_TICK_MS)
        self._set = False
        found = _TIMED_OUT.findall(log_since(self.target.node, self._offset))
        self.detail["channel_closed_by_broker"] = len(found)
        self.detail["broker_log"] = [line[:160] for line in found[:3]]
        if self.work is not None:
            for queue, mine in (self.detail.get("per_queue") or {}).items():
                keys = Ledger(self.work / f"{queue}.ledger").executions()
                mine["slow_task_runs_completed"] = keys.count(mine.get("slow_key", "?"))
