"""Lab faults: one module per fault class, each with ``inject()`` and ``heal()``.

Every fault acts on real kernel or process state of a lab we built (iptables in
the broker's own namespace, SIGSTOP by pid, killing the broker by pid,
rabbitmqctl alarms), never on the root namespace. Each module's docstring names
the real-world event it stands for. Adding a fault touches one new module and
one line in :data:`FAULTS`.

    >>> sorted(FAULTS)[:3]
    ['blackhole', 'broker-freeze', 'broker-kill']
    >>> fault = make_fault("blackhole", bed.target)  # doctest: +SKIP
    >>> fault.inject(); fault.heal()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import processes

if TYPE_CHECKING:
    from hangproof.lab.engine.lab import Lab

#: Fault name (the FaultClass value) -> module under hangproof.lab.faults.
FAULTS: dict[str, str] = {
    FaultClass.BLACKHOLE.value: "blackhole",
    FaultClass.BROKER_FREEZE.value: "broker_freeze",
    FaultClass.BROKER_KILL.value: "broker_kill",
    FaultClass.HEAL_AFTER_HALF_OPEN.value: "heal_after_half_open",
    FaultClass.HEARTBEAT_ONLY_HANDSHAKE.value: "heartbeat_only_handshake",
    FaultClass.MEMORY_ALARM.value: "memory_alarm",
    FaultClass.SILENT_FLOW_LOSS.value: "silent_flow_loss",
    FaultClass.VIP_RACE.value: "vip_race",
    FaultClass.VIP_FAILOVER.value: "vip_failover",
    FaultClass.CLIENT_FREEZE.value: "client_freeze",
    FaultClass.CONSUMER_TIMEOUT.value: "consumer_timeout",
    FaultClass.QUEUE_DELETED.value: "queue_deleted",
    FaultClass.CONNECTION_CLOSED.value: "connection_closed",
    FaultClass.BROKER_DOWN_AT_CALL.value: "broker_down_at_call",
    FaultClass.BROKER_REJECT_AT_CALL.value: "broker_reject_at_call",
    FaultClass.DISK_ALARM.value: "disk_alarm",
    FaultClass.DNS_STALL.value: "dns_stall",
    FaultClass.URL_FAILOVER.value: "url_failover",
    FaultClass.CLUSTER_PARTITION.value: "cluster_partition",
    FaultClass.ONE_WAY_LOSS_IN.value: "one_way_loss_in",
    FaultClass.ONE_WAY_LOSS_OUT.value: "one_way_loss_out",
    FaultClass.FLOW_STATE_EXPIRY.value: "flow_state_expiry",
    FaultClass.FLOW_STATE_RST.value: "flow_state_rst",
}

#: Where a fault runs: the two-namespace testbed (:mod:`hangproof.lab.beds.testbed`) unless its
#: module sets ``BED = "seed-lab"`` (the seed's 3 nodes, kube-proxy rules,
#: port holders and VIP: :mod:`hangproof.lab.beds.seed_bed`).
TESTBED = "testbed"
SEED_LAB = "seed-lab"
#: The testbed with a router namespace between clients and broker
#: (``FaultBed(router=True)``): the middle-box faults.
TESTBED_ROUTER = "testbed-router"


@dataclass
class FaultTarget:
    """What a fault acts on: the broker node and the interface clients reach it by.

    ``broker_netns`` is a namespace the lab created; ``broker_iface`` is the
    broker's side of the link to the clients (faults on it leave the broker's
    own loopback traffic, e.g. rabbitmqctl, untouched).
    """

    node: RabbitNode
    broker_netns: str
    broker_iface: str
    #: Set for seed-lab faults: the lab whose VIP, neighbours and conntrack
    #: they act on, and the node whose namespace the clients run in.
    lab: Lab | None = None
    client_node: str = "n1"
    #: Set on the router bed (``FaultBed(router=True)``): the middle box's
    #: namespace, and the clients' address as it forwards them.
    router_netns: str | None = None
    client_ip: str | None = None


class Fault(Protocol):
    """One fault: ``inject()`` starts the real-world event, ``heal()`` ends it.

    ``heal()`` is idempotent and safe after a failed ``inject()``, so callers
    put it in a ``finally``.
    """

    name: str

    def inject(self) -> None: ...

    def heal(self) -> None: ...


@dataclass
class CellContext:
    """What a fault may know of the fault-matrix cell it runs in.

    fault-matrix builds one per cell. Before the consumer starts it calls the
    fault's optional ``configure(ctx)``, which may set ``ctx.client_url`` (e.g. a
    failover URL list or a host name) and add to ``ctx.env`` (the consumer's and
    the client-side publishes' environment). Once the consumer is ready it calls
    the optional ``attach(ctx)``; then ``ctx.worker_pid`` is the consumer's pid
    (the Celery main process for Celery profiles).
    """

    queue: str
    client_netns: str
    client_url: str
    producer_url: str
    kind: str  # "celery", "kombu" or "aio-pika"
    guarded: bool
    work: Path
    stall_timeout: float
    env: dict[str, str] = field(default_factory=dict)
    worker_pid: int | None = None


def configure_fault(fault: Fault, ctx: CellContext) -> None:
    """Let ``fault`` adjust the cell before its consumer starts (optional ``configure()``)."""
    configure = getattr(fault, "configure", None)
    if configure is not None:
        configure(ctx)


def attach_fault(fault: Fault, ctx: CellContext) -> None:
    """Tell ``fault`` about the running consumer (optional ``attach()``)."""
    attach = getattr(fault, "attach", None)
    if attach is not None:
        attach(ctx)


def insert_rules(netns: str, rules: list[list[str]]) -> None:
    """Insert iptables ``rules`` (each ``[chain, match...]``) in the lab namespace ``netns``."""
    for rule in rules:
        processes.run(["iptables", "-w", "5", "-I", *rule], netns=netns)


def delete_rules(netns: str, rules: list[list[str]]) -> None:
    """Delete ``rules`` from ``netns``, each at most once; absent rules are fine (heal twice)."""
    for rule in rules:
        with contextlib.suppress(Exception):
            processes.run(["iptables", "-w", "5", "-D", *rule], netns=netns, check=False)


def close_fault(fault: Fault) -> None:
    """Heal ``fault`` and release what it started (a fault may define ``close()``)."""
    close = getattr(fault, "close", None)
    if close is not None:
        close()
    else:
        fault.heal()


def prepare_fault(fault: Fault) -> None:
    """Set up the state a fault starts from, before clients connect (optional ``prepare()``)."""
    prepare = getattr(fault, "prepare", None)
    if prepare is not None:
        prepare()


def fault_bed(name: str) -> str:
    """:data:`TESTBED` or :data:`SEED_LAB`: which bed fault ``name`` needs.

    >>> fault_bed("blackhole"), fault_bed("vip-race")
    ('testbed', 'seed-lab')
    """
    if name not in FAULTS:
        raise HangproofError(f"unknown fault {name!r}; choose one of: {', '.join(sorted(FAULTS))}")
    module = importlib.import_module(f"hangproof.lab.faults.{FAULTS[name]}")
    return str(getattr(module, "BED", TESTBED))


def make_fault(name: str, target: FaultTarget) -> Fault:
    """The fault called ``name`` (a :class:`FaultClass` value) aimed at ``target``."""
    if name not in FAULTS:
        raise HangproofError(f"unknown fault {name!r}; choose one of: {', '.join(sorted(FAULTS))}")
    module = importlib.import_module(f"hangproof.lab.faults.{FAULTS[name]}")
    fault: Fault = module.make(target)
    return fault
