"""flow-state-rst: the router's conntrack entry expires; INVALID packets answered with a RST.

See :mod:`.flow_state`. Upstream reports: celery#1503, celery#2236 (tasks lost
behind an ELB), py-amqp#101, celery#987. Real-world event: a load balancer (an ELB) that answers the packets of
a flow it has expired with a RST.
"""

from __future__ import annotations

from dataclasses import dataclass

from hangproof.failure import FaultClass
from hangproof.lab.faults.flow_state import FlowStateLoss


@dataclass(eq=False, repr=False)
class FlowStateRst(FlowStateLoss):
    """The flow-state-rst fault (``FlowStateLoss(target, "rst")``)."""

    name = FaultClass.FLOW_STATE_RST.value

    variant: str = "rst"
