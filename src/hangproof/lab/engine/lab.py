"""The lab engine: bring a topology up, tear it down, report its status.

>>> lab = Lab(Topology.seed())           # doctest: +SKIP
>>> lab.up(); lab.status(); lab.down()   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hangproof.errors import HangproofError, require_root, require_tools
from hangproof.lab.components import hooks, kube_proxy
from hangproof.lab.components.cookie import LAB_COOKIE_FILE, lab_cookie
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import network, processes
from hangproof.lab.engine.state import LabState, known_labs
from hangproof.lab.engine.topology import Topology

#: Where hangproof kept lab state before it moved to /run (issue 9): never acted on.
LEGACY_STATE_ROOT = Path("/var/lib/hangproof")
LAB_TOOLS = ("ip", "iptables-restore", "iptables-save", "conntrack", "ss", "epmd", "sysctl")

Progress = Callable[[str], None]


def stderr_progress(prefix: str = "lab") -> Progress:
    """Progress lines on stderr with elapsed seconds (stdout stays for --json)."""
    start = time.monotonic()

    def say(message: str) -> None:
        print(f"[{prefix} {time.monotonic() - start:5.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def quiet(_: str) -> None:
    """A progress callback that says nothing."""


def teardown(state: LabState, progress: Progress = quiet) -> list[str]:
    """Stop ``state``'s processes that are still ours, delete its marked namespaces.

    Shared by labs and fault beds (whose state has no topology). The state
    file is removed afterwards: what it listed is gone or provably not ours.
    Returns the namespaces deleted.
    """
    for p in reversed(state.processes):
        if p.alive():  # a pid that is not ours gets its own line from stop()
            progress(f"stopping {p.role} on {p.node} (pid {p.pid})")
        p.stop(grace=5.0, progress=progress)
    removed = network.destroy_namespaces(state, progress)
    # The Erlang cookies (the lab's and each node's copy) must not outlive the
    # lab; logs and data stay for a post-mortem.
    for cookie in (
        state.directory / LAB_COOKIE_FILE,
        *state.directory.glob("*/home/.erlang.cookie"),
    ):
        with contextlib.suppress(FileNotFoundError):
            cookie.unlink()
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()
    with contextlib.suppress(OSError):
        state.directory.rmdir()  # only if nothing else is in it
    return removed


class Lab:
    """One lab instance, named by its topology."""

    def __init__(self, topology: Topology, progress: Progress = quiet) -> None:
        self.topo = topology
        self.progress = progress

    # -- lookup ----------------------------------------------------------
    @classmethod
    def existing(cls, name: str = "hplab", progress: Progress = quiet) -> Lab:
        """The lab that ``lab up`` made, from its state file; clear error if none."""
        state = LabState.load(name)
        if state is None or not state.topology:
            raise HangproofError(f"lab {name!r} is not up: run `hangproof lab up` first")
        return cls(Topology.from_dict(state.topology, source=f"state of lab {name}"), progress)

    @property
    def state(self) -> LabState:
        return LabState.load(self.topo.name) or LabState(self.topo.name, self.topo.to_dict())

    # -- up ---------------------------------------------------------------
    def up(self, *, brokers: bool = True) -> LabState:
        """Build namespaces, kube-proxy rules, port holders and brokers. Idempotent."""
        require_root("hangproof lab up")
        require_tools(*LAB_TOOLS)
        existing = LabState.load(self.topo.name)
        if existing and existing.topology and self.is_up(existing):
            running = Topology.from_dict(existing.topology).kube_proxy_mode
            if running != self.topo.kube_proxy_mode:
                raise HangproofError(
                    f"lab {self.topo.name} is up with kube-proxy mode {running}, not "
                    f"{self.topo.kube_proxy_mode}: run `hangproof lab down` first"
                )
            self.progress(f"lab {self.topo.name} is already up")
            return existing
        if existing:  # half-made by a crash: clear it first
            self.down()
        state = LabState(self.topo.name, self.topo.to_dict())
        state.save()
        lab_cookie(state.directory, renew=True)  # a fresh Erlang cookie for every lab up
        try:
            network.build(self.topo, state, self.progress)
            for node in self.topo.nodes:
                self.install_kube_proxy(node.name, state)
            if brokers:
                self.start_brokers(state)
        except BaseException:
            self.progress("lab up failed; removing what was made")
            self.down()
            raise
        self.progress(f"lab {self.topo.name} is up")
        return state

    def install_kube_proxy(self, node: str, state: LabState) -> None:
        """The rules of the topology's kube-proxy mode, SYN trace counters, port holder.

        iptables modes load with ``iptables-restore``, nftables modes with
        ``nft -f``, as kube-proxy does; only ``iptables-holder`` (1.9-1.23)
        starts a port holder.
        """
        ns = self.topo.ns(node)
        mode = self.topo.kube_proxy_mode
        args = (self.topo.service, self.topo.node_port, self.topo.broker_endpoints())
        if mode == "iptables-holder":
            processes.run(["iptables-restore"], netns=ns, input=kube_proxy.nat_rules(*args))
        elif mode == "iptables":
            processes.run(["iptables-restore"], netns=ns, input=kube_proxy.nat_rules_124(*args))
        else:
            require_tools("nft")
            primary = [self.topo.node(node).address] if mode == "nftables-primary" else None
            processes.run(
                ["nft", "-f", "-"],
                netns=ns,
                input=kube_proxy.nft_rules(*args, nodeport_addresses=primary),
            )
        processes.run(
            ["iptables-restore", "--noflush"],
            netns=ns,
            input=hooks.trace_rules(self.topo.vip, self.topo.node_port, [network.UPLINK]),
        )
        if kube_proxy.has_port_holder(mode):
            self.start_port_holder(node, state)
        self.progress(f"node {node}: kube-proxy mode {mode}")

    def start_port_holder(self, node: str, state: LabState) -> int:
        ns = self.topo.ns(node)
        proc = processes.spawn(
            kube_proxy.port_holder_argv(self.topo.node_port),
            netns=ns,
            log=state.directory / f"port-holder-{node}.log",
        )
        state.track("port-holder", node, proc.pid, ns)
        # Bounded wait until it listens, so a race never starts before the holder.
        for _ in range(100):
            if self.listener_owner(node) is not None:
                break
            time.sleep(0.05)
        self.progress(
            f"node {node}: kube-proxy port holder on *:{self.topo.node_port} (pid {proc.pid})"
        )
        return proc.pid

    def stop_port_holder(self, node: str) -> None:
        state = self.state
        for p in state.find("port-holder", node):
            p.stop(grace=processes.STOP_GRACE_SECONDS, progress=self.progress)
            state.untrack(p.pid)

    def broker(self, node: str) -> RabbitNode:
        pod = self.topo.node(node)
        first = self.topo.brokers[0]
        peers = () if node == first else (f"rabbit@{self.topo.node(first).pod_address}",)
        return RabbitNode(
            name=f"{self.topo.name}-{node}",
            state_dir=self.state.directory / f"rabbitmq-{node}",
            host=pod.pod_address,
            amqp_port=self.topo.target_port,
            netns=self.topo.pod_ns(node),
            peers=peers,
            cookie=lab_cookie(self.state.directory),  # one per lab: its nodes cluster
        )

    def start_brokers(self, state: LabState) -> None:
        """Boot the brokers; with several, they form one cluster.

        The first broker boots alone; the others boot in parallel once it
        answers, and join it by classic-config peer discovery (booting all at
        once could form separate clusters: each finds no running peer).
        """
        started = time.monotonic()
        nodes = [self.broker(b) for b in self.topo.brokers]
        self._start_broker_group(state, nodes[:1])
        if len(nodes) > 1:
            self._start_broker_group(state, nodes[1:])
            status = nodes[0].cluster_status()
            self.progress(
                f"rabbitmq cluster: {len(status['running'])}/{len(status['members'])} "
                f"members running ({', '.join(status['running'])})"
            )
            if len(status["running"]) != len(nodes):
                raise HangproofError(
                    f"rabbitmq cluster formed with {status['running']}, expected "
                    f"{len(nodes)} nodes; see {state.directory}/rabbitmq-*/log"
                )
        self.progress(
            f"rabbitmq ready on {', '.join(self.topo.brokers)} "
            f"in {time.monotonic() - started:.1f} s"
        )

    def _start_broker_group(self, state: LabState, nodes: list[RabbitNode]) -> None:
        by_host = {self.topo.node(b).pod_address: b for b in self.topo.brokers}
        for rn in nodes:
            b = by_host[rn.host]
            rn.start(wait=False)
            assert rn.pid is not None and rn.epmd_pid is not None
            state.track("epmd", b, rn.epmd_pid, rn.netns)
            state.track("rabbitmq", b, rn.pid, rn.netns)
            self.progress(
                f"pod {b}: rabbitmq-server starting (pid {rn.pid}) at {rn.host}:{rn.amqp_port}"
                + (f", joining {rn.peers[0]}" if rn.peers else "")
            )
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            list(pool.map(lambda rn: rn.wait_ready(), nodes))

    def cluster(self) -> dict[str, Any]:
        """Cluster members and which run, as any running broker sees them."""
        for b in self.topo.brokers:
            rn = self.broker(b)
            try:
                return {"seen_from": b, **rn.cluster_status(timeout=15.0)}
            except (HangproofError, subprocess.TimeoutExpired):
                continue
        return {"seen_from": None, "members": [], "running": []}

    # -- down -------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop tracked processes by pid, delete the lab's namespaces. Idempotent."""
        require_root("hangproof lab down")
        state = LabState.load(self.topo.name)
        return teardown(state, self.progress) if state is not None else []

    @staticmethod
    def down_all(progress: Progress = quiet) -> list[str]:
        """``lab down --all``: every lab (and fault bed) with a state file.

        Only what a state file lists and proves ours is touched: a namespace
        merely named like a lab's, or a pid that is now another process, is
        left alone with one line saying so.
        """
        removed: list[str] = []
        for name in known_labs():
            state = LabState.load(name)
            if state is not None:
                removed += teardown(state, progress)
        legacy = sorted(p.parent.name for p in LEGACY_STATE_ROOT.glob("*/state.json"))
        if legacy:
            progress(
                f"state of an older hangproof in {LEGACY_STATE_ROOT} (labs {', '.join(legacy)}) "
                "was left alone: its pids and namespaces cannot be proven the lab's; "
                "check them by hand (`ip netns list`), then remove that directory"
            )
        return removed

    # -- status -----------------------------------------------------------
    def is_up(self, state: LabState | None = None) -> bool:
        state = state or LabState.load(self.topo.name)
        if state is None:
            return False
        present = set(network.existing_namespaces())
        return all(ns in present for ns in state.namespaces) and all(
            p.alive() for p in state.processes
        )

    def status(self) -> dict[str, Any]:
        """What exists and runs: namespaces, processes, brokers, the VIP holder."""
        state = LabState.load(self.topo.name)
        present = set(network.existing_namespaces())
        if state is None:
            return {
                "lab": self.topo.name,
                "up": False,
                "leftovers": network.leftovers(self.topo.name),
            }
        brokers = []
        for b in self.topo.brokers:
            rn = self.broker(b)
            brokers.append(
                {
                    "node": b,
                    "address": f"{rn.host}:{rn.amqp_port}",
                    "answers_amqp": rn.answers_amqp(timeout=1.0),
                }
            )
        return {
            "lab": self.topo.name,
            "up": self.is_up(state),
            "topology": self.topo.to_dict(),
            "namespaces": {ns: ns in present for ns in state.namespaces},
            "processes": [
                {"role": p.role, "node": p.node, "pid": p.pid, "alive": p.alive()}
                for p in state.processes
            ],
            "brokers": brokers,
            "cluster": self.cluster() if len(self.topo.brokers) > 1 else None,
            "vip_holders": self.vip_holders()
            if all(ns in present for ns in state.namespaces)
            else [],
        }

    # -- node-level operations used by races and faults --------------------
    def vip_holders(self) -> list[str]:
        holders = []
        for node in self.topo.nodes:
            out = processes.run(
                ["ip", "-o", "-4", "addr", "show", "dev", network.UPLINK],
                netns=self.topo.ns(node.name),
                check=False,
            ).stdout
            if f" {self.topo.vip}/" in out:
                holders.append(node.name)
        return holders

    def add_vip(self, node: str) -> None:
        processes.run(
            ["ip", "addr", "replace", f"{self.topo.vip}/32", "dev", network.UPLINK],
            netns=self.topo.ns(node),
        )

    def del_vip(self, node: str) -> None:
        processes.run(
            ["ip", "addr", "del", f"{self.topo.vip}/32", "dev", network.UPLINK],
            netns=self.topo.ns(node),
            check=False,
        )

    def mac(self, node: str) -> str:
        out = processes.run(
            ["cat", f"/sys/class/net/{network.UPLINK}/address"], netns=self.topo.ns(node)
        ).stdout
        return out.strip()

    def listener_owner(self, node: str) -> str | None:
        """Process name owning the LISTEN socket on the NodePort, if any."""
        out = processes.run(
            ["ss", "-Htlnp", f"sport = :{self.topo.node_port}"],
            netns=self.topo.ns(node),
            check=False,
        ).stdout
        from hangproof.doctor.ss_text import read_records

        for line in read_records(out):
            if line.users:
                return line.users[0].name
        return None

    def conntrack_flush_vip(self, node: str) -> None:
        processes.run(
            ["conntrack", "-D", "-d", self.topo.vip], netns=self.topo.ns(node), check=False
        )
