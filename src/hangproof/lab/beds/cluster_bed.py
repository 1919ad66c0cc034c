"""The cluster faults' bed: the seed lab with RabbitMQ on all three pods, one cluster.

::

    n1 (clients: workers)            n1p  rabbit@pod-n1 (producer, queue counts)
      |  dials pod addresses          n2p  rabbit@pod-n2 (the worker's first URL)
      +------------------------------ n3p  rabbit@pod-n3

What ``hangproof lab up --cluster`` builds (3 node namespaces on one bridge,
a pod behind each, pod routes between nodes), with every node configured
``cluster_partition_handling = pause_minority`` and ``net_ticktime = 10`` (the
default 60 s would make a partition take 45-75 s to be noticed; the lab keeps
cells short; everything else is RabbitMQ's default). After boot a policy
mirrors the matrix's queues (``^fm-``) on all nodes (``ha-mode: all``,
automatic sync): what a user who lists several nodes in a failover URL runs,
so the queue survives the node the worker was on.

Clients run in n1's namespace and dial the pods directly (no VIP: the
failover list names the nodes, as in celery#3921); the producer runs in n1's
pod and dials n1, which no cluster fault stops, so it keeps publishing.

Why this bed and not a second standalone broker on the testbed: the
partition fault needs three clustered nodes anyway (pause_minority on two
nodes pauses both), and a failover list over unclustered brokers strands
every message on the node that stopped. One bed, brought up once per matrix
run (~25-60 s on 2 cores), serves both.

    >>> with ClusterBed("hpfc") as bed:  # doctest: +SKIP
    ...     bed.pod_url("n2")
    'amqp://guest:guest@198.19.2.2:5672/'
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time

from hangproof.lab.beds.seed_bed import CLIENT_NODE
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine.lab import Lab, Progress, quiet
from hangproof.lab.engine.topology import Topology
from hangproof.lab.faults import FaultTarget

#: The fault_bed() kind of the cluster faults (a fault class's ``bed``).
SEED_CLUSTER = "seed-cluster"
PREFIX = "hpfc"
#: The node the worker dials first (the one the faults stop or isolate).
WORKER_NODE = "n2"
CLUSTER_CONFIG = {"cluster_partition_handling": "pause_minority", "net_ticktime": "10"}
HA_POLICY = ("hangproof-ha", "^fm-", json.dumps({"ha-mode": "all", "ha-sync-mode": "automatic"}))
#: How long a node may take to rejoin after a cell (start_app, partition heal).
REJOIN_SECONDS = 90.0


class _ClusterLab(Lab):
    """The seed lab whose brokers carry the cluster faults' settings."""

    def broker(self, node: str) -> RabbitNode:
        plain = super().broker(node)
        return dataclasses.replace(plain, extra_config={**plain.extra_config, **CLUSTER_CONFIG})


class ClusterBed:
    """Bring the 3-node cluster up with the HA policy; ``close()`` tears it down."""

    tls = False

    def __init__(self, name: str = PREFIX, progress: Progress = quiet) -> None:
        topo = Topology.seed(name)
        topo = dataclasses.replace(topo, brokers=tuple(n.name for n in topo.nodes)).validated()
        self.lab = _ClusterLab(topo, progress)
        self.client_node = CLIENT_NODE

    def broker(self, node: str) -> RabbitNode:
        """The RabbitNode on ``node``'s pod (for ctl())."""
        return self.lab.broker(node)

    def pod_url(self, node: str) -> str:
        """The plain AMQP URL of ``node``'s broker."""
        return self.broker(node).url

    @property
    def node(self) -> RabbitNode:
        """The broker in n1's pod: the producer's, and where queue counts are read."""
        return self.broker(self.lab.topo.brokers[0])

    @property
    def client_netns(self) -> str:
        return self.lab.topo.ns(self.client_node)

    @property
    def broker_netns(self) -> str:
        return self.lab.topo.pod_ns(self.lab.topo.brokers[0])

    @property
    def client_url(self) -> str:
        """The worker node's URL (the faults' configure() sets the cell's own)."""
        return self.pod_url(WORKER_NODE)

    @property
    def client_ssl(self) -> None:
        return None

    @property
    def producer_url(self) -> str:
        return self.node.url

    @property
    def target(self) -> FaultTarget:
        return FaultTarget(
            self.node, self.broker_netns, "eth0", lab=self.lab, client_node=self.client_node
        )

    def running(self) -> list[str]:
        """Running cluster members as n1 sees them (empty if it does not answer)."""
        with contextlib.suppress(Exception):
            return self.node.cluster_status(timeout=20)["running"]
        return []

    def healthy(self) -> bool:
        """All three nodes run and answer AMQP; a stopped app is started again (bounded)."""
        for name in self.lab.topo.brokers:
            rn = self.broker(name)
            if not rn.answers_amqp(3):
                with contextlib.suppress(Exception):
                    rn.ctl("start_app", timeout=60)
        return wait_cluster(self, REJOIN_SECONDS)

    def up(self) -> None:
        """Build the lab with the cluster (bounded by the brokers' timeouts), set the policy."""
        try:
            self.lab.up()
            self.node.ctl("set_policy", "--apply-to", "queues", *HA_POLICY, timeout=60)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop what the lab started (by pid) and delete its namespaces (idempotent)."""
        with contextlib.suppress(Exception):
            self.lab.down()

    def __enter__(self) -> ClusterBed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_cluster(bed: ClusterBed, bound: float) -> bool:
    """True once every node answers AMQP and n1 sees all three running (within ``bound``)."""
    names = bed.lab.topo.brokers
    deadline = time.monotonic() + bound
    for _ in range(int(bound) + 1):
        if all(bed.broker(n).answers_amqp(2) for n in names) and len(bed.running()) == len(names):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return False


def connections_by_node(lab: Lab, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """AMQP connections per cluster node from peers not in ``exclude`` ({}: no node answered).

    ``rabbitmqctl list_connections`` lists the whole cluster's connections
    from whichever node it asks, so each is attributed by its ``node`` column.
    """
    by_address = {f"rabbit@{lab.topo.node(b).pod_address}": b for b in lab.topo.brokers}
    for name in lab.topo.brokers:
        try:
            out = lab.broker(name).ctl("list_connections", "node", "peer_host", timeout=20)
        except Exception:
            continue
        counts = dict.fromkeys(lab.topo.brokers, 0)
        for line in out.splitlines():
            node, _, peer = line.strip().partition("\t")
            if node in by_address and peer.strip() not in exclude:
                counts[by_address[node]] += 1
        return counts
    return {}


def pod_address(lab: Lab, node: str) -> str:
    """``node``'s pod address (the producer's connections come from n1's)."""
    return lab.topo.node(node).pod_address
