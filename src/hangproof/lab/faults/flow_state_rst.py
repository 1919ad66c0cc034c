"""flow-state-rst: the router's conntrack entry expires; INVALID packets answered with a RST.

See :mod:`.flow_state`. Upstream reports: celery#1503, celery#2236 (tasks lost
behind an ELB), py-amqp#101, celery#987. Real-world event: a load balancer (an ELB) that answers the packets of
a flow it has expired with a RST.
"""

from __future__ import annotations

from hangproof.lab.faults import FaultTarget
from hangproof.lab.faults.flow_state import BED, FlowStateLoss

__all__ = ["BED", "make"]


def make(target: FaultTarget) -> FlowStateLoss:
    """The flow-state-rst fault for ``target`` (the router testbed)."""
    return FlowStateLoss(target, "rst")
