"""one-way-loss-in: only broker -> client packets vanish (see :mod:`.one_way_loss`).

Upstream reports: kombu#670, kombu#463. Real-world event: an asymmetric path
failure whose return leg (broker to worker) black-holes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hangproof.failure import FaultClass
from hangproof.lab.faults.one_way_loss import OneWayLoss


@dataclass(eq=False, repr=False)
class OneWayLossIn(OneWayLoss):
    """The one-way-loss-in fault (``OneWayLoss(target, "in")``)."""

    name = FaultClass.ONE_WAY_LOSS_IN.value

    direction: str = "in"
