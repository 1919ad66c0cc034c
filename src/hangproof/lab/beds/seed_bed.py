"""The VIP faults' bed: the seed lab itself, with clients on n1 reaching the broker by the VIP.

::

    n1 (clients: workers)  --VIP:32672-->  n2 or n3 (VIP holder, DNAT + masquerade)
      |                                                   |
      +-- pod n1p (RabbitMQ, producer) <------------------+

Three node namespaces on one bridge, kube-proxy 1.9 nat rules with port
holders, VIP 198.18.0.100, NodePort 32672 -> 5672, one broker in n1's pod
(:meth:`Topology.seed`). Clients run in n1's namespace against VIP:32672; the
producer runs in the broker's pod, so VIP faults do not touch it. Addresses are
198.18.0.0/15 only, inside namespaces the lab created.

    >>> with SeedBed("hpfv") as bed:  # doctest: +SKIP
    ...     bed.client_url
    'amqp://guest:guest@198.18.0.100:32672/'

``SeedBed(tls=True)``: the NodePort forwards to the pods' TLS listener
(32672 -> 5671, certificates made at start-up), clients dial
``amqps://VIP:32672`` verified against the lab CA, and the port holder that
wedges the report's reconnect is then a TLS port that accepts and never sends
ServerHello. The brokers keep their plain listener (5672) for the producer in
the pod.
"""

from __future__ import annotations

import contextlib
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hangproof.errors import HangproofError
from hangproof.lab.components.rabbitmq import AMQPS_PORT, RabbitNode
from hangproof.lab.engine import network, processes
from hangproof.lab.engine.lab import Lab, Progress, quiet
from hangproof.lab.engine.topology import Topology
from hangproof.lab.faults import SEED_LAB, Fault, FaultTarget

PREFIX = "hpfv"
CLIENT_NODE = "n1"
#: keepalived's first VIP holder in the faults' story; the VIP moves to NEXT_HOLDER.
FIRST_HOLDER = "n2"
NEXT_HOLDER = "n3"
#: rabbitmqctl is an Erlang VM each (~100 MB): at most this many at once on 2 cores.
MAX_PARALLEL_CLOSES = 4


class _TlsLab(Lab):
    """The seed lab whose brokers also listen with TLS, on the NodePort's target port."""

    def broker(self, node: str) -> RabbitNode:
        plain = super().broker(node)
        return dataclasses.replace(plain, amqp_port=5672, tls=True, tls_port=self.topo.target_port)


class SeedBed:
    """Bring the seed lab up (one broker in n1's pod); ``close()`` tears it down."""

    def __init__(
        self, name: str = PREFIX, progress: Progress = quiet, *, tls: bool = False
    ) -> None:
        topo = Topology.seed(name)
        self.tls = tls
        if tls:
            topo = dataclasses.replace(topo, target_port=AMQPS_PORT)
        self.lab = (_TlsLab if tls else Lab)(topo, progress)
        self.client_node = CLIENT_NODE

    @property
    def node(self) -> RabbitNode:
        """The broker in n1's pod."""
        return self.lab.broker(self.lab.topo.brokers[0])

    @property
    def client_netns(self) -> str:
        return self.lab.topo.ns(self.client_node)

    @property
    def broker_netns(self) -> str:
        return self.lab.topo.pod_ns(self.lab.topo.brokers[0])

    @property
    def client_url(self) -> str:
        """What the clients dial: the VIP and the NodePort, as in the report."""
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://guest:guest@{self.lab.topo.vip}:{self.lab.topo.node_port}/"

    @property
    def client_ssl(self) -> dict[str, object] | None:
        """The clients' ``broker_use_ssl`` (the lab CA; no hostname check: the VIP), or None."""
        return self.node.client_ssl

    @property
    def producer_url(self) -> str:
        """The broker's pod address, reached from inside the pod (no VIP on the path)."""
        return self.node.url

    @property
    def target(self) -> FaultTarget:
        return FaultTarget(
            self.node, self.broker_netns, "eth0", lab=self.lab, client_node=self.client_node
        )

    def healthy(self) -> bool:
        """The broker answers AMQP (no seed-lab fault stops it; a freeze is healed by SIGCONT)."""
        return self.node.answers_amqp(5)

    def up(self) -> None:
        """Build the lab (namespaces, kube-proxy rules, port holders, broker); bounded."""
        try:
            self.lab.up()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop what the lab started (by pid) and delete its namespaces (idempotent)."""
        with contextlib.suppress(Exception):
            self.lab.down()

    def __enter__(self) -> SeedBed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pin_vip(lab: Lab, holder: str | None, client_node: str = CLIENT_NODE) -> None:
    """The VIP on ``holder`` only (or nowhere), and ``client_node`` sending it to its MAC.

    The client node's neighbour entry is permanent: it stays stale when the
    VIP leaves, as an ARP entry does until it expires, which is what sends the
    reconnecting SYN to a node that no longer answers for the VIP.
    """
    topo = lab.topo
    for n in topo.nodes:
        if n.name != holder:
            lab.del_vip(n.name)
    ns = topo.ns(client_node)
    if holder is None:
        processes.run(
            ["ip", "neigh", "del", topo.vip, "dev", network.UPLINK], netns=ns, check=False
        )
        return
    if holder != client_node:
        lab.add_vip(holder)
        processes.run(
            ["ip", "neigh", "replace", topo.vip, "lladdr", lab.mac(holder), "dev", network.UPLINK,
             "nud", "permanent"],
            netns=ns,
        )  # fmt: skip
    else:
        processes.run(
            ["ip", "neigh", "del", topo.vip, "dev", network.UPLINK], netns=ns, check=False
        )
        lab.add_vip(holder)


def reset_vip(lab: Lab, client_node: str = CLIENT_NODE) -> None:
    """VIP nowhere, no neighbour entry for it, no conntrack entries for it on any node."""
    pin_vip(lab, None, client_node)
    for n in lab.topo.nodes:
        lab.conntrack_flush_vip(n.name)


def close_client_connections(node: RabbitNode, keep_hosts: tuple[str, ...], reason: str) -> int:
    """The broker closes every connection not from ``keep_hosts`` (the producer's).

    Returns how many it closed. Done per connection, so the producer in the
    pod keeps publishing while the clients lose their links; the
    ``rabbitmqctl`` calls run in parallel (each takes ~1 s to start), so the
    clients lose their links within a fraction of a second of each other.
    """
    out = node.ctl("list_connections", "pid", "peer_host", timeout=20)
    pids = []
    for line in out.splitlines():
        pid, _, peer = line.strip().partition("\t")
        if pid.startswith("<") and peer.strip() not in keep_hosts:
            pids.append(pid)

    def close(pid: str) -> int:
        try:
            node.ctl("close_connection", pid, reason, timeout=20)
        except Exception:
            return 0
        return 1

    if not pids:
        return 0
    with ThreadPoolExecutor(max_workers=min(len(pids), MAX_PARALLEL_CLOSES)) as pool:
        return sum(pool.map(close, pids))


class SeedBedFault(Fault):
    """Base of the faults that act on the seed lab's VIP, with clients on n1.

    ``prepare()`` pins the VIP on n2, so the clients connect through n2's DNAT;
    ``close()`` leaves the VIP nowhere, with no neighbour or conntrack entry.
    """

    bed = SEED_LAB

    def __post_init__(self) -> None:
        if self.target.lab is None:
            raise HangproofError(f"{self.name} needs the seed lab (faults.seed_bed.SeedBed)")
        self.lab: Lab = self.target.lab
        #: What the fault saw or did, for the matrix's cell.
        self.detail: dict[str, Any] = {}

    def prepare(self) -> None:
        """VIP on n2, n1 sends it to n2's MAC: the clients connect through n2."""
        reset_vip(self.lab, self.target.client_node)
        pin_vip(self.lab, FIRST_HOLDER, self.target.client_node)

    def close(self) -> None:
        """VIP nowhere, neighbour entry and the VIP's conntrack entries gone."""
        reset_vip(self.lab, self.target.client_node)
