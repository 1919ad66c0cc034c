"""The lab's state file: what ``lab up`` made, so ``lab down`` removes exactly that.

Written after every step of the build, so a crash mid-way still leaves an
accurate list. Lives in ``$HANGPROOF_STATE_DIR`` (default /run/hangproof,
which a reboot clears: a state file never outlives the processes and
namespaces it names), one directory per lab, named after the lab.

Each process is recorded with its identity (boot id, start time, spawn
token), and each namespace carries the lab's random ``owner_token`` as a mark,
so ``lab down`` acts only on what is provably still the lab's
(:mod:`hangproof.lab.engine.processes`, :func:`hangproof.lab.engine.network.owned`).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hangproof.lab.engine import processes

DEFAULT_STATE_ROOT = Path("/run/hangproof")


def state_root() -> Path:
    return Path(os.environ.get("HANGPROOF_STATE_DIR", str(DEFAULT_STATE_ROOT)))


@dataclass
class TrackedProcess:
    """A process the lab started, with the pid it is stopped by."""

    role: str  # "port-holder", "rabbitmq", "epmd", "keepalived", "worker", ...
    node: str
    pid: int
    netns: str | None = None
    #: Identity: field 22 of /proc/PID/stat and the boot id when it was tracked.
    start_time: int | None = None
    boot_id: str | None = None
    #: The spawn token in its environment (inherited by its children).
    token: str | None = None

    def stop(self, grace: float, progress: Callable[[str], None]) -> bool:
        """Stop it if it is still the process we started; else say why, in one line."""
        return processes.stop_if_ours(
            self.pid,
            start_time=self.start_time,
            boot_id=self.boot_id,
            token=self.token,
            grace=grace,
            progress=lambda why: progress(f"{self.role} on {self.node}: {why}"),
        )

    def alive(self) -> bool:
        """Running, and still the process we started (not a reused pid)."""
        return processes.pid_alive(self.pid) and (
            processes.is_ours(self.pid, start_time=self.start_time, boot_id=self.boot_id) is None
        )


@dataclass
class LabState:
    """Everything a lab created. ``namespaces`` are deleted in reverse order."""

    name: str
    topology: dict[str, Any] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    processes: list[TrackedProcess] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    #: Random; the mark on the lab's namespaces (hangproof.lab.engine.network.owner_mark).
    owner_token: str = field(default_factory=lambda: secrets.token_hex(8))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return state_root() / self.name

    @property
    def path(self) -> Path:
        return self.directory / "state.json"

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)  # atomic: a crash never leaves half a file

    @classmethod
    def load(cls, name: str) -> LabState | None:
        path = state_root() / name / "state.json"
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        known = {f.name for f in fields(TrackedProcess)}
        procs = [
            TrackedProcess(**{k: v for k, v in p.items() if k in known})
            for p in data.pop("processes", [])
        ]
        mine = {f.name for f in fields(cls)}
        return cls(processes=procs, **{k: v for k, v in data.items() if k in mine})

    def track(self, role: str, node: str, pid: int, netns: str | None = None) -> None:
        """Record ``pid`` (just spawned by us, so not yet reaped: it is ours) with its identity."""
        self.processes.append(
            TrackedProcess(
                role,
                node,
                pid,
                netns,
                start_time=processes.start_time(pid),
                boot_id=processes.boot_id(),
                token=processes.spawn_token(pid),
            )
        )
        self.save()

    def untrack(self, pid: int) -> None:
        self.processes = [p for p in self.processes if p.pid != pid]
        self.save()

    def find(self, role: str, node: str | None = None) -> list[TrackedProcess]:
        return [p for p in self.processes if p.role == role and (node is None or p.node == node)]


def known_labs() -> list[str]:
    """Names of labs that have a state directory."""
    root = state_root()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/state.json"))
