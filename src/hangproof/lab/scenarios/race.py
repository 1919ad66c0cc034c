"""The seed's race, on demand: a SYN in flight when the VIP lands on the client's node.

Steps (INCIDENT.md, "Reproduced deterministically"):

1. The VIP is held by another node (``n2``); the client node (``n1``) keeps a
   neighbour entry pointing at it.
2. The VIP leaves ``n2``. A client on ``n1`` connects to VIP:NodePort; its SYN
   goes to ``n2``, which no longer owns the address, and gets no answer.
3. As soon as the client's socket is observed in SYN-SENT *and* its conntrack
   entry exists un-NATed, the VIP is added on ``n1`` (trigger on state, not on
   sleeps).
4. The SYN retransmitted ~1 s later is routed to ``lo``; it belongs to the
   same conntrack entry so nat is not consulted again; it reaches INPUT with
   destination VIP:NodePort, where kube-proxy's port holder completes the
   handshake in the kernel and never reads. The client waits forever.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from hangproof.doctor.conntrack import parse_conntrack
from hangproof.doctor.ss_text import read_records, split_endpoint
from hangproof.errors import HangproofError
from hangproof.failure import RaceOutcome
from hangproof.lab.clients.race_client import CLIENTS
from hangproof.lab.components.hooks import TRACE_IN, TRACE_OUT, parse_trace_counters, seen
from hangproof.lab.engine import network, processes
from hangproof.lab.engine.lab import Lab
from hangproof.lab.mitigations import Mitigation, make_mitigation
from hangproof.lab.observe.evidence import ss_records
from hangproof.lab.observe.timeline import ConnectionWatch, race_markers
from hangproof.report.events import LANE_FAULT, LANE_VIP, EventLog

#: The raw client waits this long for Connection.Start before we call it a hang.
DEFAULT_WINDOW = 10.0
#: Library clients have their own timeouts (pika: 15 s stack timeout), so they
#: get a longer window, or a client that gives up late would be called a hang.
DEFAULT_LIBRARY_WINDOW = 30.0
#: The first SYN leaves at once; the retransmission comes ~1 s later (RFC 6298
#: initial RTO). The trigger must fire in between; we wait at most this long
#: for the SYN-SENT state (client start-up, e.g. importing kombu, included).
TRIGGER_TIMEOUT = 15.0
POLL_INTERVAL = 0.01


def default_window(client: str) -> float:
    return DEFAULT_WINDOW if client == "raw" else DEFAULT_LIBRARY_WINDOW


def run_race(
    lab: Lab,
    *,
    client: str = "raw",
    mitigation: str = "none",
    window: float | None = None,
    keep: bool = False,
    client_node: str | None = None,
    old_holder: str | None = None,
    timeline: EventLog | None = None,
) -> dict[str, Any]:
    """Run one race and return the JSON-able result (ARCHITECTURE.md contract).

    With ``timeline``, every observed step is appended to it (VIP moves, SYNs,
    hooks, conntrack, handshake bytes) with its raw evidence.
    """
    if client not in CLIENTS:
        raise HangproofError(f"unknown client {client!r}; choose one of: {', '.join(CLIENTS)}")
    fix = make_mitigation(mitigation)
    topo = lab.topo
    if len(topo.nodes) < 2:
        raise HangproofError(
            "the race needs at least two nodes (an old VIP holder and the client's)"
        )
    window = default_window(client) if window is None else window
    cn = client_node or topo.nodes[0].name
    oh = old_holder or next(n.name for n in topo.nodes if n.name != cn)
    ns = topo.ns(cn)
    vip, port = topo.vip, topo.node_port
    say = lab.progress
    state = lab.state

    reset_after_race(lab, cn)
    log = timeline if timeline is not None else EventLog(title="", scenario="race", t0=time.time())
    watch = ConnectionWatch(log, client, vip=vip, node_port=port)
    # 1. the VIP is on the old holder, and the client node learns its MAC
    log.t0 = held_from = time.time()
    lab.add_vip(oh)
    processes.run(
        [
            "ip",
            "neigh",
            "replace",
            vip,
            "lladdr",
            lab.mac(oh),
            "dev",
            network.UPLINK,
            "nud",
            "permanent",
        ],
        netns=ns,
    )
    # 2. the VIP leaves the old holder (keepalived's check failed there)
    lab.del_vip(oh)
    left_at = time.time()
    log.add(
        held_from,
        LANE_VIP,
        "vip-held",
        f"{oh} holds the VIP",
        f"ip addr replace {vip}/32 dev {network.UPLINK} (in {oh})",
        until=left_at,
    )
    log.add(
        left_at,
        LANE_FAULT,
        "inject",
        f"VIP left {oh}; {cn} still sends it to {oh}'s MAC",
        f"ip neigh replace {vip} lladdr {lab.mac(oh)} nud permanent (in {cn})",
    )
    say(f"VIP {vip} left {oh}; {cn} still sends it to {oh}'s MAC")
    undo = _apply_mitigation(lab, fix, cn)
    result_file = state.directory / f"race-{cn}-result.json"
    with contextlib.suppress(FileNotFoundError):
        result_file.unlink()

    url = f"amqp://guest:guest@{vip}:{port}/"
    watch.tick(lab, cn)  # baseline: hook counters at zero, no socket yet
    started = time.monotonic()
    proc = processes.spawn(
        [sys.executable, "-m", "hangproof.lab.clients.race_client", client, url, str(result_file)],
        netns=ns,
        log=state.directory / f"race-{cn}-client.log",
    )
    state.track("race-client", cn, proc.pid, ns)
    say(f"client {client} on {cn} (pid {proc.pid}) connects to {vip}:{port}")
    evidence: dict[str, Any] = {}
    outcome: RaceOutcome
    client_result: dict[str, Any] | None = None
    connect_seconds: float | None = None
    trigger_seconds: float | None = None
    try:
        # 3. trigger on observed state: SYN-SENT socket + un-NATed conntrack entry
        sport = wait_syn_sent(lab, cn, proc.pid)
        if sport is None:
            client_result = _read_result(result_file)
            raise HangproofError(
                f"the {client} client never reached SYN-SENT within {TRIGGER_TIMEOUT:.0f} s"
                + (f": {client_result['detail']}" if client_result else "")
                + f"; see {state.directory / f'race-{cn}-client.log'}"
            )
        watch.tick(lab, cn)  # the first SYN, its un-NATed entry, the hook that saw it
        lab.add_vip(cn)
        triggered_at = time.time()
        log.add(
            triggered_at,
            LANE_VIP,
            "vip-master",
            f"VIP added on {cn} mid-SYN",
            f"ip addr replace {vip}/32 dev {network.UPLINK} (in {cn})",
        )
        on_vip_added = fix.on_vip_added(vip)
        for argv in on_vip_added:
            processes.run(argv, netns=ns, check=False)
            log.add(time.time(), LANE_FAULT, "heal", _vip_label(argv, vip), " ".join(argv))
        trigger_seconds = time.monotonic() - started
        say(
            f"SYN-SENT from port {sport}, conntrack un-NATed: VIP added on {cn} "
            f"at {trigger_seconds:.2f} s" + (f" and {fix.vip_added_note}" if on_vip_added else "")
        )

        # 4. watch: connected? answered? until the observation window closes
        deadline = started + window
        while time.monotonic() < deadline:
            if connect_seconds is None and _client_established(lab, cn, sport):
                connect_seconds = time.monotonic() - started
                say(f"TCP connected after {connect_seconds:.2f} s")
            watch.tick(lab, cn)
            client_result = _read_result(result_file)
            if client_result is not None or not processes.pid_alive(proc.pid):
                break
            time.sleep(0.05)
        client_result = client_result or _read_result(result_file)
        watch.tick(lab, cn)
        answered_at = time.time()
        evidence = collect_evidence(lab, cn, sport)
        # A second, fresh connection while the VIP is on the client's node: does
        # VIP:NodePort serve the broker at all in this kube-proxy mode?
        evidence["fresh_connect"] = fresh_connect(lab, cn)
        if connect_seconds is None and client_result and client_result["result"] == "connected":
            # The client finished between two polls; its own clock includes start-up,
            # so this is an upper bound.
            connect_seconds = float(client_result["seconds"])
        if client_result is None:
            outcome = RaceOutcome.HANG if processes.pid_alive(proc.pid) else RaceOutcome.ERROR
        else:
            outcome = RaceOutcome(client_result["result"])
        say(f"outcome: {outcome.value}")
        log.outcome = outcome.value
        race_markers(log, watch, triggered_at, answered_at, outcome.value, client_result)
        log.add(
            triggered_at,
            LANE_VIP,
            "vip-held",
            f"{cn} holds the VIP",
            f"ip addr replace {vip}/32 dev {network.UPLINK} (in {cn})",
            until=answered_at,
        )
    finally:
        if not keep:
            processes.stop_pid(proc.pid, grace=2.0)
            state.untrack(proc.pid)
            undo()
            reset_after_race(lab, cn)
    return {
        "outcome": outcome.value,
        "client": client,
        "mitigation": mitigation,
        "kube_proxy_mode": topo.kube_proxy_mode,
        "client_node": cn,
        "old_holder": oh,
        "connect_seconds": round(connect_seconds, 3) if connect_seconds is not None else None,
        "trigger_seconds": round(trigger_seconds, 3) if trigger_seconds is not None else None,
        "window_seconds": window,
        "race_seconds": round(time.monotonic() - started, 3),
        "client_result": client_result,
        "client_pid": proc.pid if keep else None,
        "kept": keep,
        "evidence": evidence,
    }


#: A fresh AMQP connect to VIP:NodePort: "answered" (the broker's Connection.Start
#: came back), "refused" (RST), "silent" (connected, nothing came back), "timeout"
#: (no SYN-ACK), or "error: ...".
FRESH_CONNECT_CODE = r"""
import socket, sys
s = socket.socket()
s.settimeout(3.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except ConnectionRefusedError:
    print("refused"); sys.exit()
except (socket.timeout, TimeoutError):
    print("timeout"); sys.exit()
except OSError as e:
    print("error: " + (e.strerror or type(e).__name__)); sys.exit()
s.sendall(b"AMQP\x00\x00\x09\x01")
try:
    print("answered" if s.recv(8) else "closed")
except (socket.timeout, TimeoutError):
    print("silent")
except OSError as e:
    print("error: " + (e.strerror or type(e).__name__))
"""


def fresh_connect(lab: Lab, node: str) -> str:
    """How a new connection from ``node`` to VIP:NodePort fares (see FRESH_CONNECT_CODE)."""
    done = processes.run(
        [sys.executable, "-c", FRESH_CONNECT_CODE, lab.topo.vip, str(lab.topo.node_port)],
        netns=lab.topo.ns(node),
        timeout=15.0,
        check=False,
    )
    return done.stdout.strip() or f"error: exit {done.returncode}"


def reset_after_race(lab: Lab, client_node: str) -> None:
    """The VIP nowhere, no stale neighbour, no conntrack entries, counters zeroed."""
    topo = lab.topo
    for node in topo.nodes:
        lab.del_vip(node.name)
    ns = topo.ns(client_node)
    processes.run(["ip", "neigh", "del", topo.vip, "dev", network.UPLINK], netns=ns, check=False)
    for node in topo.nodes:
        lab.conntrack_flush_vip(node.name)
        for chain in (TRACE_OUT, TRACE_IN):
            processes.run(
                ["iptables", "-t", "mangle", "-Z", chain], netns=topo.ns(node.name), check=False
            )


def _apply_mitigation(lab: Lab, fix: Mitigation, node: str) -> Any:
    """Deploy a mitigation on the client node; return a function that removes it."""
    if fix.apply(lab, node):
        return lambda: fix.remove(lab, node)
    return lambda: None


def _vip_label(argv: list[str], vip: str) -> str:
    """The timeline's label of a command run on the VIP's arrival: "conntrack -D -d VIP"."""
    return " ".join("VIP" if a == vip else a for a in argv) + " (mitigation)"


def _ss(lab: Lab, node: str, *filter_args: str) -> list[dict[str, Any]]:
    out = processes.run(
        ["ss", "-Htanpie", *filter_args], netns=lab.topo.ns(node), check=False
    ).stdout
    return ss_records(out)


def wait_syn_sent(
    lab: Lab, node: str, client_pid: int | None = None, *, timeout: float = TRIGGER_TIMEOUT
) -> int | None:
    """Poll until a SYN-SENT socket to the VIP has an un-NATed conntrack entry.

    Returns the socket's source port, or None after ``timeout`` or when
    ``client_pid`` (if given) is gone. Any client in ``node``'s namespace
    counts, so a fault can trigger on a reconnecting worker's SYN.

        >>> sport = wait_syn_sent(lab, "n1", timeout=15)  # doctest: +SKIP
    """
    topo = lab.topo
    script = (
        f"ss -Htn state syn-sent dst {topo.vip} and dport = :{topo.node_port}; echo ---; "
        f"conntrack -L -p tcp -d {topo.vip} 2>/dev/null"
    )
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_INTERVAL) + 1):
        if time.monotonic() > deadline:
            return None
        if client_pid is not None and not processes.pid_alive(client_pid):
            return None
        out = processes.run(["sh", "-c", script], netns=topo.ns(node), check=False).stdout
        sockets, _, ct = out.partition("---")
        # With a state filter ss omits the State column: Recv-Q Send-Q Local Peer.
        ports = {split_endpoint(r.local)[1] for r in read_records(sockets, state="SYN-SENT")}
        for entry in parse_conntrack(ct):
            sport = entry.original.sport
            if sport in ports and entry.state == "SYN_SENT" and not entry.dnat:
                return sport
        time.sleep(POLL_INTERVAL)
    return None


#: The old private name (scenarios and tests used it).
_wait_syn_sent = wait_syn_sent


def _client_established(lab: Lab, node: str, sport: int) -> bool:
    out = processes.run(
        ["ss", "-Htn", "state", "established", f"sport = :{sport}"],
        netns=lab.topo.ns(node),
        check=False,
    ).stdout
    return bool(out.strip())


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def collect_evidence(lab: Lab, node: str, sport: int) -> dict[str, Any]:
    """The report's evidence, read live from the client node."""
    topo = lab.topo
    ns = topo.ns(node)
    client = next(
        (
            s
            for s in _ss(lab, node, f"sport = :{sport}")
            if s["remote"].endswith(f":{topo.node_port}")
        ),
        None,
    )
    peer = next(
        (
            s
            for s in _ss(lab, node, f"dport = :{sport}")
            if s["local"].endswith(f":{topo.node_port}")
        ),
        None,
    )
    ct_text = processes.run(
        ["conntrack", "-L", "-p", "tcp", "--orig-port-src", str(sport)], netns=ns, check=False
    ).stdout
    entries = [e for e in parse_conntrack(ct_text) if e.original.dst == topo.vip]
    entry = entries[0] if entries else None
    counters = parse_trace_counters(
        processes.run(["iptables-save", "-c", "-t", "mangle"], netns=ns, check=False).stdout
    )
    return {
        "client_socket": _socket_summary(client) if client else None,
        "peer_socket": (
            {**_socket_summary(peer), "unread_bytes": peer["recv_q"], "owner": peer["owner"]}
            if peer
            else None
        ),
        "listener_owner": lab.listener_owner(node),
        "conntrack": (
            {
                "dnat": entry.dnat,
                "state": entry.state,
                "reply_src": entry.reply.src,
                "entry": entry.raw,
            }
            if entry
            else None
        ),
        "hooks": seen(counters),
    }


def _socket_summary(s: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "state",
        "local",
        "remote",
        "recv_q",
        "send_q",
        "owner",
        "pid",
        "bytes_sent",
        "bytes_acked",
        "bytes_received",
        "lastrcv",
        "lastsnd",
    )
    summary = {k: s.get(k) for k in keys}
    # bytes_received is absent from tcp_info output when nothing was received.
    summary["bytes_received"] = s.get("bytes_received", 0)
    return summary
