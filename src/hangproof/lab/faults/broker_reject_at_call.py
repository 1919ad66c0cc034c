"""broker-reject-at-call: a firewall REJECTs the AMQP port when the call is made.

Real-world event: a security group or host firewall change, or a node drained
behind a load balancer that answers RST: the broker host is up, but every
packet to its AMQP port is answered with a TCP reset. New connects are refused
at once, open connections are reset at their next packet. Upstream reports
(the same calls as broker-down-at-call, reached through a different path):
celery#6911 / kombu#1463 (``delay()`` hangs forever, open), celery#5067
(``inspect ping`` ignores its timeout), celery#1305.

Injected as an iptables ``REJECT --reject-with tcp-reset`` rule inside the
broker's own namespace, on its client-facing interface and AMQP port (the
producer in the broker's namespace and rabbitmqctl are untouched); healed by
deleting exactly that rule. ``detail["rejected_packets"]`` is the rule's
packet counter at heal: proof that the fault was hit.
"""

from __future__ import annotations

import contextlib
import re

from hangproof.failure import FaultClass
from hangproof.lab.engine import processes
from hangproof.lab.faults import Fault, delete_rules, insert_rules

#: Marks our rule, so heal deletes exactly what inject added.
RULE_COMMENT = "hpfault-reject-at-call"


def rule_packets(listing: str, comment: str = RULE_COMMENT) -> int:
    """Packets counted by the rule marked ``comment`` in ``iptables -L -v -n -x`` output.

    >>> rule_packets("  7   420 REJECT tcp -- hpf-b0 * 0/0 0/0 tcp dpt:5672 "
    ...              "/* hpfault-reject-at-call */ reject-with tcp-reset")
    7
    >>> rule_packets("Chain INPUT (policy ACCEPT 0 packets, 0 bytes)")
    0
    """
    total = 0
    for line in listing.splitlines():
        if f"/* {comment} */" in line:
            m = re.match(r"\s*(\d+)\s+\d+", line)
            total += int(m.group(1)) if m else 0
    return total


class BrokerRejectAtCall(Fault):
    """REJECT (tcp-reset) the AMQP port on the broker's client-facing interface."""

    name = FaultClass.BROKER_REJECT_AT_CALL.value

    def __post_init__(self) -> None:
        self.injected = False
        self.detail: dict[str, object] = {}

    def _rules(self) -> list[list[str]]:
        iface, port = self.target.broker_iface, str(self.target.node.client_port)
        mark = ["-m", "comment", "--comment", RULE_COMMENT]
        reject = ["-j", "REJECT", "--reject-with", "tcp-reset"]
        return [["INPUT", "-i", iface, "-p", "tcp", "--dport", port, *mark, *reject]]

    def inject(self) -> None:
        """Insert the REJECT rule (broker namespace only)."""
        self.injected = True
        insert_rules(self.target.broker_netns, self._rules())

    def packets(self) -> int:
        """How many packets the rule has rejected so far (0 when it is absent)."""
        with contextlib.suppress(Exception):
            out = processes.run(
                ["iptables", "-w", "5", "-L", "INPUT", "-v", "-n", "-x"],
                netns=self.target.broker_netns,
                check=False,
            ).stdout
            return rule_packets(out)
        return 0

    def heal(self) -> None:
        """Read the rule's counter, then delete it (absent rules are fine: heal twice)."""
        if self.injected:
            self.detail["rejected_packets"] = self.packets()
        delete_rules(self.target.broker_netns, self._rules())
        self.injected = False
