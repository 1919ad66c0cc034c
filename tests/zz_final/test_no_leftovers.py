"""Runs last (directories are collected in name order): nothing of the lab is left.

Every lab test cleans up in finalizers; this proves it, after the whole suite.
"""

from __future__ import annotations

import subprocess

import pytest

from hangproof.lab import processes
from hangproof.lab.state import LabState, known_labs

pytestmark = pytest.mark.lab

#: Namespace prefixes the test suite's labs and fixtures use.
TEST_PREFIXES = (
    "hpt-",
    "hpt2-",
    "hptc-",
    "hpdoc-",
    "hpbench-",
    "hpprobe-",
    "hpguard-",
    "hpfault-",
    "hpalrt-",
    "hpalv-",
    "hpfv",
)


def test_no_namespace_process_or_conntrack_entry_is_left() -> None:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = [line.split()[0] for line in out.splitlines() if line.startswith(TEST_PREFIXES)]
    assert left == [], f"namespaces left behind: {left}"
    for name in known_labs():
        state = LabState.load(name)
        assert state is not None
        alive = [p for p in state.processes if processes.pid_alive(p.pid)]
        assert alive == [], f"lab {name}: processes left running: {alive}"
    # The root namespace never carried lab traffic, so it has no lab flows.
    ct = subprocess.run(
        ["conntrack", "-L", "-s", "198.18.0.0/15"], capture_output=True, text=True, check=False
    ).stdout
    assert "src=198.1" not in ct
