"""blackhole: a half-open link. Packets between clients and broker vanish silently.

Real-world event: a firewall/conntrack entry or a NAT gateway forgets the flow,
a cable or VM network is cut, a cloud load balancer drops an idle connection
without RST. Neither side gets a FIN or RST; an idle client waits for a frame
that never comes.

Injected as iptables DROP rules inside the broker's own namespace, on the
broker's client-facing interface, for the AMQP port in both directions (so the
broker's kernel state is real: the broker keeps the connection until its own
heartbeat timeout).
"""

from __future__ import annotations

from hangproof.failure import FaultClass
from hangproof.lab.faults import Fault, delete_rules, insert_rules

#: Marks our rules, so heal deletes exactly what inject added.
RULE_COMMENT = "hpfault-blackhole"


class Blackhole(Fault):
    """DROP the AMQP traffic on the broker's client-facing interface."""

    name = FaultClass.BLACKHOLE.value

    def __post_init__(self) -> None:
        self.injected = False

    def _rules(self) -> list[list[str]]:
        iface, port = self.target.broker_iface, str(self.target.node.client_port)
        mark = ["-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"]
        return [
            ["INPUT", "-i", iface, "-p", "tcp", "--dport", port, *mark],
            ["OUTPUT", "-o", iface, "-p", "tcp", "--sport", port, *mark],
        ]

    def inject(self) -> None:
        """Insert the DROP rules (broker namespace only)."""
        self.injected = True
        insert_rules(self.target.broker_netns, self._rules())

    def heal(self) -> None:
        """Delete the DROP rules (each at most once; absent rules are fine)."""
        delete_rules(self.target.broker_netns, self._rules())
        self.injected = False
