"""one-way-loss-out: only client -> broker packets vanish (see :mod:`.one_way_loss`).

Upstream reports: kombu#670 (``basic_cancel`` waits forever for Cancel-Ok),
kombu#463. Real-world event: an asymmetric path failure whose outbound leg
(worker to broker) black-holes while the broker's heartbeats still arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

from hangproof.failure import FaultClass
from hangproof.lab.faults.one_way_loss import OneWayLoss


@dataclass(eq=False, repr=False)
class OneWayLossOut(OneWayLoss):
    """The one-way-loss-out fault (``OneWayLoss(target, "out")``)."""

    name = FaultClass.ONE_WAY_LOSS_OUT.value

    direction: str = "out"
