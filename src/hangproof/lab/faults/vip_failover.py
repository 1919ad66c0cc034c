"""vip-failover: the VIP moves to another node while clients are connected.

Real-world event: keepalived fails over (the holder's check failed, or the node
went down), and the new holder sends a gratuitous ARP so the clients' node
updates its neighbour entry. The old holder's conntrack entries (its DNAT and
masquerade for the clients' connections) stay behind on the old holder; the
new holder has none. The clients' next segments reach the new holder, which
NATs them as new flows to the pod, whose kernel has no such socket and answers
with a RST; the broker's frames still come back through the old holder. A
client notices when it next sends, or when its heartbeat/watchdog says so.

Injected on the seed lab (:mod:`.seed_bed`), clients on n1: the VIP is
deleted on n2, added on n3, and n1's neighbour entry for it is replaced by
n3's MAC (what the gratuitous ARP does). No heal: the VIP stays on n3.
"""

from __future__ import annotations

from typing import Any

from hangproof.errors import HangproofError
from hangproof.lab.faults import SEED_LAB, FaultTarget
from hangproof.lab.faults.seed_bed import FIRST_HOLDER, NEXT_HOLDER, pin_vip, reset_vip

BED = SEED_LAB


class VipFailover:
    """Move the VIP from n2 to n3 under connected clients."""

    name = "vip-failover"

    def __init__(self, target: FaultTarget) -> None:
        if target.lab is None:
            raise HangproofError("vip-failover needs the seed lab (faults.seed_bed.SeedBed)")
        self.target = target
        self.lab = target.lab
        self.detail: dict[str, Any] = {}

    def prepare(self) -> None:
        """VIP on n2, n1 sends it to n2's MAC: the clients connect through n2."""
        reset_vip(self.lab, self.target.client_node)
        pin_vip(self.lab, FIRST_HOLDER, self.target.client_node)

    def inject(self) -> None:
        """VIP off n2, onto n3; n1's neighbour entry follows (gratuitous ARP)."""
        pin_vip(self.lab, NEXT_HOLDER, self.target.client_node)
        self.detail = {"from": FIRST_HOLDER, "to": NEXT_HOLDER}

    def heal(self) -> None:
        """Nothing to heal: the VIP stays on n3, where new connections are DNATed."""

    def close(self) -> None:
        """VIP nowhere, neighbour entry and the VIP's conntrack entries gone."""
        reset_vip(self.lab, self.target.client_node)


def make(target: FaultTarget) -> VipFailover:
    """The vip-failover fault for ``target`` (a seed-lab target)."""
    return VipFailover(target)
