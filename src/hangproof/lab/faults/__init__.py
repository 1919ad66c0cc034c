"""Lab faults: one module per fault class, each with ``inject()`` and ``heal()``.

Every fault acts on real kernel or process state of a lab we built (iptables in
the broker's own namespace, SIGSTOP by pid, killing the broker by pid,
rabbitmqctl alarms), never on the root namespace. Each module's docstring names
the real-world event it stands for. A fault is a :class:`Fault` subclass whose
``name`` is its :class:`~hangproof.failure.FaultClass` value (the one place a
fault's name is written); defining the class registers it, so adding a fault
touches one new module (plus its member of ``FaultClass``).

    >>> sorted(FAULTS)[:3]
    ['blackhole', 'broker-down-at-call', 'broker-freeze']
    >>> fault = make_fault("blackhole", bed.target)  # doctest: +SKIP
    >>> fault.inject(); fault.heal()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import processes

if TYPE_CHECKING:
    from hangproof.lab.engine.lab import Lab

#: Where a fault runs: the two-namespace testbed (:mod:`hangproof.lab.beds.testbed`) unless its
#: class sets ``bed = SEED_LAB`` (the seed's 3 nodes, kube-proxy rules,
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


@dataclass(eq=False, repr=False)
class Fault:
    """One fault: ``inject()`` starts the real-world event, ``heal()`` ends it.

    ``heal()`` is idempotent and safe after a failed ``inject()``, so callers
    put it in a ``finally``. A subclass declares once:

    - ``name``: its :class:`~hangproof.failure.FaultClass` value (registers it);
    - ``bed``: the bed it runs on (:data:`TESTBED` unless set);
    - ``parallel``: whether fault-matrix cells may share one injection (None:
      fault-matrix decides, see ``_fault_parallel``).

    A fault is a dataclass: its parameters are fields after ``target`` (with
    defaults, so it is built as ``cls(target)``; a variant is a subclass that
    sets a field's default, e.g. ``OneWayLossIn.direction = "in"``), and what it
    holds while injected is set in ``__post_init__``. Identity equality and the
    plain repr (a target's broker URL carries credentials) are kept. Optional
    hooks, looked up by the callers: ``prepare()``, ``configure(ctx)``,
    ``attach(ctx)``, ``close()``.

        >>> fault_type("broker-kill").__name__, fault_type("vip-race").bed
        ('BrokerKill', 'seed-lab')
        >>> from dataclasses import fields
        >>> [f.name for f in fields(fault_type("one-way-loss-in"))]
        ['target', 'direction']
    """

    target: FaultTarget
    name: ClassVar[str] = ""
    bed: ClassVar[str] = TESTBED
    parallel: ClassVar[bool | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not name or cls.__module__ == "__main__":
            return  # a base of several faults, or a fault module run as a script
        FaultClass(name)  # ValueError: every fault is a FaultClass of hangproof.failure
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"fault {name!r} is defined twice: {known!r} and {cls!r}")
        _REGISTRY[name] = cls

    def __post_init__(self) -> None:
        """Set up the fault's own state (none here); subclasses extend it."""

    def inject(self) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError


#: Fault name -> its class, filled as the fault modules are imported.
_REGISTRY: dict[str, type[Fault]] = {}
_loaded = False


def _load_all() -> dict[str, type[Fault]]:
    """Import every module of this package once, so every fault class is registered."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return _REGISTRY


class _FaultModules(Mapping[str, str]):
    """:data:`FAULTS`: fault name -> its module's name under hangproof.lab.faults.

    Derived from the registered classes (in :class:`FaultClass` order), and
    loaded on first use: importing the package imports no fault module.
    """

    def _names(self) -> dict[str, str]:
        registry = _load_all()
        return {
            fc.value: registry[fc.value].__module__.rpartition(".")[2]
            for fc in FaultClass
            if fc.value in registry
        }

    def __getitem__(self, name: str) -> str:
        return self._names()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


#: Fault name (the FaultClass value) -> module under hangproof.lab.faults.
FAULTS: Mapping[str, str] = _FaultModules()


def fault_type(name: str) -> type[Fault]:
    """The class of fault ``name``; one clear error line for an unknown name."""
    registry = _load_all()
    if name not in registry:
        raise HangproofError(
            f"unknown fault {name!r}; choose one of: {', '.join(sorted(registry))}"
        )
    return registry[name]


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
    return fault_type(name).bed


def make_fault(name: str, target: FaultTarget) -> Fault:
    """The fault called ``name`` (a :class:`FaultClass` value) aimed at ``target``."""
    return fault_type(name)(target)  # type: ignore[call-arg]
