"""cluster-partition: the worker's node is cut off from the rest of its cluster.

Upstream reports: openvstorage#860 (after a network partition of the RabbitMQ
cluster, Celery workers connected to the paused node stop processing and
never come back), celery#1664 (workers stop consuming after the broker node
they use goes through a partition, without an error).

Real-world event: the network between cluster nodes fails for one node (a
switch port, a security-group change) while clients still reach it. With
``cluster_partition_handling = pause_minority`` the isolated node sees it is
in the minority once the others' distribution ticks time out, pauses: it
closes its client connections and stops listening until it can see a majority
again, then resumes and resyncs. Its clients must reconnect, and keep trying
until it is back (their only URL is that node).

The lab (:mod:`hangproof.lab.beds.cluster_bed`, three clustered nodes with
``pause_minority`` and ``net_ticktime = 10``, clients on n1):

- ``configure()``: the consumer dials n2 alone (the minority node to be);
- ``inject()``: in n2's pod namespace, DROP all inter-node traffic, i.e.
  TCP to and from the distribution port (25672) and epmd (4369), both
  directions; AMQP (5672) is untouched;
- ``heal()``: the rules go; n2 sees the majority again and resumes;
- ``detail``: at heal, whether n2 was paused (not answering AMQP), the
  running members n1 saw (n2 missing), and the rule's packet counter;
- ``close()``: heal (the bed then waits until all three run again).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.beds.cluster_bed import SEED_CLUSTER, WORKER_NODE
from hangproof.lab.engine import processes
from hangproof.lab.faults import CellContext, Fault, delete_rules, insert_rules

RULE_COMMENT = "hpfault-cluster-partition"
#: Erlang distribution (RabbitMQ's inter-node port) and epmd.
CLUSTER_PORTS = ("25672", "4369")


class ClusterPartition(Fault):
    """DROP inter-node traffic to and from the worker's node."""

    name = FaultClass.CLUSTER_PARTITION.value
    bed = SEED_CLUSTER

    def __post_init__(self) -> None:
        if self.target.lab is None:
            raise HangproofError("cluster-partition needs the cluster bed (faults.cluster_bed)")
        self.lab = self.target.lab
        self.netns = self.lab.topo.pod_ns(WORKER_NODE)
        self.detail: dict[str, Any] = {}
        self.injected_at: float | None = None

    def _rules(self) -> list[list[str]]:
        mark = ["-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"]
        rules = []
        for port in CLUSTER_PORTS:
            for chain, iface in (("INPUT", "-i"), ("OUTPUT", "-o")):
                for direction in ("--dport", "--sport"):
                    rules.append([chain, iface, "eth0", "-p", "tcp", direction, port, *mark])
        return rules

    def configure(self, ctx: CellContext) -> None:
        """The consumer dials the node that will be cut off, alone."""
        ctx.client_url = self.lab.broker(WORKER_NODE).url
        ctx.env["HANGPROOF_BROKER_URL"] = ctx.client_url

    def inject(self) -> None:
        """Cut n2 off from n1 and n3 (inter-node ports only)."""
        self.injected_at = time.monotonic()
        insert_rules(self.netns, self._rules())
        self.detail["isolated"] = WORKER_NODE

    def _dropped(self) -> int:
        out = processes.run(
            ["iptables", "-w", "5", "-L", "INPUT", "-v", "-x", "-n"], netns=self.netns, check=False
        ).stdout
        return sum(
            int(line.split()[0])
            for line in out.splitlines()
            if f"/* {RULE_COMMENT} */" in line and line.split()[0].isdigit()
        )

    def heal(self) -> None:
        """Remove the rules (idempotent); n2 resumes on its own."""
        if self.injected_at is not None and "minority_paused" not in self.detail:
            with contextlib.suppress(Exception):
                self.detail["minority_paused"] = not self.lab.broker(WORKER_NODE).answers_amqp(2)
                self.detail["inter_node_packets_dropped"] = self._dropped()
                status = self.lab.broker("n1").cluster_status(timeout=20)
                self.detail["running_seen_by_n1"] = status["running"]
        delete_rules(self.netns, self._rules())

    def close(self) -> None:
        """Heal; the bed waits for the cluster to be whole again before the next cell."""
        self.heal()
