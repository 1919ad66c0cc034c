"""vip-race: the report's fault, at reconnect time. A reconnect SYN wedges on kube-proxy's port holder.

Real-world event: keepalived moves the VIP (its check on the old holder failed)
while the clients' connections die with the move. A client reconnects; its
first SYN goes out while the VIP is on no node, on a stale neighbour entry to
the old holder, and gets no answer. Its conntrack entry is made un-NATed (the
VIP was not local). Then the VIP lands on the client's own node; the
retransmitted SYN belongs to the same conntrack entry, is not NATed again,
and reaches kube-proxy's port holder on *:32672, whose kernel completes the
handshake and never reads (INCIDENT.md, "The root cause"). A client without a
handshake deadline waits for Connection.Start forever.

Injected on the seed lab (:mod:`hangproof.lab.beds.seed_bed`), clients on n1, VIP on n2:

1. the VIP leaves n2; n1 keeps its permanent neighbour entry to n2's MAC;
2. the broker closes the clients' connections (not the producer's), while
3. when a reconnecting SYN from n1 is in SYN-SENT with an un-NATed conntrack
   entry (:func:`hangproof.lab.scenarios.race.wait_syn_sent`), the VIP is added on n1.

There is nothing to heal: the VIP stays on n1, and a new connection is DNATed
to the pod. ``close()`` removes the VIP and flushes its conntrack entries.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hangproof.failure import FaultClass
from hangproof.lab.beds.seed_bed import (
    FIRST_HOLDER,
    SeedBedFault,
    close_client_connections,
)

#: How long we wait for a reconnecting SYN (Celery retries at once; kombu's
#: ensure_connection and aio-pika's robust reconnect within ~5 s).
TRIGGER_TIMEOUT = 20.0


class VipRace(SeedBedFault):
    """Close the clients' links while the VIP is nowhere; add it on their node mid-SYN."""

    name = FaultClass.VIP_RACE.value
    #: fault-matrix runs one cell at a time: the race is per connection, timed per cell.
    parallel = False

    def inject(self) -> None:
        """VIP leaves n2, the broker drops the clients, VIP lands on n1 mid-SYN."""
        from hangproof.lab.scenarios.race import wait_syn_sent

        self.lab.del_vip(FIRST_HOLDER)
        keep = (self.target.node.host, "127.0.0.1")  # the producer in the pod
        # Watch for the reconnect SYN while rabbitmqctl is still closing: the
        # VIP must land before the SYN's retransmissions run out of time.
        with ThreadPoolExecutor(max_workers=1) as pool:
            closing = pool.submit(close_client_connections, self.target.node, keep, "VIP moved")
            started = time.monotonic()
            sport = wait_syn_sent(self.lab, self.target.client_node, timeout=TRIGGER_TIMEOUT)
            self.lab.add_vip(self.target.client_node)
            trigger_seconds = time.monotonic() - started
            closed = closing.result(timeout=60)
        self.detail = {
            "connections_closed": closed,
            "wedged_sport": sport,
            "trigger_seconds": round(trigger_seconds, 2),
        }
        if sport is None:
            self.detail["note"] = f"no reconnecting SYN within {TRIGGER_TIMEOUT:.0f} s"

    def evidence(self) -> dict[str, Any]:
        """The report's evidence for the wedged socket (while the client still holds it).

        ``client_socket.bytes_received`` 0 means no Connection.Start ever came;
        ``peer_socket.owner`` is the port holder, ``conntrack.dnat`` False.
        """
        from hangproof.lab.scenarios.race import collect_evidence

        sport = self.detail.get("wedged_sport")
        if sport is None:
            return {}
        return collect_evidence(self.lab, self.target.client_node, int(sport))

    def heal(self) -> None:
        """Nothing to heal: the VIP is on the clients' node and new connections are DNATed."""
