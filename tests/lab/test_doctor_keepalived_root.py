"""doctor reads keepalived's notify_master script through /proc/PID/root (root).

In a DaemonSet, keepalived's files are in the host's mount namespace, not in
doctor's. Here a stand-in keepalived (a process named ``keepalived``) runs in
its own mount namespace, with a private tmpfs holding its config and its
notify_master script (``conntrack -D -d VIP``: mitigation 1). In doctor's own
mount namespace that directory is empty. doctor must still see the mitigation.

The process lives in a throwaway network namespace ``hpdoc-ka-*`` and ends by
itself; the finalizer stops it by pid and deletes the namespace.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hangproof.doctor.scan import ScanRequest, collect

pytestmark = pytest.mark.lab

VIP = "198.18.0.100"
LIFETIME = 60

STAND_IN = """
import ctypes, os, subprocess, sys, time
conf_dir = sys.argv[2].rsplit("/", 1)[0]
# A private tmpfs: what we write here exists only in this mount namespace.
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", conf_dir], check=True)
with open(f"{conf_dir}/notify.sh", "w") as f:
    f.write("#!/bin/sh\\nconntrack -D -d VIP_ADDR\\n")
os.chmod(f"{conf_dir}/notify.sh", 0o755)
with open(sys.argv[2], "w") as f:
    f.write(
        "vrrp_instance VI_1 {\\n  state BACKUP\\n  interface lo\\n  virtual_router_id 51\\n"
        "  priority 100\\n  virtual_ipaddress {\\n    VIP_ADDR/32\\n  }\\n"
        f"  notify_master \\"{conf_dir}/notify.sh\\"\\n}}\\n"
    )
ctypes.CDLL(None).prctl(15, b"keepalived", 0, 0, 0)  # PR_SET_NAME: look like keepalived
print("ready", flush=True)
time.sleep(LIFETIME_S)
""".replace("VIP_ADDR", VIP).replace("LIFETIME_S", str(LIFETIME))


def test_notify_master_script_is_read_through_keepalived_root() -> None:
    ns = f"hpdoc-ka-{secrets.token_hex(3)}"
    conf_dir = Path(tempfile.mkdtemp(prefix="hpdoc-ka-"))
    proc = None
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                sys.executable,
                "-c",
                STAND_IN,
                "-f",
                str(conf_dir / "keepalived.conf"),
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # doctor's own mount namespace has no such files: the old code looked here.
        assert not (conf_dir / "notify.sh").exists()
        view = collect(ScanRequest(netns=ns, stacks=False))
        (vip,) = [f for f in view.floating if f.address == VIP]
        assert "/proc/" in vip.source and vip.source.endswith("/keepalived.conf")
        assert vip.conntrack_flush_on_master is True
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        subprocess.run(["ip", "netns", "delete", ns], check=False, timeout=10)
        conf_dir.rmdir()
