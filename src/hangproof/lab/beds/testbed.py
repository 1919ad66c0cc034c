"""The faults' small topology: one broker namespace, one client namespace, one veth.

Declared as data (:func:`bed_topology`, a
:class:`~hangproof.lab.engine.topology.LinkTopology`) and built by the engine
(:func:`hangproof.lab.engine.network.build_links`), like the seed lab's
:class:`~hangproof.lab.engine.topology.Topology`.

::

    hpfault-c (clients: workers)           hpfault-b (broker: rabbitmq, producer)
    hpf-c0 198.18.200.2/30  <--- veth --->  hpf-b0 198.18.200.1/30

Addresses are in 198.18.0.0/15 (RFC 2544 benchmarking) only; nothing in the
root namespace changes. Deleting the namespaces removes the veth and both
namespaces' conntrack tables. The broker runs in its namespace, so iptables
faults act on real kernel state.

The bed keeps a lab state file like ``lab up`` does (named after the prefix
without dashes, e.g. ``hpfault``): namespaces marked as the lab's, broker and
epmd with their identity. A matrix run that crashes leaves nothing that
``hangproof lab down --all`` (or ``--name hpfault``) cannot remove.

    >>> with FaultBed(Path("/tmp/hpfault")) as bed:  # doctest: +SKIP
    ...     bed.node.url
    'amqp://guest:guest@198.18.200.1:5672/'

``FaultBed(..., router=True)``: a third namespace, a router, sits between
clients and broker (the middle-box faults: its conntrack, its FORWARD chain)::

    hpfault-c                    hpfault-r (router, ip_forward)               hpfault-b
    hpf-c0 198.18.200.6/30 <---> hpf-rc 198.18.200.5/30
                                 hpf-rb 198.18.200.2/30 <---> hpf-b0 198.18.200.1/30

The default (``router=False``) is the two-namespace bed above, unchanged.

``FaultBed(..., tls=True)``: the broker also listens with TLS (5671, lab CA),
clients dial ``amqps://`` (``client_url``, ``client_ssl``) and link faults act
on that port; the producer in the broker's namespace stays on plain 5672.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from hangproof.errors import HangproofError
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import network, processes
from hangproof.lab.engine.lab import teardown
from hangproof.lab.engine.state import LabState
from hangproof.lab.engine.topology import Link, LinkTopology, Route
from hangproof.lab.faults import FaultTarget

PREFIX = "hpfault-"
BROKER_NETNS = "hpfault-b"
CLIENT_NETNS = "hpfault-c"
BROKER_IFACE = "hpf-b0"
CLIENT_IFACE = "hpf-c0"
BROKER_IP = "198.18.200.1"
CLIENT_IP = "198.18.200.2"
#: The router bed (``FaultBed(router=True)``): router ifaces and the clients' address.
ROUTER_BROKER_IFACE = "hpf-rb"
ROUTER_CLIENT_IFACE = "hpf-rc"
ROUTER_BROKER_IP = "198.18.200.2"
ROUTER_CLIENT_IP = "198.18.200.5"
ROUTED_CLIENT_IP = "198.18.200.6"


def bed_topology(prefix: str = PREFIX, *, router: bool = False) -> LinkTopology:
    """The bed as data, for the engine to build: namespaces, veths, routes, the forwarder.

    >>> [ns for ns in bed_topology().namespaces]
    ['hpfault-b', 'hpfault-c']
    >>> [(r.ns, r.dest, r.via) for r in bed_topology(router=True).routes]
    [('hpfault-b', '198.18.200.6', '198.18.200.2'), ('hpfault-c', '198.18.200.1', '198.18.200.5')]
    """
    broker, client = f"{prefix}b", f"{prefix}c"
    if not router:
        return LinkTopology(
            namespaces=(broker, client),
            links=(Link(broker, BROKER_IFACE, BROKER_IP, client, CLIENT_IFACE, CLIENT_IP),),
        ).validated()
    middle = f"{prefix}r"
    return LinkTopology(
        namespaces=(broker, client, middle),
        links=(
            Link(broker, BROKER_IFACE, BROKER_IP, middle, ROUTER_BROKER_IFACE, ROUTER_BROKER_IP),
            Link(
                client,
                CLIENT_IFACE,
                ROUTED_CLIENT_IP,
                middle,
                ROUTER_CLIENT_IFACE,
                ROUTER_CLIENT_IP,
            ),
        ),
        routes=(
            Route(broker, ROUTED_CLIENT_IP, ROUTER_BROKER_IP),
            Route(client, BROKER_IP, ROUTER_CLIENT_IP),
        ),
        forwarding=(middle,),
    ).validated()


class FaultBed:
    """Build the two namespaces and start the broker; ``close()`` removes all of it."""

    def __init__(
        self, state_dir: Path, prefix: str = PREFIX, *, tls: bool = False, router: bool = False
    ) -> None:
        self.state_dir = Path(state_dir)
        self.broker_netns = f"{prefix}b"
        self.client_netns = f"{prefix}c"
        #: The middle box's namespace (``router=True``), else None.
        self.router_netns: str | None = f"{prefix}r" if router else None
        #: The clients' source address as the broker sees it.
        self.client_ip = ROUTED_CLIENT_IP if router else CLIENT_IP
        self.tls = tls
        #: The namespaces and links :meth:`up` has the engine build.
        self.topology = bed_topology(prefix, router=router)
        self.node = RabbitNode(
            "fault", self.state_dir / "rabbit", host=BROKER_IP, netns=self.broker_netns, tls=tls
        )
        #: The bed's lab state (``lab down`` reads it); no topology: not a Lab.
        self.state = LabState(prefix.replace("-", ""))

    @property
    def target(self) -> FaultTarget:
        """What faults act on."""
        target = FaultTarget(self.node, self.broker_netns, BROKER_IFACE)
        if self.router_netns is not None:
            target.router_netns = self.router_netns
            target.client_ip = self.client_ip
        return target

    @property
    def client_url(self) -> str:
        """What the clients dial (the broker across the veth; amqps:// with ``tls``)."""
        return self.node.client_url

    @property
    def client_ssl(self) -> dict[str, object] | None:
        """The clients' ``broker_use_ssl`` (the lab CA), None without TLS."""
        return self.node.client_ssl

    @property
    def producer_url(self) -> str:
        """What the producer in the broker's namespace dials."""
        return self.node.url

    def healthy(self) -> bool:
        """The broker runs and answers AMQP; if not, it is restarted (a cell killed it)."""
        if processes.pid_alive(self.node.pid or -1) and self.node.answers_amqp(5):
            return True
        self._stop_broker()
        self._start_broker()
        return self.node.answers_amqp(5)

    def _start_broker(self) -> None:
        try:
            self.node.start(timeout=120)
        finally:  # tracked even if it never answered: close() or lab down stops it
            for role, pid in (("epmd", self.node.epmd_pid), ("rabbitmq", self.node.pid)):
                if pid is not None:
                    self.state.track(role, "broker", pid, self.broker_netns)

    def _stop_broker(self) -> None:
        pids = [self.node.pid, self.node.epmd_pid]
        self.node.stop()
        for pid in pids:
            if pid is not None:
                self.state.untrack(pid)

    def up(self) -> None:
        """Create namespaces and link, then start the broker (bounded by its timeout)."""
        existing = network.existing_namespaces()
        ours = [self.broker_netns, self.client_netns, self.router_netns]
        if any(ns in existing for ns in ours if ns):
            raise HangproofError(
                f"{self.broker_netns}/{self.client_netns} already exist (another fault run, "
                f"or a crashed one: `hangproof lab down --name {self.state.name}` removes it)"
            )
        if LabState.load(self.state.name) is not None:
            raise HangproofError(
                f"fault bed {self.state.name} has a state file (another fault run?); "
                f"`hangproof lab down --name {self.state.name}` removes it"
            )
        self.state.save()
        try:
            network.build_links(self.topology, self.state)
            self._start_broker()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the broker by pid, then delete our namespaces (idempotent)."""
        with contextlib.suppress(Exception):
            self._stop_broker()
        state = LabState.load(self.state.name)
        if state is not None and state.owner_token == self.state.owner_token:
            teardown(state)

    def __enter__(self) -> FaultBed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
