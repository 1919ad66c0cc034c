"""one-way-loss-in: only broker -> client packets vanish (see :mod:`.one_way_loss`).

Upstream reports: kombu#670, kombu#463. Real-world event: an asymmetric path
failure whose return leg (broker to worker) black-holes.
"""

from __future__ import annotations

from hangproof.lab.faults import FaultTarget
from hangproof.lab.faults.one_way_loss import PARALLEL as PARALLEL
from hangproof.lab.faults.one_way_loss import OneWayLoss


def make(target: FaultTarget) -> OneWayLoss:
    """The one-way-loss-in fault for ``target``."""
    return OneWayLoss(target, "in")
