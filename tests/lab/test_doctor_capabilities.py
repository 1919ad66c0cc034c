"""The DaemonSet's capabilities, measured: doctor as root with exactly
NET_ADMIN + SYS_PTRACE + DAC_READ_SEARCH sees everything, and without any one of
them it loses what deploy/doctor-daemonset.yaml says that capability is for (root).

A wedged client owned by another user (nobody) waits on a port holder in a
throwaway network namespace ``hpdoc-cap-*``; doctor runs in that namespace under
``setpriv`` with a reduced capability bounding set. Processes end by themselves
and are stopped by pid; the namespace is deleted in the finalizer.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.lab

PORT = 32672
LIFETIME = 60
#: A user other than root owns the wedged client, as Celery workers usually are.
NOBODY = "65534"
#: System python: the test's own interpreter may live where nobody cannot read.
SYSTEM_PYTHON = "/usr/bin/python3"
WEDGED = f"""
import socket, time
holder = socket.socket()
holder.bind(("127.0.0.1", {PORT}))
holder.listen(4)  # never accept(): kube-proxy's port holder
client = socket.create_connection(("127.0.0.1", {PORT}), timeout=5)
client.sendall(b"AMQP\\x00\\x00\\x09\\x01")
print("sent", flush=True)
time.sleep({LIFETIME})
"""
JUSTIFIED = ("net_admin", "sys_ptrace", "dac_read_search")


@pytest.fixture(scope="module")
def wedged_netns() -> Iterator[tuple[str, int]]:
    ns = f"hpdoc-cap-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=10)
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "setpriv",
                "--reuid",
                NOBODY,
                "--regid",
                NOBODY,
                "--clear-groups",
                SYSTEM_PYTHON,
                "-c",
                WEDGED,
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
        time.sleep(1.2)  # silence >= --min-silence 1
        yield ns, proc.pid
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        subprocess.run(["ip", "netns", "delete", ns], check=False, timeout=10)


def _doctor(ns: str, caps: tuple[str, ...]) -> dict:
    bounding = ",".join(["-all", *(f"+{c}" for c in caps)])
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "setpriv",
            f"--bounding-set={bounding}",
            "--inh-caps=-all",
            "--",
            sys.executable,
            "-m",
            "hangproof.doctor",
            "--json",
            "--min-silence",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def _client_pid(report: dict) -> int | None:
    (finding,) = [f for f in report["findings"] if f["kind"] == "handshake-unanswered"]
    return finding["pid"]


def _degraded_tools(report: dict) -> set[str]:
    return {f["evidence"]["tool"] for f in report["findings"] if f["kind"] == "doctor-degraded"}


def test_the_justified_capabilities_are_enough(wedged_netns: tuple[str, int]) -> None:
    ns, _ = wedged_netns
    report = _doctor(ns, JUSTIFIED)
    assert _client_pid(report) is not None  # the wedged process is named
    assert "conntrack" not in _degraded_tools(report)
    assert "iptables-save" not in _degraded_tools(report)
    stack = next(f for f in report["findings"] if f["kind"] == "handshake-unanswered")
    assert stack["evidence"].get("python_stack"), report["could_not_see"]


@pytest.mark.parametrize(
    ("dropped", "loses"),
    [
        ("dac_read_search", "owner"),  # /proc/PID/fd of another uid is 0500
        ("sys_ptrace", "owner"),  # readlink of those fds passes the ptrace check
        ("net_admin", "netfilter"),  # conntrack -L and iptables-save
    ],
)
def test_each_capability_is_needed(wedged_netns: tuple[str, int], dropped: str, loses: str) -> None:
    ns, _ = wedged_netns
    report = _doctor(ns, tuple(c for c in JUSTIFIED if c != dropped))
    if loses == "owner":
        assert _client_pid(report) is None, f"without {dropped} doctor still named the owner"
        # ...and says so, rather than leaving the owner silently blank.
        assert any("socket owners" in line for line in report["could_not_see"])
    else:
        assert {"conntrack", "iptables-save"} <= _degraded_tools(report)
