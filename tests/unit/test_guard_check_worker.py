"""check-worker returns within its deadline, whatever the worker does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hangproof.failure import Policy
from hangproof.guard.runtime import GuardState, LivenessServer

SLACK = 1.5
CLI = [sys.executable, "-m", "hangproof.cli"]


def run_probe(*args: str, limit: float = 20) -> tuple[int, float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, "check-worker", *args], capture_output=True, text=True, timeout=limit, check=False
    )
    return done.returncode, time.monotonic() - started, done.stdout


@pytest.mark.timeout(60)
def test_silent_liveness_server_is_unhealthy_within_deadline() -> None:
    # Accepts (kernel backlog) and never answers: the incident's port-holder.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(16)
        port = holder.getsockname()[1]
        code, elapsed, out = run_probe("--port", str(port), "--timeout", "2", "--json")
    assert code == 1
    assert elapsed < 2 + SLACK + 1.5  # interpreter start-up on a loaded box
    assert json.loads(out.splitlines()[-1])["healthy"] is False


@pytest.mark.timeout(60)
def test_sigstopped_worker_is_unhealthy_within_deadline(tmp_path: Path) -> None:
    """A real process serving /healthz, frozen with SIGSTOP (by the pid we started)."""
    port_file = tmp_path / "port"
    code = (
        "import time,sys\n"
        "from hangproof.failure import Policy\n"
        "from hangproof.guard.runtime import GuardState, LivenessServer\n"
        "s=GuardState(Policy()); s.on_connected(None); s.check()\n"
        "srv=LivenessServer(s,'127.0.0.1',0)\n"
        f"open({str(port_file)!r},'w').write(str(srv.port))\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.1)
        port = port_file.read_text()
        healthy_code, _, _ = run_probe("--port", port, "--timeout", "3")
        assert healthy_code == 0
        os.kill(worker.pid, signal.SIGSTOP)
        code_, elapsed, _ = run_probe("--port", port, "--timeout", "2")
        assert code_ == 1
        assert elapsed < 2 + SLACK + 1.5
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
        worker.wait(10)


def test_liveness_endpoints() -> None:
    import urllib.error
    import urllib.request

    state = GuardState(Policy(stall_timeout=3))
    server = LivenessServer(state, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert err.value.code == 503  # not connected yet
        health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
        assert health["healthy"] and health["state"] == "reconnecting"
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "hangproof_last_inbound_frame_age_seconds" in metrics
        assert 'hangproof_stalls_detected_total{detection="link-silent"} 0.0' in metrics
    finally:
        server.close()


def test_heartbeat_file(tmp_path: Path) -> None:
    hb = tmp_path / "hb.json"
    code, _, _ = run_probe("--heartbeat-file", str(hb), "--timeout", "3")
    assert code == 1
    hb.write_text("{}")
    code, _, _ = run_probe("--heartbeat-file", str(hb), "--max-age", "30", "--timeout", "3")
    assert code == 0
    os.utime(hb, (time.time() - 100, time.time() - 100))
    code, _, _ = run_probe("--heartbeat-file", str(hb), "--max-age", "30", "--timeout", "3")
    assert code == 1


def test_usage_error_exit_2() -> None:
    code, _, _ = run_probe("--timeout", "1")
    assert code == 2
