"""flow-state-expiry: the router's conntrack entry expires; INVALID packets dropped.

See :mod:`.flow_state`. Upstream reports: celery#1503, celery#2236 (tasks lost
behind an ELB), py-amqp#101, celery#987. Real-world event: a NAT gateway or firewall that silently drops the
packets of a flow whose idle timer expired.
"""

from __future__ import annotations

from hangproof.lab.faults import FaultTarget
from hangproof.lab.faults.flow_state import BED, FlowStateLoss

__all__ = ["BED", "make"]


def make(target: FaultTarget) -> FlowStateLoss:
    """The flow-state-expiry fault for ``target`` (the router testbed)."""
    return FlowStateLoss(target, "expiry")
