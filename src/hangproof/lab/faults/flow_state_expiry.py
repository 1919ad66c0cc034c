"""flow-state-expiry: the router's conntrack entry expires; INVALID packets dropped.

See :mod:`.flow_state`. Upstream reports: celery#1503, celery#2236 (tasks lost
behind an ELB), py-amqp#101, celery#987. Real-world event: a NAT gateway or firewall that silently drops the
packets of a flow whose idle timer expired.
"""

from __future__ import annotations

from dataclasses import dataclass

from hangproof.failure import FaultClass
from hangproof.lab.faults.flow_state import FlowStateLoss


@dataclass(eq=False, repr=False)
class FlowStateExpiry(FlowStateLoss):
    """The flow-state-expiry fault (``FlowStateLoss(target, "expiry")``)."""

    name = FaultClass.FLOW_STATE_EXPIRY.value

    variant: str = "expiry"
