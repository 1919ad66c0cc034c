"""queue-deleted: the queue a worker consumes is deleted under it.

Real-world event: an operator, a deploy script or a policy (``x-expires``)
deletes the queue while workers consume it; a cluster node that held a
non-replicated queue goes away. RabbitMQ sends each consumer ``basic.cancel``
(consumer cancel notification) and keeps the connection and channel open, so
a client that ignores the cancel stays connected and consumes nothing, and
publishes to the queue's exchange are confirmed but routed nowhere until
somebody declares the queue again. Upstream reports: kombu PR#1953 (handling
the broker's consumer cancel), aio-pika#612 (the robust channel does not
consume again), kombu#814 and celery#3409 (reconnected but not consuming),
rabbitmq-server#13758.

Injected with ``rabbitmqctl delete_queue QUEUE`` through the node's
``ctl()``. Nothing to heal: the queue stays deleted until a client declares
it (the matrix holds it 0 s; resume counts from the end of ``inject()``).
Messages in the queue when it is deleted, and those published to its
exchange before a client declares it again, are discarded by the broker: the
fault itself loses them, whatever the client does (``detail["deleted"]``:
the broker's count of messages it discarded with the queue).
"""

from __future__ import annotations

import re
from typing import Any

from hangproof.failure import FaultClass
from hangproof.lab.faults import CellContext, Fault
from hangproof.lab.faults.broker_view import queue_consumers

#: ``delete_queue`` answers "Queue was successfully deleted with N ready messages".
_DELETED = re.compile(r"deleted with (\d+) ready messages?")


class QueueDeleted(Fault):
    """Delete the cell's queue while its consumer consumes it."""

    name = FaultClass.QUEUE_DELETED.value
    #: One injection per cell: detection counts from the cell's own deletion
    #: (the end of inject, DETECT_FROM_END_OF_INJECT), not from before the
    #: first of several sequential rabbitmqctl calls (~8 s each under load).
    parallel = False

    def __post_init__(self) -> None:
        self.queue = ""
        self.detail: dict[str, Any] = {}

    def configure(self, ctx: CellContext) -> None:
        """Learn the cell's queue."""
        self.queue = ctx.queue

    def inject(self) -> None:
        """``delete_queue`` (the broker cancels the queue's consumers): one rabbitmqctl call.

        The consumer count before is the engine's (``consumers_before``, read
        just before inject).
        """
        out = self.target.node.ctl("delete_queue", self.queue, timeout=30)
        self.detail = parse_deleted(self.queue, out)

    def heal(self) -> None:
        """Nothing comes back by itself: a client must declare the queue again.

        One rabbitmqctl call: the queue's consumer count at heal (None: not
        declared again, or not read).
        """
        mine = (self.detail.get("per_queue") or {}).get(self.queue)
        if mine is not None:
            mine["consumers_at_heal"] = queue_consumers(self.target.node, self.queue)


def parse_deleted(queue: str, out: str) -> dict[str, Any]:
    """The fault's ``detail`` from ``delete_queue``'s answer.

    >>> parse_deleted("q1", "Queue was successfully deleted with 3 ready messages")
    {'per_queue': {'q1': {'deleted': 3, 'ctl': 'Queue was successfully deleted with 3 ready messages'}}}
    """
    found = _DELETED.search(out)
    return {
        "per_queue": {
            queue: {"deleted": int(found.group(1)) if found else None, "ctl": out.strip()[:160]}
        }
    }
