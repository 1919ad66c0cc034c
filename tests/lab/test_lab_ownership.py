"""``lab down --all`` removes what the lab made and nothing else (issue 9, items 1-2).

Real namespaces, real processes, the real CLI. About 25 s (one broker boot).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.lab.beds.testbed import FaultBed
from hangproof.lab.engine import network, processes
from hangproof.lab.engine.state import LabState, TrackedProcess
from hangproof.lab.engine.topology import Topology

pytestmark = pytest.mark.lab

HANGPROOF = Path(sys.executable).parent / "hangproof"
LAB = "hpown"
#: Foreign namespaces with the lab's prefix: one the state file names (a name
#: reused after the lab's own was deleted), one it never heard of.
LISTED, UNLISTED = f"{LAB}-n1", f"{LAB}-zz"


def lab_down_all() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HANGPROOF), "lab", "down", "--all"],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ),  # HANGPROOF_STATE_DIR: this session's (tests/lab/conftest.py)
    )


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


@pytest.fixture
def foreign() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Namespaces and processes that are not the lab's; removed by us afterwards."""
    present = network.existing_namespaces()
    assert LISTED not in present and UNLISTED not in present, "leftover from an earlier run"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for ns in (LISTED, UNLISTED):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
            procs[ns] = subprocess.Popen(
                ["ip", "netns", "exec", ns, "sleep", "300"], start_new_session=True
            )
        # The "reused pid": a process the state file names, started by someone else.
        procs["reused"] = subprocess.Popen(["sleep", "300"], start_new_session=True)
        time.sleep(0.3)
        yield procs
    finally:
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 9)
            p.wait(timeout=10)
        for ns in (LISTED, UNLISTED):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)


def test_down_all_touches_no_foreign_namespace_or_reused_pid(
    foreign: dict[str, subprocess.Popen[bytes]],
) -> None:
    reused = foreign["reused"].pid
    state = LabState(LAB, Topology.seed(LAB).to_dict(), namespaces=[LISTED])
    # What a lab left before a reboot or pid wrap-around: its broker's pid,
    # now someone else's (another start time).
    state.processes.append(
        TrackedProcess(
            "rabbitmq", "n1", reused, start_time=start_time(reused) - 1, boot_id=processes.boot_id()
        )
    )
    state.save()

    result = lab_down_all()

    assert result.returncode == 0, result.stderr
    present = network.existing_namespaces()
    assert LISTED in present and UNLISTED in present, result.stderr
    for name, p in foreign.items():
        assert p.poll() is None, f"{name} (pid {p.pid}) was signalled: {result.stderr}"
    assert f"pid {reused}" in result.stderr and "not signalled" in result.stderr
    assert LISTED in result.stderr  # said why it was left alone


def test_down_all_cleans_a_crashed_fault_bed(tmp_path: Path) -> None:
    bed = FaultBed(tmp_path / "bed", prefix="hpfault-o")
    try:
        bed.up()
        pids = [bed.node.pid, bed.node.epmd_pid]
        assert all(p is not None and processes.pid_alive(p) for p in pids)
        # The matrix run "crashes" here: no close(). Only the state file is left.
        assert LabState.load(bed.state.name) is not None  # "hpfaulto"
        result = lab_down_all()
        assert result.returncode == 0, result.stderr
        present = network.existing_namespaces()
        assert bed.broker_netns not in present and bed.client_netns not in present
        assert not any(processes.pid_alive(p) for p in pids if p is not None), result.stderr
    finally:
        bed.close()
