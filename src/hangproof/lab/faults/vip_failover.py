"""vip-failover: the VIP moves to another node while clients are connected.

Real-world event: keepalived fails over (the holder's check failed, or the node
went down), and the new holder sends a gratuitous ARP so the clients' node
updates its neighbour entry. The old holder's conntrack entries (its DNAT and
masquerade for the clients' connections) stay behind on the old holder; the
new holder has none. The clients' next segments reach the new holder, which
NATs them as new flows to the pod, whose kernel has no such socket and answers
with a RST; the broker's frames still come back through the old holder. A
client notices when it next sends, or when its heartbeat/watchdog says so.

Injected on the seed lab (:mod:`hangproof.lab.beds.seed_bed`), clients on n1: the VIP is
deleted on n2, added on n3, and n1's neighbour entry for it is replaced by
n3's MAC (what the gratuitous ARP does). No heal: the VIP stays on n3.
"""

from __future__ import annotations

from hangproof.failure import FaultClass
from hangproof.lab.beds.seed_bed import (
    FIRST_HOLDER,
    NEXT_HOLDER,
    SeedBedFault,
    pin_vip,
)


class VipFailover(SeedBedFault):
    """Move the VIP from n2 to n3 under connected clients."""

    name = FaultClass.VIP_FAILOVER.value
    #: fault-matrix may run every profile against one failover (one VIP move).
    parallel = True

    def inject(self) -> None:
        """VIP off n2, onto n3; n1's neighbour entry follows (gratuitous ARP)."""
        pin_vip(self.lab, NEXT_HOLDER, self.target.client_node)
        self.detail = {"from": FIRST_HOLDER, "to": NEXT_HOLDER}

    def heal(self) -> None:
        """Nothing to heal: the VIP stays on n3, where new connections are DNATed."""
