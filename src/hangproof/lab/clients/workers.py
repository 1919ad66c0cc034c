"""Celery workers in the lab: one per node, plus the report's "+1", by pid.

Each worker runs the lab's Celery app (:mod:`hangproof.lab.clients.celery_app`) inside
its node's namespace and connects to VIP:NodePort, as the report's workers did.
The controller pings them from the first broker's pod namespace, straight at
the pod address, so the observer never shares the fault it observes.

    >>> fleet = WorkerFleet(lab, profile="seed")          # doctest: +SKIP
    >>> fleet.start(); fleet.ping(timeout=2.0)            # doctest: +SKIP
    ['n1@hpc', 'n1b@hpc', 'n2@hpc', 'n3@hpc']
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hangproof.credentials import mask_url
from hangproof.errors import HangproofError
from hangproof.lab.clients.celery_app import POOLS, PROFILES
from hangproof.lab.engine import processes
from hangproof.lab.engine.lab import Lab

#: The workers' broker URL setups (:attr:`WorkerFleet.urls`).
URL_SETUPS = ("vip", "nodes")
#: Seconds a ping waits for replies; a healthy lab answers in well under one.
PING_TIMEOUT = 2.0
PY_SPY_TIMEOUT = 20.0


@dataclass
class Worker:
    """A worker process: its Celery hostname, node and the pid we started."""

    name: str  # Celery hostname, e.g. "n2@hpc"
    node: str
    pid: int


@dataclass
class WorkerFleet:
    """The lab's workers for one profile; started and stopped by pid."""

    lab: Lab
    profile: str = "seed"
    celery_config: str | None = None
    ledger: Path | None = None
    extra_node: str | None = None  # where the "+1" worker runs (default: first node)
    #: The workers' broker URLs: "vip" (VIP:NodePort, the report's) or "nodes"
    #: (every node's address:NodePort as ";"-separated failover URLs, no VIP).
    urls: str = "vip"
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise HangproofError(
                f"unknown profile {self.profile!r}; choose one of: {', '.join(PROFILES)}"
            )
        if self.urls not in URL_SETUPS:
            raise HangproofError(
                f"unknown broker URL setup {self.urls!r}; choose one of: {', '.join(URL_SETUPS)}"
            )

    @property
    def vip_url(self) -> str:
        t = self.lab.topo
        return f"amqp://guest:guest@{t.vip}:{t.node_port}//"

    @property
    def nodes_url(self) -> str:
        """Every node's address at the NodePort, in node order, as Celery failover URLs."""
        t = self.lab.topo
        return ";".join(f"amqp://guest:guest@{n.address}:{t.node_port}//" for n in t.nodes)

    @property
    def broker_url(self) -> str:
        """What the workers (and the loop's producer) are given: see :attr:`urls`."""
        return self.nodes_url if self.urls == "nodes" else self.vip_url

    @property
    def observer_url(self) -> str:
        pod = self.lab.topo.node(self.lab.topo.brokers[0]).pod_address
        return f"amqp://guest:guest@{pod}:{self.lab.topo.target_port}//"

    def env(self, url: str) -> dict[str, str]:
        env = {"HANGPROOF_BROKER_URL": url, "HANGPROOF_PROFILE": self.profile}
        if self.celery_config:
            env["HANGPROOF_CELERY_CONFIG"] = self.celery_config
        if self.ledger is not None:
            env["HANGPROOF_LEDGER"] = str(self.ledger)
        return env

    def placements(self) -> list[tuple[str, str]]:
        """(celery name, node): one per node, plus the "+1" the report counted."""
        lab_name = self.lab.topo.name
        nodes = [n.name for n in self.lab.topo.nodes]
        extra = self.extra_node or nodes[0]
        return [(f"{n}@{lab_name}", n) for n in nodes] + [(f"{extra}b@{lab_name}", extra)]

    def start(self) -> list[Worker]:
        for name, node in self.placements():
            self.workers.append(self._spawn(name, node))
        return self.workers

    def _spawn(self, name: str, node: str) -> Worker:
        state = self.lab.state
        pool, concurrency = POOLS.get(self.profile, ("prefork", 1))
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "hangproof.lab.clients.celery_app",
            "worker",
            "-n",
            name,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-l",
            "INFO",
        ]
        proc = processes.spawn(
            argv,
            netns=self.lab.topo.ns(node),
            env=self.env(self.broker_url),
            log=self.log_path(name),
            cwd=state.directory,
        )
        state.track("worker", node, proc.pid, self.lab.topo.ns(node))
        self.lab.progress(f"worker {name} on {node} (pid {proc.pid}, {self.profile})")
        return Worker(name, node, proc.pid)

    def log_path(self, name: str) -> Path:
        return self.lab.state.directory / f"worker-{name.split('@')[0]}.log"

    def restart_exited(self) -> list[dict[str, Any]]:
        """Restart workers whose process exited, as Kubernetes or systemd would.

        A wedged worker is *alive*, so no supervisor restarts it: that is the
        report's whole problem. A worker that died is restarted; each restart
        is returned with the last error line of its log.
        """
        restarted = []
        for i, w in enumerate(self.workers):
            if processes.pid_alive(w.pid):
                continue
            self.lab.state.untrack(w.pid)
            processes.stop_pid(w.pid, grace=1.0)  # reap it; its group may linger
            reason = _last_error(self.log_path(w.name))
            self.workers[i] = self._spawn(w.name, w.node)
            restarted.append(
                {
                    "worker": w.name,
                    "old_pid": w.pid,
                    "new_pid": self.workers[i].pid,
                    "reason": reason,
                }
            )
        return restarted

    def stop(self) -> None:
        state = self.lab.state
        for w in self.workers:
            processes.stop_pid(w.pid, grace=5.0)
            state.untrack(w.pid)
        self.workers = []

    def ping(self, timeout: float = PING_TIMEOUT) -> list[str]:
        """Names that answered a bounded ``inspect ping`` (run in the broker's pod)."""
        try:
            out = processes.run(
                [sys.executable, "-m", "hangproof.lab.clients.celery_app", "ping", str(timeout)],
                netns=self.lab.topo.pod_ns(self.lab.topo.brokers[0]),
                env=self.env(self.observer_url),
                timeout=timeout + 30,
                check=False,
            ).stdout
        except subprocess.TimeoutExpired:
            return []
        for line in reversed(out.splitlines()):
            if line.startswith("["):
                return list(json.loads(line))
        return []

    def wait_all_answer(
        self, bound: float, *, timeout: float = PING_TIMEOUT
    ) -> tuple[list[str], float]:
        """Ping until every worker answered at least once within ``bound`` seconds.

        Returns (names never heard from, seconds waited).
        """
        start = time.monotonic()
        missing = {w.name for w in self.workers}
        for _ in range(int(bound / 0.5) + 1):
            missing -= set(self.ping(timeout))
            if not missing or time.monotonic() - start > bound:
                break
            time.sleep(0.2)
        return sorted(missing), time.monotonic() - start

    def by_name(self, name: str) -> Worker:
        return next(w for w in self.workers if w.name == name)

    def broker_sockets(self, worker: Worker) -> list[dict[str, Any]]:
        """The worker's established TCP sockets to the NodePort (ss, in its node).

        To VIP:NodePort, or to any node's address with ``urls="nodes"``.
        """
        from hangproof.lab.scenarios.race import _ss

        t = self.lab.topo
        socks = _ss(self.lab, worker.node, "dport", "=", f":{t.node_port}")
        dests = {n.address for n in t.nodes} if self.urls == "nodes" else {t.vip}
        socks = [s for s in socks if s["remote"].rpartition(":")[0] in dests]
        pids = {worker.pid, *processes.children(worker.pid)}
        return [s for s in socks if s.get("pid") in pids and s["state"] == "ESTAB"]


def _last_error(log: Path, max_bytes: int = 65536) -> str | None:
    """The last line of a worker log that names an error (bounded read)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - max_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return mask_url(line.strip())[-300:]
    return None


def python_stack(pid: int) -> str:
    """``py-spy dump`` of a process (root reads any process); empty if unavailable."""
    py_spy = Path(sys.executable).with_name("py-spy")
    argv = [str(py_spy) if py_spy.exists() else "py-spy", "dump", "--pid", str(pid)]
    try:
        result = processes.run(argv, timeout=PY_SPY_TIMEOUT, check=False)
    except (subprocess.TimeoutExpired, FileNotFoundError) as exc:
        return f"py-spy failed: {exc}"
    return mask_url(result.stdout or result.stderr)  # its header line is the argv
