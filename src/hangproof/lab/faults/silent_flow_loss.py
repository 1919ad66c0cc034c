"""silent-flow-loss: a middle box stops forwarding the clients' *open* flows; new flows work.

Real-world event: a stateful middle box between worker and broker (a NAT
gateway, a firewall cluster or a cloud load balancer that fails over without
state sync, an ELB that forgets idle flows) loses its flow table. Packets of
the connections that were open are dropped without a RST, in both directions;
a new connection gets a fresh entry and works at once. The client notices
only by missed heartbeats, reconnects fine, and then must not block on the
old connections: a graceful close, ``basic_cancel`` or the flush of a pooled
producer on a dead flow waits for a reply (Close-Ok, Cancel-Ok) that can
never come. Upstream reports of that hazard: kombu#670 (a consumer whose
heartbeat is missed cannot stop: ``basic_cancel`` waits forever for
Cancel-Ok), celery#975 (stop/restart hangs in ``basic_cancel``), pika#764
(``channel.close()`` blocks forever), celery#1503 and celery#2236 (tasks
lost behind an ELB), py-amqp#101.

Injected on real kernel state in the broker's own namespace:

- ``prepare()`` (before any client connects) inserts two DROP rules that
  match a connection mark: ``-m connmark --mark MARK``, on the broker's
  client-facing interface, for the AMQP port, in and out. The rules match
  nothing yet, but loading connmark makes the namespace track every flow
  in conntrack from its first packet;
- ``inject()`` marks the conntrack entries of the flows that are open now
  from the clients' side (``conntrack -U --orig-src CLIENT --mark MARK``):
  from that packet on, both directions of exactly those flows are dropped;
  new flows get unmarked entries and pass;
- ``heal()`` does not bring the flows back (a middle box that forgot a flow
  never remembers it): the marked flows stay dead, new ones keep working.
  ``close()`` deletes the rules.

``detail["flows"]`` counts the conntrack entries marked: the open flows, plus
closed ones still in the table (a reused bed keeps earlier cells' entries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hangproof.failure import FaultClass
from hangproof.lab.engine import processes
from hangproof.lab.faults import Fault, delete_rules, insert_rules

#: Marks our rules, so close() deletes exactly what prepare() added.
RULE_COMMENT = "hpfault-silent-flow-loss"
#: The connection mark of a forgotten flow ("HP" in ASCII; any value unused
#: by the lab would do).
FLOW_MARK = "0x4850"
#: conntrack -U reports "N flow entries have been updated".
_UPDATED = re.compile(r"(\d+) flow entries have been updated")
#: The clients' address on the testbed (faults.testbed.CLIENT_IP).
DEFAULT_CLIENT_IP = "198.18.200.2"


@dataclass(eq=False, repr=False)
class SilentFlowLoss(Fault):
    """Drop, in both directions, the AMQP flows the clients have open; leave new ones alone."""

    name = FaultClass.SILENT_FLOW_LOSS.value
    #: The clients' address whose open flows are forgotten.
    client_ip: str = DEFAULT_CLIENT_IP

    def __post_init__(self) -> None:
        self.detail: dict[str, Any] = {}
        self._rules_in = False

    def _rules(self) -> list[list[str]]:
        iface, port = self.target.broker_iface, str(self.target.node.client_port)
        drop = ["-m", "connmark", "--mark", FLOW_MARK]
        drop += ["-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"]
        return [
            ["INPUT", "-i", iface, "-p", "tcp", "--dport", port, *drop],
            ["OUTPUT", "-o", iface, "-p", "tcp", "--sport", port, *drop],
        ]

    def prepare(self) -> None:
        """Insert the mark-matching DROP rules, so conntrack tracks flows from their start."""
        if self._rules_in:
            return
        self._rules_in = True
        insert_rules(self.target.broker_netns, self._rules())

    def inject(self) -> None:
        """Mark the clients' open AMQP flows: from now on they are silently dropped."""
        self.prepare()
        port = str(self.target.node.client_port)
        argv = ["conntrack", "-U", "-p", "tcp", "--orig-src", self.client_ip]
        argv += ["--orig-port-dst", port, "--mark", FLOW_MARK]
        result = processes.run(
            argv,
            netns=self.target.broker_netns,
            check=False,
            timeout=15,
        )
        text = f"{result.stdout}\n{result.stderr}"
        found = _UPDATED.search(text)
        self.detail = {"flows": int(found.group(1)) if found else 0, "mark": FLOW_MARK}

    def heal(self) -> None:
        """Nothing comes back: the forgotten flows stay dead (new flows always worked)."""

    def close(self) -> None:
        """Delete the rules (each at most once; absent rules are fine)."""
        delete_rules(self.target.broker_netns, self._rules())
        self._rules_in = False
