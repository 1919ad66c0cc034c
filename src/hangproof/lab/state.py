"""The lab's state file: what ``lab up`` made, so ``lab down`` removes exactly that.

Written after every step of the build, so a crash mid-way still leaves an
accurate list. Lives in ``$HANGPROOF_STATE_DIR`` (default /var/lib/hangproof),
one directory per lab, named after the lab.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STATE_ROOT = Path("/var/lib/hangproof")


def state_root() -> Path:
    return Path(os.environ.get("HANGPROOF_STATE_DIR", str(DEFAULT_STATE_ROOT)))


@dataclass
class TrackedProcess:
    """A process the lab started, with the pid it is stopped by."""

    role: str  # "port-holder", "rabbitmq", "epmd", "keepalived", "worker", ...
    node: str
    pid: int
    netns: str | None = None


@dataclass
class LabState:
    """Everything a lab created. ``namespaces`` are deleted in reverse order."""

    name: str
    topology: dict[str, Any] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    processes: list[TrackedProcess] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return state_root() / self.name

    @property
    def path(self) -> Path:
        return self.directory / "state.json"

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
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
        procs = [TrackedProcess(**p) for p in data.pop("processes", [])]
        return cls(processes=procs, **data)

    def track(self, role: str, node: str, pid: int, netns: str | None = None) -> None:
        self.processes.append(TrackedProcess(role, node, pid, netns))
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
