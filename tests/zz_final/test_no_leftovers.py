"""Runs last (directories are collected in name order): nothing of the lab is left.

Every lab test cleans up in finalizers; this proves it, after the whole suite.
Lab state is read where the lab keeps it (``$HANGPROOF_STATE_DIR``, default
/run/hangproof); a process counts as left only if it is still the one the lab
started (same boot id and start time), and a namespace counts as left if it has
a test prefix or carries any lab's mark (the alias on its loopback).
"""

from __future__ import annotations

import subprocess

import pytest

from hangproof.lab.engine import network
from hangproof.lab.engine.state import LabState, known_labs

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
#: What every namespace a lab made carries on its loopback (hangproof.lab.engine.network.owner_mark).
MARK = "hangproof-lab "


def test_no_namespace_process_or_conntrack_entry_is_left() -> None:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    left = [
        n
        for n in names
        if n.startswith(TEST_PREFIXES) or (network.namespace_mark(n) or "").startswith(MARK)
    ]
    assert left == [], f"namespaces left behind: {left}"
    for name in known_labs():
        state = LabState.load(name)
        assert state is not None
        alive = [p for p in state.processes if p.alive()]
        assert alive == [], f"lab {name}: processes left running: {alive}"
    # The root namespace never carried lab traffic, so it has no lab flows.
    ct = subprocess.run(
        ["conntrack", "-L", "-s", "198.18.0.0/15"], capture_output=True, text=True, check=False
    ).stdout
    assert "src=198.1" not in ct
