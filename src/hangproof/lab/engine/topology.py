"""The lab's declarative topology (the seed's system by default).

A :class:`Topology` is pure data: it can be printed, validated and built. The
engine in :mod:`hangproof.lab.engine.network` turns it into namespaces.

    >>> topo = Topology.seed()
    >>> [n.address for n in topo.nodes], topo.vip, topo.node_port
    (['198.18.0.1', '198.18.0.2', '198.18.0.3'], '198.18.0.100', 32672)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hangproof.errors import HangproofError

#: RFC 2544 reserves 198.18.0.0/15 for network test beds; the lab uses nothing else.
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
NODE_RANGE = ipaddress.ip_network("198.18.0.0/24")
POD_RANGE = ipaddress.ip_network("198.19.0.0/16")
#: Linux interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL);
#: "<lab>-<node>" must fit, so the lab name is short. Every lab name starts with
#: the reserved prefix "hp", so a lab's namespaces ("<lab>-...") can never be
#: named like a container runtime's ("cni-...", "docker-...").
LAB_NAME_PREFIX = "hp"
LAB_NAME_RE = re.compile(r"^hp[a-z0-9]{0,6}$")
#: Namespace name prefixes of common runtimes; named in the refusal, for a clear line.
RUNTIME_NAMES = ("cni", "docker", "containerd", "crio", "podman", "k8s", "kube", "lxc", "netns")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,3}$")
#: kube-proxy modes (hangproof.lab.components.kube_proxy.MODES), then the old names: legacy is
#: iptables-holder (1.9 with port holders), modern is iptables (>= 1.24, none).
KUBE_PROXY_MODES = (
    "legacy",
    "modern",
    "iptables-holder",
    "iptables",
    "nftables-all",
    "nftables-primary",
)


class TopologyError(HangproofError):
    """A topology file that does not describe a valid lab. Names the field."""


def check_lab_name(name: str) -> str:
    """``name`` if it is a valid lab name, else :class:`TopologyError` (one line).

    >>> check_lab_name("hplab")
    'hplab'
    """
    if any(name.startswith(r) for r in RUNTIME_NAMES):
        raise TopologyError(
            f"name: {name!r} collides with a container runtime's namespaces "
            f"({', '.join(RUNTIME_NAMES)}); lab names start with {LAB_NAME_PREFIX!r}, "
            f"e.g. {LAB_NAME_PREFIX}{name[:6]!s}"
        )
    if not LAB_NAME_RE.match(name):
        raise TopologyError(
            f"name: {name!r} must be {LAB_NAME_PREFIX!r} then up to 6 lowercase letters/digits, "
            "e.g. hplab (the prefix is reserved for the lab; interface names are limited "
            "to 15 bytes)"
        )
    return name


@dataclass(frozen=True)
class Node:
    """A Kubernetes node: a namespace on the lab bridge with one pod behind it."""

    name: str
    address: str
    pod_cidr: str

    @property
    def pod_gateway(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr)[1])

    @property
    def pod_address(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr)[2])


@dataclass(frozen=True)
class Topology:
    """The whole lab: nodes, VIP, NodePort service and where brokers run."""

    name: str = "hplab"
    nodes: tuple[Node, ...] = ()
    vip: str = "198.18.0.100"
    node_port: int = 32672
    target_port: int = 5672
    brokers: tuple[str, ...] = ("n1",)
    kube_proxy: str = "iptables-holder"
    service: str = "openstack/rabbitmq:amqp"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def seed(cls, name: str = "hplab") -> Topology:
        """The report's system: 3 nodes, VIP .100, NodePort 32672 -> 5672."""
        return cls(name=name, nodes=_seed_nodes()).validated()

    # -- naming: everything carries the lab's name as a prefix -----------
    def ns(self, node: str) -> str:
        """Namespace of a node, e.g. ``hplab-n1``."""
        return f"{self.name}-{node}"

    def pod_ns(self, node: str) -> str:
        """Namespace of the pod on a node, e.g. ``hplab-n1p``."""
        return f"{self.name}-{node}p"

    @property
    def switch_ns(self) -> str:
        """Namespace that holds the bridge all nodes plug into."""
        return f"{self.name}-sw"

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise TopologyError(f"no node named {name!r} in topology {self.name!r}")

    @property
    def kube_proxy_mode(self) -> str:
        """The kube-proxy mode with old names resolved (``legacy`` -> ``iptables-holder``)."""
        from hangproof.lab.components.kube_proxy import canonical_mode

        return canonical_mode(self.kube_proxy)

    def broker_endpoints(self) -> list[tuple[str, int]]:
        """The NodePort service's endpoints: the pods running a broker."""
        return [(self.node(b).pod_address, self.target_port) for b in self.brokers]

    # -- validation -------------------------------------------------------
    def validated(self) -> Topology:
        """Return self if valid, else raise :class:`TopologyError` naming the field."""
        check_lab_name(self.name)
        if not self.nodes:
            raise TopologyError("nodes: at least one node is needed")
        seen: set[str] = set()
        for i, n in enumerate(self.nodes):
            where = f"nodes[{i}]"
            if not NODE_NAME_RE.match(n.name):
                raise TopologyError(
                    f"{where}.name: {n.name!r} must be 1-4 lowercase letters/digits"
                )
            _in_range(f"{where}.address", n.address, NODE_RANGE)
            try:
                cidr = ipaddress.ip_network(n.pod_cidr)
            except ValueError:
                raise TopologyError(f"{where}.pod_cidr: {n.pod_cidr!r} is not a network") from None
            if not cidr.subnet_of(POD_RANGE) or cidr.prefixlen != 24:  # type: ignore[arg-type]
                raise TopologyError(
                    f"{where}.pod_cidr: {n.pod_cidr} must be a /24 inside {POD_RANGE}"
                )
            for key in (n.name, n.address, n.pod_cidr):
                if key in seen:
                    raise TopologyError(f"{where}: {key!r} is used twice")
                seen.add(key)
        _in_range("vip", self.vip, NODE_RANGE)
        if self.vip in {n.address for n in self.nodes}:
            raise TopologyError(f"vip: {self.vip} is also a node address")
        for port_name in ("node_port", "target_port"):
            port = getattr(self, port_name)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise TopologyError(f"{port_name}: {port!r} is not a TCP port")
        if not 30000 <= self.node_port <= 32767:
            raise TopologyError(f"node_port: {self.node_port} is outside Kubernetes' 30000-32767")
        names = {n.name for n in self.nodes}
        for b in self.brokers:
            if b not in names:
                raise TopologyError(
                    f"brokers: {b!r} is not a node name ({', '.join(sorted(names))})"
                )
        if not self.brokers:
            raise TopologyError("brokers: at least one node must run RabbitMQ")
        if self.kube_proxy not in KUBE_PROXY_MODES:
            raise TopologyError(
                f"kube_proxy: {self.kube_proxy!r} must be one of {', '.join(KUBE_PROXY_MODES)}"
            )
        return self

    # -- (de)serialisation ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["nodes"] = [asdict(n) for n in self.nodes]
        d["brokers"] = list(self.brokers)
        return d

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "topology") -> Topology:
        """Build and validate from parsed YAML; unknown keys are errors (typos)."""
        if not isinstance(data, dict):
            raise TopologyError(f"{source}: expected a mapping at the top level")
        known = {
            "name",
            "nodes",
            "vip",
            "node_port",
            "target_port",
            "brokers",
            "kube_proxy",
            "service",
            "extra",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise TopologyError(
                f"{source}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        kwargs: dict[str, Any] = {}
        for key in known - {"nodes", "brokers"}:
            if key in data:
                kwargs[key] = data[key]
        if "nodes" in data:
            raw_nodes = data["nodes"]
            if not isinstance(raw_nodes, list):
                raise TopologyError(f"{source}: nodes must be a list")
            nodes = []
            for i, rn in enumerate(raw_nodes):
                if not isinstance(rn, dict):
                    raise TopologyError(f"{source}: nodes[{i}] must be a mapping")
                missing = [k for k in ("name", "address", "pod_cidr") if k not in rn]
                if missing:
                    raise TopologyError(f"{source}: nodes[{i}].{missing[0]} is missing")
                extra = sorted(set(rn) - {"name", "address", "pod_cidr"})
                if extra:
                    raise TopologyError(f"{source}: nodes[{i}]: unknown field {extra[0]!r}")
                nodes.append(Node(str(rn["name"]), str(rn["address"]), str(rn["pod_cidr"])))
            kwargs["nodes"] = tuple(nodes)
        else:
            kwargs["nodes"] = _seed_nodes()
        if "brokers" in data:
            if not isinstance(data["brokers"], list):
                raise TopologyError(f"{source}: brokers must be a list of node names")
            kwargs["brokers"] = tuple(str(b) for b in data["brokers"])
        try:
            topo = cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - guarded by `known`
            raise TopologyError(f"{source}: {exc}") from None
        try:
            return topo.validated()
        except TopologyError as exc:
            raise TopologyError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> Topology:
        """Read a YAML topology file; errors name the file and the field."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise TopologyError(f"cannot read topology file {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise TopologyError(f"{path}:{where} is not valid YAML") from None
        return cls.from_dict(data, source=str(path))


def _seed_nodes() -> tuple[Node, ...]:
    return tuple(Node(f"n{i}", f"198.18.0.{i}", f"198.19.{i}.0/24") for i in (1, 2, 3))


def _in_range(field_name: str, value: str, network: ipaddress.IPv4Network) -> None:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise TopologyError(f"{field_name}: {value!r} is not an IP address") from None
    if addr not in network:
        raise TopologyError(
            f"{field_name}: {value} is outside {network} (the lab uses only 198.18.0.0/15)"
        )


@dataclass(frozen=True)
class Link:
    """A veth pair between two lab namespaces, an address on each end (a /30 by default)."""

    a_ns: str
    a_iface: str
    a_ip: str
    b_ns: str
    b_iface: str
    b_ip: str
    prefixlen: int = 30


@dataclass(frozen=True)
class Route:
    """A host route in one namespace: ``dest/32 via via``."""

    ns: str
    dest: str
    via: str


@dataclass(frozen=True)
class LinkTopology:
    """A lab of a few namespaces joined by veth links, no bridge (the faults' testbed).

    Pure data, like :class:`Topology`: :func:`hangproof.lab.engine.network.build_links`
    builds it (:func:`~hangproof.lab.engine.network.link_commands` says how).
    ``forwarding`` lists the namespaces that route between their links
    (``net.ipv4.ip_forward=1``, a per-namespace sysctl).

        >>> t = LinkTopology(("hpx-b", "hpx-c"), (Link("hpx-b", "b0", "198.18.200.1", "hpx-c", "c0", "198.18.200.2"),))
        >>> t.validated() is t
        True
    """

    namespaces: tuple[str, ...]
    links: tuple[Link, ...]
    routes: tuple[Route, ...] = ()
    forwarding: tuple[str, ...] = ()

    def validated(self) -> LinkTopology:
        """Return self if valid, else raise :class:`TopologyError` naming the field."""
        known = set(self.namespaces)
        for i, link in enumerate(self.links):
            for end in ("a", "b"):
                ns, iface = getattr(link, f"{end}_ns"), getattr(link, f"{end}_iface")
                if ns not in known:
                    raise TopologyError(f"links[{i}].{end}_ns: {ns!r} is not one of the namespaces")
                if not 1 <= len(iface.encode()) <= 15:
                    raise TopologyError(f"links[{i}].{end}_iface: {iface!r} is not 1-15 bytes")
                _in_range(f"links[{i}].{end}_ip", getattr(link, f"{end}_ip"), LAB_RANGE)
        for i, route in enumerate(self.routes):
            if route.ns not in known:
                raise TopologyError(f"routes[{i}].ns: {route.ns!r} is not one of the namespaces")
            _in_range(f"routes[{i}].dest", route.dest, LAB_RANGE)
            _in_range(f"routes[{i}].via", route.via, LAB_RANGE)
        for ns in self.forwarding:
            if ns not in known:
                raise TopologyError(f"forwarding: {ns!r} is not one of the namespaces")
        return self
