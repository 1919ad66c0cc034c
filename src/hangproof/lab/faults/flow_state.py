"""flow-state-expiry / flow-state-rst: the router between clients and broker forgets flows.

Real-world event: a stateful middle box (a NAT gateway, a firewall, an AWS ELB
or NLB, a cloud load balancer) expires a flow's state when the flow is idle
longer than its timeout, and then treats the flow's next packets as strangers:
it drops them silently (most NAT gateways and firewalls: ``expiry``) or
answers with a RST (an ELB, a firewall configured to reject: ``rst``). A new
connection gets fresh state and works until it, too, is idle too long.
Neither end gets told when the state goes. Upstream reports: celery#1503 and
celery#2236 (tasks lost behind an ELB), py-amqp#101 (connection dies silently
behind a load balancer), celery#987 (a worker stops consuming after a NAT
timeout).

The lab's middle box is the router namespace of ``FaultBed(router=True)``;
every change is in that namespace only (``net.netfilter`` sysctls are per
network namespace):

- ``prepare()`` (before the clients connect) sets
  ``nf_conntrack_tcp_loose=0`` (a packet in the middle of a flow the box has no
  entry for is INVALID, not silently re-learnt, as on a real middle box) and
  inserts ``FORWARD -p tcp -m conntrack --ctstate INVALID`` -> ``DROP``
  (``expiry``) or ``REJECT --reject-with tcp-reset`` (``rst``); the rule also
  makes the namespace track every flow from its SYN;
- ``inject()`` sets ``nf_conntrack_tcp_timeout_established`` to
  :data:`EXPIRY_TIMEOUT` (0 s: shorter than any gap between two packets. The
  matrix's producer keeps the consumer's flow busy at 2 messages/s, so any
  whole-second timeout would never fire on it; a real box with a 350 s idle
  timeout does the same to a flow quiet for 350 s). Every established entry
  expires right after the packet that refreshed it, so the clients' open flows
  die with their next packet, and new flows die after their TCP handshake;
- ``heal()`` restores the previous timeout: new flows work again. The flows
  that were open stay dead (the box never re-learns a flow mid-stream).
  ``close()`` deletes the rule and restores ``nf_conntrack_tcp_loose``.

``detail["measured"]`` (filled by ``inject()`` and ``heal()``, so the matrix's
copy of ``detail`` shows it): ``entries_before`` (the clients' established
AMQP flows in the router's table just before inject), ``entries_after``
(the same a second after: a flow that carried a packet in that second has
expired; a quieter one, e.g. a Celery worker's second connection, keeps its
entry until its next packet, since the kernel applies the timeout when a
packet refreshes the entry), and at heal
``invalid_packets`` (the INVALID rule's own counter: packets dropped or
answered with a RST).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from hangproof.errors import HangproofError
from hangproof.lab.engine import processes
from hangproof.lab.faults import Fault, delete_rules, insert_rules

#: The faults need the testbed with a router namespace (``FaultBed(router=True)``).
BED = "testbed-router"
#: Marks our rules, so close() deletes exactly what prepare() added.
RULE_COMMENT = "hpfault-flow-state"
#: The established timeout while the fault is on (seconds; see the module doc).
EXPIRY_TIMEOUT = 0
TIMEOUT_SYSCTL = "net.netfilter.nf_conntrack_tcp_timeout_established"
LOOSE_SYSCTL = "net.netfilter.nf_conntrack_tcp_loose"
_PKTS = re.compile(r"^\s*(\d+)\s+\d+\s.*" + RULE_COMMENT, re.MULTILINE)


@dataclass(eq=False, repr=False)
class FlowStateLoss(Fault):
    """The router's conntrack expires the clients' flows; INVALID packets dropped or RST."""

    bed = BED
    #: "expiry" (INVALID packets dropped) or "rst" (answered with a RST).
    variant: str

    def __post_init__(self) -> None:
        variant = self.variant
        if variant not in ("expiry", "rst"):
            raise ValueError(f"variant must be 'expiry' or 'rst', not {variant!r}")
        if self.target.router_netns is None:
            raise HangproofError("flow-state faults need the router testbed (router_netns)")
        self.router: str = self.target.router_netns
        self.name = f"flow-state-{variant}"
        self.measured: dict[str, Any] = {}
        self.detail: dict[str, Any] = {"variant": variant, "measured": self.measured}
        self._saved_timeout: str | None = None
        self._saved_loose: str | None = None
        self._rules_in = False

    def _rules(self) -> list[list[str]]:
        match = ["FORWARD", "-p", "tcp", "-m", "conntrack", "--ctstate", "INVALID"]
        match += ["-m", "comment", "--comment", RULE_COMMENT]
        if self.variant == "rst":
            return [[*match, "-j", "REJECT", "--reject-with", "tcp-reset"]]
        return [[*match, "-j", "DROP"]]

    def _sysctl(self, name: str, value: str | None = None) -> str:
        argv = (
            ["sysctl", "-n", name] if value is None else ["sysctl", "-q", "-w", f"{name}={value}"]
        )
        return processes.run(argv, netns=self.router, timeout=15).stdout.strip()

    def _entries(self) -> int:
        """The clients' established AMQP flows in the router's conntrack table."""
        argv = ["conntrack", "-L", "-p", "tcp", "--state", "ESTABLISHED"]
        argv += ["--orig-port-dst", str(self.target.node.client_port)]
        if self.target.client_ip:
            argv += ["--orig-src", self.target.client_ip]
        result = processes.run(argv, netns=self.router, check=False, timeout=15)
        return sum(1 for line in result.stdout.splitlines() if line.startswith("tcp"))

    def prepare(self) -> None:
        """Insert the INVALID rule (loads conntrack here) and make mid-flow packets INVALID."""
        if self._rules_in:
            return
        self._rules_in = True
        insert_rules(self.router, self._rules())
        if self._saved_loose is None:
            self._saved_loose = self._sysctl(LOOSE_SYSCTL)
        self._sysctl(LOOSE_SYSCTL, "0")

    def inject(self) -> None:
        """Shorten the established timeout to 0 s: the open flows' state goes with their next packet."""
        self.prepare()
        self.measured["entries_before"] = self._entries()
        if self._saved_timeout is None:
            self._saved_timeout = self._sysctl(TIMEOUT_SYSCTL)
        self._sysctl(TIMEOUT_SYSCTL, str(EXPIRY_TIMEOUT))
        time.sleep(1.0)  # the consumer's flow carries a packet at least every 0.5 s
        self.measured["entries_after"] = self._entries()

    def _invalid_packets(self) -> int | None:
        result = processes.run(
            ["iptables", "-w", "5", "-L", "FORWARD", "-v", "-x", "-n"],
            netns=self.router,
            check=False,
            timeout=15,
        )
        found = _PKTS.search(result.stdout)
        return int(found.group(1)) if found else None

    def heal(self) -> None:
        """Restore the timeout: new flows keep their state again; the old ones stay dead."""
        if self._saved_timeout is not None:
            self.measured.setdefault("invalid_packets", self._invalid_packets())
            self._sysctl(TIMEOUT_SYSCTL, self._saved_timeout)
            self._saved_timeout = None

    def close(self) -> None:
        """Heal, delete the rule, restore ``nf_conntrack_tcp_loose`` (each at most once)."""
        try:
            self.heal()
        finally:
            delete_rules(self.router, self._rules())
            self._rules_in = False
            if self._saved_loose is not None:
                self._sysctl(LOOSE_SYSCTL, self._saved_loose)
                self._saved_loose = None
