"""Rules: a :class:`HostView` in, findings out. Pure; no I/O.

Each rule states one thing the report's authors found by hand (ss, lsof,
conntrack, iptables LOG) as a check on recorded facts.

>>> from hangproof.doctor.model import HostView, TcpSocket, ProcessRef
>>> client = TcpSocket("ESTABLISHED", "127.0.0.1", 41440, "127.0.0.1", 32672, inode=7,
...                    bytes_acked=9, bytes_sent=8, last_data_sent_ms=9000, last_data_recv_ms=9000)
>>> peer = TcpSocket("ESTABLISHED", "127.0.0.1", 32672, "127.0.0.1", 41440, recv_q=8,
...                  bytes_received=8)
>>> holder = TcpSocket("LISTEN", "*", 32672, "0.0.0.0", 0, inode=5)
>>> view = HostView([client, peer, holder], owners={7: [ProcessRef(10, "python")],
...                                                5: [ProcessRef(3, "kube-proxy")]})
>>> [(f.kind, f.evidence["peer_owner"], f.evidence["peer_accepted"]) for f in diagnose(view)]
[('handshake-unanswered', 'kube-proxy', False)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hangproof.doctor.conntrack import find_entry
from hangproof.doctor.model import Finding, HostView, ProcessRef, TcpSocket
from hangproof.failure import Severity

HANDSHAKE_UNANSWERED = "handshake-unanswered"
NODEPORT_VIP_RACE_HAZARD = "nodeport-vip-race-hazard"
HALF_OPEN_SUSPECT = "half-open-suspect"
#: A finding about doctor itself: a tool hung, failed or a dump came back
#: partial, so this scan may have missed what it looks for.
DOCTOR_DEGRADED = "doctor-degraded"
KINDS = (HANDSHAKE_UNANSWERED, NODEPORT_VIP_RACE_HAZARD, HALF_OPEN_SUSPECT, DOCTOR_DEGRADED)

#: The AMQP 0-9-1 protocol header is 8 bytes (spec §4.2.2). A client that sent
#: a little more (a TLS ClientHello is far larger) and got nothing back is
#: still "waiting for the server to speak first"; 16 leaves room for other
#: greet-first protocols without catching clients that sent real requests.
HANDSHAKE_MAX_BYTES = 16
#: AMQP over TCP and TLS (IANA).
BROKER_PORTS = frozenset({5672, 5671})
#: RabbitMQ's default negotiated heartbeat (rabbitmq.conf `heartbeat`).
DEFAULT_HEARTBEAT_SECONDS = 60.0
#: AMQP declares a peer dead after two missed heartbeats (§4.2.7); three
#: leaves margin for a late one, so a longer silence is no longer normal.
SILENCE_HEARTBEATS = 3
#: Data unacknowledged for longer than this is not an RTT: the path is gone.
UNACKED_DATA_MS = 1000
_WILDCARDS = ("*", "0.0.0.0", "::")

REMEDY_RACE = (
    "Close the NodePort/VIP race on every node that can take the VIP, preferably with "
    "(1) in filter INPUT, reject NodePort traffic that was not DNATed: `iptables -I INPUT "
    "-p tcp --dport <NODEPORT> -m conntrack ! --ctstate DNAT -j REJECT --reject-with "
    "tcp-reset`, or (2) a kube-proxy without port holders (kubernetes PR 108496, in "
    "1.21-1.23 patch releases and later). (3) Deleting the VIP's conntrack entries from "
    "keepalived's notify_master (`conntrack -D -d <VIP>`) narrows the race but does not "
    "close it: keepalived runs the script after adding the VIP, and a SYN that lands in "
    "between still reaches the port holder (measured in the lab: 1 wedge in 12 cycles)."
)
REMEDY_CLIENT = (
    "On the clients: one deadline over the whole AMQP handshake (kombu connect_timeout, "
    "not None; `hangproof guard` enforces it), heartbeats, and TCP_USER_TIMEOUT."
)


@dataclass(frozen=True)
class RuleSettings:
    """Thresholds of the rules.

    >>> RuleSettings().min_silence
    5.0
    """

    min_silence: float = 5.0
    pid: int | None = None
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS
    broker_ports: frozenset[int] = BROKER_PORTS


def diagnose(view: HostView, settings: RuleSettings | None = None) -> list[Finding]:
    """Run every rule; findings are ordered most severe first."""
    settings = settings or RuleSettings()
    index = _SocketIndex(view.sockets)
    findings = handshake_unanswered(view, index, settings)
    flagged = {(f.local, f.remote) for f in findings}
    findings += nodeport_vip_race_hazard(view, index)
    findings += half_open_suspect(view, index, settings, flagged)
    findings += doctor_degraded(view)
    order = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return sorted(findings, key=lambda f: order[f.severity])


class _SocketIndex:
    """Lookups the rules share: listeners by port, sockets by their 4-tuple."""

    def __init__(self, sockets: Iterable[TcpSocket]) -> None:
        self.listeners: dict[int, list[TcpSocket]] = {}
        self.by_tuple: dict[tuple[str, int, str, int], TcpSocket] = {}
        for s in sockets:
            if s.state == "LISTEN":
                self.listeners.setdefault(s.local_port, []).append(s)
            else:
                self.by_tuple[(s.local_addr, s.local_port, s.remote_addr, s.remote_port)] = s

    def listener_for(self, addr: str, port: int) -> TcpSocket | None:
        """The listener that accepts connections to ``addr:port`` (exact bind first)."""
        candidates = self.listeners.get(port, [])
        for s in candidates:
            if s.local_addr == addr:
                return s
        for s in candidates:
            if s.local_addr in _WILDCARDS:
                return s
        return None

    def peer_of(self, s: TcpSocket) -> TcpSocket | None:
        """The other end of ``s`` when it lives in the same namespace."""
        return self.by_tuple.get((s.remote_addr, s.remote_port, s.local_addr, s.local_port))

    def is_server_side(self, s: TcpSocket) -> bool:
        return self.listener_for(s.local_addr, s.local_port) is not None


def _first_owner(view: HostView, inode: int) -> ProcessRef | None:
    owners = view.owners.get(inode) if inode else None
    return owners[0] if owners else None


def _owned_by(view: HostView, s: TcpSocket, pid: int | None) -> bool:
    return pid is None or any(o.pid == pid for o in view.owners.get(s.inode, []))


def handshake_unanswered(
    view: HostView, index: _SocketIndex, settings: RuleSettings
) -> list[Finding]:
    """Clients that spoke first (a protocol header) and never heard back."""
    out: list[Finding] = []
    for s in view.sockets:
        if not (
            s.state == "ESTABLISHED"
            and s.has_tcp_info
            and s.bytes_received == 0
            and s.recv_q == 0
            and 0 < s.data_bytes_sent <= HANDSHAKE_MAX_BYTES
            and s.last_data_sent_ms >= settings.min_silence * 1000
            and not index.is_server_side(s)
            and _owned_by(view, s, settings.pid)
        ):
            continue
        out.append(_handshake_finding(view, index, s))
    return out


def _handshake_finding(view: HostView, index: _SocketIndex, s: TcpSocket) -> Finding:
    owner = _first_owner(view, s.inode)
    silent = round(s.last_data_sent_ms / 1000, 1)
    evidence: dict[str, Any] = {
        "bytes_sent": s.data_bytes_sent,
        "bytes_received": s.bytes_received,
        "header_acked": s.unacked == 0,
        "inode": s.inode,
        "peer_on_this_host": False,
        "peer_unread_bytes": None,
        "peer_accepted": None,
        "peer_owner": None,
        "peer_owner_pid": None,
        "peer_listener": None,
        "dnat": None,
        "conntrack": None,
        "python_stack": None,
    }
    peer = index.peer_of(s)
    said: list[str] = []
    if peer is not None:
        listener = index.listener_for(peer.local_addr, peer.local_port)
        holder = _first_owner(view, listener.inode) if listener else None
        accepted = peer.inode != 0
        evidence.update(
            peer_on_this_host=True,
            peer_unread_bytes=peer.recv_q,
            peer_accepted=accepted,
            peer_owner=holder.name if holder else None,
            peer_owner_pid=holder.pid if holder else None,
            peer_listener=listener.local if listener else None,
            peer_process=(_first_owner(view, peer.inode) or ProcessRef(0, "")).name or None,
        )
        who = f"{holder.name}'s listener" if holder else "a listener"
        where = listener.local if listener else f"port {peer.local_port}"
        said.append(f"The connection was taken by {who} on {where}")
        if not accepted:
            said.append(
                f"the peer socket holds {peer.recv_q} unread bytes and was never accepted, "
                "so nothing will ever answer"
            )
        elif peer.recv_q:
            said.append(f"the peer process has {peer.recv_q} bytes it has not read")
    if view.conntrack is not None:
        entry = find_entry(view.conntrack, s.local_addr, s.local_port, s.remote_addr, s.remote_port)
        if entry is not None:
            evidence["dnat"] = entry.dnat
            evidence["conntrack"] = entry.raw
            if not entry.dnat:
                said.append(
                    "conntrack shows no DNAT: the connection's first SYN got a null NAT "
                    "binding (the VIP was not local yet), so later packets reached the "
                    "address as dialled instead of the broker"
                )
    who = f"pid {owner.pid} ({owner.name})" if owner else "a process we could not see"
    sent = s.data_bytes_sent
    header = " (the size of the AMQP protocol header)" if sent == 8 else ""
    summary = (
        f"{who} sent {sent} bytes{header} to {s.remote} {silent:g} s ago and has received "
        "nothing back: it is waiting for the server to speak (AMQP Connection.Start), "
        "and without a handshake deadline it waits forever."
    )
    if said:
        summary += " " + "; ".join(said) + "."
    holder_is_port_holder = evidence["peer_accepted"] is False
    remedy = "Reconnect or restart this client: no answer will come. "
    remedy += REMEDY_RACE + " " if holder_is_port_holder or evidence["dnat"] is False else ""
    remedy += REMEDY_CLIENT
    if holder_is_port_holder or evidence["dnat"] is False:
        # Without DNAT the client dialled the VIP:NodePort itself.
        remedy = remedy.replace("<NODEPORT>", str(s.remote_port))
        remedy = remedy.replace("<VIP>", s.remote_addr)
    return Finding(
        kind=HANDSHAKE_UNANSWERED,
        severity=Severity.CRITICAL if holder_is_port_holder else Severity.WARNING,
        summary=summary,
        remedy=remedy,
        pid=owner.pid if owner else None,
        process=owner.name if owner else None,
        local=s.local,
        remote=s.remote,
        silent_seconds=silent,
        evidence=evidence,
    )


def nodeport_vip_race_hazard(view: HostView, index: _SocketIndex) -> list[Finding]:
    """addrtype-LOCAL NodePort rules on a node that holds, or can take, a floating address."""
    gate = view.node_port_gate
    if gate is None or gate.local_gate is None or not view.floating:
        return []
    ports = [r.port for r in gate.node_ports]
    holders: list[dict[str, Any]] = []
    for port in ports:
        listener = index.listener_for("*", port)
        if listener is not None:
            owner = _first_owner(view, listener.inode)
            holders.append(
                {
                    "port": port,
                    "listener": listener.local,
                    "owner": owner.name if owner else None,
                    "pid": owner.pid if owner else None,
                }
            )
    unprotected = [
        p for p in ports if not gate.reject_undnat_all and p not in gate.reject_undnat_ports
    ]
    flush = bool(view.floating) and all(f.conntrack_flush_on_master for f in view.floating)
    mitigations = {
        "conntrack_flush_on_master": flush,
        "reject_undnat_ports": sorted(gate.reject_undnat_ports)
        or (["all"] if gate.reject_undnat_all else []),
        "port_holders_absent": bool(ports) and not holders,
    }
    mitigated = flush or (bool(ports) and not unprotected) or mitigations["port_holders_absent"]
    vips = ", ".join(f.address for f in view.floating)
    summary = (
        f"kube-proxy's NodePort rules are gated by `--dst-type LOCAL` on a node with a "
        f"floating address ({vips}). A client on this node whose SYN to the VIP leaves "
        "before the VIP arrives keeps a conntrack entry without NAT; its retransmitted SYN "
        "then reaches "
        + (
            "kube-proxy's port holder, which completes the handshake and never answers."
            if holders
            else "the NodePort directly instead of the broker."
        )
    )
    if mitigated:
        summary += " Mitigated here: " + ", ".join(k for k, v in mitigations.items() if v) + "."
    return [
        Finding(
            kind=NODEPORT_VIP_RACE_HAZARD,
            severity=Severity.INFO if mitigated else Severity.WARNING,
            summary=summary,
            remedy=(REMEDY_RACE + " " + REMEDY_CLIENT)
            .replace("<VIP>", view.floating[0].address)
            .replace("<NODEPORT>", str((unprotected or ports or ["<NODEPORT>"])[0])),
            evidence={
                "local_gate": gate.local_gate,
                "reached_from_output": gate.reached_from_output,
                "node_ports": [{"port": r.port, "service": r.service} for r in gate.node_ports],
                "floating_addresses": [
                    {"address": f.address, "source": f.source, "held_here": f.held_here}
                    for f in view.floating
                ],
                "port_holders": holders,
                "unprotected_ports": unprotected,
                "mitigations": mitigations,
            },
        )
    ]


def half_open_suspect(
    view: HostView,
    index: _SocketIndex,
    settings: RuleSettings,
    flagged: set[tuple[str | None, str | None]],
) -> list[Finding]:
    """Broker connections with data stuck unacknowledged, or silent far past a heartbeat."""
    ports = set(settings.broker_ports)
    if view.node_port_gate is not None:
        ports |= {r.port for r in view.node_port_gate.node_ports}
    silence_ms = settings.heartbeat * SILENCE_HEARTBEATS * 1000
    out: list[Finding] = []
    for s in view.sockets:
        if (
            s.state != "ESTABLISHED"
            or not s.has_tcp_info
            or s.remote_port not in ports
            or (s.local, s.remote) in flagged
            or index.is_server_side(s)
            or not _owned_by(view, s, settings.pid)
        ):
            continue
        owner = _first_owner(view, s.inode)
        common: dict[str, Any] = {
            "unacked_segments": s.unacked,
            "send_q": s.send_q,
            "last_data_recv_ms": s.last_data_recv_ms,
            "last_data_sent_ms": s.last_data_sent_ms,
            "last_ack_recv_ms": s.last_ack_recv_ms,
            "retransmits": s.retransmits,
            "inode": s.inode,
        }
        if (
            s.unacked > 0
            and s.last_data_sent_ms >= UNACKED_DATA_MS
            and s.last_ack_recv_ms >= settings.min_silence * 1000
        ):
            silent = round(s.last_ack_recv_ms / 1000, 1)
            summary = (
                f"{s.unacked} segment(s) to the broker at {s.remote} have been unacknowledged "
                f"for {silent:g} s: the path or the broker is gone (half-open), and the "
                "client has not noticed."
            )
            severity = Severity.WARNING
        elif s.last_data_recv_ms >= silence_ms:
            silent = round(s.last_data_recv_ms / 1000, 1)
            if s.last_data_sent_ms < silence_ms:
                summary = (
                    f"The broker at {s.remote} has sent nothing for {silent:g} s while the "
                    f"client keeps sending: far past a {settings.heartbeat:g} s heartbeat. "
                    "The broker side is frozen or the return path is lost."
                )
                severity = Severity.WARNING
            else:
                summary = (
                    f"No data either way on the broker connection to {s.remote} for "
                    f"{silent:g} s: heartbeats look disabled, so a dead broker or path "
                    "would go unnoticed."
                )
                severity = Severity.INFO
        else:
            continue
        out.append(
            Finding(
                kind=HALF_OPEN_SUSPECT,
                severity=severity,
                summary=summary,
                remedy=(
                    "Enable AMQP heartbeats and TCP_USER_TIMEOUT on the client so it drops "
                    "the connection and reconnects (`hangproof guard` sets both from one "
                    "stall_timeout). If it is stuck now, restart the client."
                ),
                pid=owner.pid if owner else None,
                process=owner.name if owner else None,
                local=s.local,
                remote=s.remote,
                silent_seconds=silent,
                evidence=common,
            )
        )
    return out


def interesting_inodes(sockets: Iterable[TcpSocket], settings: RuleSettings) -> set[int]:
    """Inodes whose owners the rules may name: listeners and established sockets.

    Mapping only these keeps the /proc walk cheap on hosts with many sockets.
    """
    return {s.inode for s in sockets if s.inode and s.state in ("LISTEN", "ESTABLISHED")}


def doctor_degraded(view: HostView) -> list[Finding]:
    """One finding per tool that failed this scan: doctor reports on itself.

    >>> from hangproof.doctor.model import ToolFailure
    >>> [f.evidence for f in doctor_degraded(HostView([], tool_failures=[ToolFailure("ss", "timed out")]))]
    [{'tool': 'ss', 'error': 'timed out'}]
    """
    return [
        Finding(
            kind=DOCTOR_DEGRADED,
            severity=failure.severity,
            summary=(
                f"doctor could not read {failure.tool} in this scan ({failure.error}), "
                "so it may have missed wedged connections or hazards."
            ),
            remedy=(
                "Check that the tool is in doctor's image and may run (root, CAP_NET_ADMIN); "
                "a timeout points at an overloaded node or a wedged netfilter. doctor keeps "
                "scanning; this finding clears when the tool answers again."
            ),
            evidence={"tool": failure.tool, "error": failure.error},
        )
        for failure in view.tool_failures
    ]
