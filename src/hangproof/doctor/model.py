"""What doctor sees on a host, and what it concludes: plain dataclasses, no I/O.

The parsers build these from recorded text or bytes; the rules read them and
produce :class:`Finding` objects. Nothing here touches a socket or /proc, so the
whole diagnosis is unit-testable on constructed records.

>>> s = TcpSocket("ESTABLISHED", "198.18.0.1", 40000, "198.18.0.100", 32672)
>>> s.local, s.remote
('198.18.0.1:40000', '198.18.0.100:32672')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hangproof.failure import Severity


def endpoint(addr: str, port: int) -> str:
    """``addr:port``, with IPv6 in brackets as ss prints it.

    >>> endpoint("::1", 5672), endpoint("*", 32672)
    ('[::1]:5672', '*:32672')
    """
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True, slots=True)
class TcpSocket:
    """One TCP socket with the tcp_info fields the rules need.

    Times are milliseconds ago, as the kernel reports them in ``struct
    tcp_info``. ``inode`` 0 means no file refers to the socket: for an
    ESTABLISHED socket, it still sits in its listener's accept queue.
    ``bytes_sent`` is ``None`` on kernels older than 4.19, which lack it.
    """

    state: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    recv_q: int = 0
    send_q: int = 0
    inode: int = 0
    uid: int = 0
    bytes_received: int = 0
    bytes_acked: int = 0
    bytes_sent: int | None = None
    last_data_recv_ms: int = 0
    last_data_sent_ms: int = 0
    last_ack_recv_ms: int = 0
    unacked: int = 0
    retransmits: int = 0
    has_tcp_info: bool = True

    @property
    def local(self) -> str:
        """The local end, ``addr:port``."""
        return endpoint(self.local_addr, self.local_port)

    @property
    def remote(self) -> str:
        """The remote end, ``addr:port``."""
        return endpoint(self.remote_addr, self.remote_port)

    @property
    def data_bytes_sent(self) -> int:
        """Payload bytes this end has sent.

        ``tcpi_bytes_acked`` counts the SYN as one byte, hence ``- 1`` when the
        kernel has no ``tcpi_bytes_sent``.

        >>> TcpSocket("ESTABLISHED", "a", 1, "b", 2, bytes_acked=9).data_bytes_sent
        8
        """
        if self.bytes_sent is not None:
            return self.bytes_sent
        return max(0, self.bytes_acked - 1)


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A process that holds a socket open (one of possibly several)."""

    pid: int
    name: str
    fd: int = -1


@dataclass(frozen=True, slots=True)
class ConntrackTuple:
    """One direction of a conntrack entry."""

    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """A TCP conntrack entry: the original direction and the expected reply.

    ``dnat`` is the incident's question: was the connection's destination
    rewritten? In a DNATed connection the reply comes from the rewritten
    address (the pod), not from the address the client dialled.

    >>> o = ConntrackTuple("198.18.0.1", "198.18.0.100", 40000, 32672)
    >>> ConntrackEntry(o, ConntrackTuple("198.18.0.100", "198.18.0.1", 32672, 40000)).dnat
    False
    >>> ConntrackEntry(o, ConntrackTuple("198.19.1.5", "198.18.0.1", 5672, 40000)).dnat
    True
    """

    original: ConntrackTuple
    reply: ConntrackTuple
    state: str = ""
    flags: tuple[str, ...] = ()
    raw: str = ""

    @property
    def dnat(self) -> bool:
        """True when the reply source differs from the original destination."""
        return (self.reply.src, self.reply.sport) != (self.original.dst, self.original.dport)


@dataclass(frozen=True, slots=True)
class NodePortRule:
    """One kube-proxy NodePort rule (``-A KUBE-NODEPORTS ... --dport N``)."""

    port: int
    service: str
    rule: str


@dataclass(frozen=True, slots=True)
class NodePortGate:
    """What iptables-save says about kube-proxy's NodePort path.

    ``local_gate`` is the rule that sends traffic to KUBE-NODEPORTS only when the
    destination is a local address at the time of the first packet (the
    incident's rule). ``reject_undnat_ports`` lists ports protected by mitigation
    2 (a filter INPUT reject of traffic that was not DNATed).
    """

    local_gate: str | None
    reached_from_output: bool
    node_ports: tuple[NodePortRule, ...] = ()
    reject_undnat_ports: frozenset[int] = frozenset()
    reject_undnat_all: bool = False
    #: Where the rules came from: "iptables" (iptables-save) or "nftables" (nft -j).
    source: str = "iptables"
    #: nftables ``--nodeport-addresses`` other than all: NodePorts are served only
    #: on these fixed addresses (``ip daddr @nodeport-ips``), whatever is local.
    static_addresses: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class FloatingAddress:
    """An address that can move between hosts: a VIP."""

    address: str
    source: str  # e.g. "ip addr: /32 beside 198.18.0.1/24 on eth0" or a keepalived file
    held_here: bool
    conntrack_flush_on_master: bool = False


@dataclass(frozen=True, slots=True)
class ToolFailure:
    """A tool or reader doctor depends on failed during a scan: the scan saw less.

    ``severity`` is ``warning`` when the tool hung, crashed or a dump came back
    partial (something is wrong on the node or in doctor), ``info`` when it is
    missing or refused us (the environment: not root, tool not installed).
    """

    tool: str
    error: str
    severity: Severity = Severity.WARNING


@dataclass
class HostView:
    """Everything one scan saw. ``None`` means "could not look", not "empty".

    ``could_not_see`` says, in one line each, what was hidden and why;
    ``tool_failures`` are the same events as data, for the ``doctor-degraded``
    finding. ``partial_dump`` is set when the kernel's socket dump was cut off
    or interrupted: some sockets may be missing.
    """

    sockets: list[TcpSocket]
    owners: dict[int, list[ProcessRef]] = field(default_factory=dict)
    conntrack: list[ConntrackEntry] | None = None
    node_port_gate: NodePortGate | None = None
    floating: list[FloatingAddress] = field(default_factory=list)
    netns: str | None = None
    could_not_see: list[str] = field(default_factory=list)
    tool_failures: list[ToolFailure] = field(default_factory=list)
    partial_dump: bool = False


@dataclass
class Finding:
    """One conclusion of doctor, with its evidence and what to do about it.

    The keys of :meth:`as_dict` are a contract (ARCHITECTURE.md).
    """

    kind: str
    severity: Severity
    summary: str
    remedy: str
    pid: int | None = None
    process: str | None = None
    local: str | None = None
    remote: str | None = None
    silent_seconds: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form.

        >>> Finding("k", Severity.INFO, "s", "r").as_dict()["severity"]
        'info'
        """
        out = asdict(self)
        out["severity"] = str(self.severity)
        return out

    @property
    def is_problem(self) -> bool:
        """Warning or worse: makes doctor exit 1."""
        return self.severity in (Severity.WARNING, Severity.CRITICAL)
