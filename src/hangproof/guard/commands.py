"""``hangproof check-worker``: a Kubernetes exec probe that can never hang.

The usual probe, ``celery inspect ping``, is exactly the command that blocked
in the incident. This one asks the worker's liveness port (or reads its
heartbeat file) with a socket deadline, and a watchdog thread ends the process
with ``os._exit`` at the deadline whatever the main thread is doing; SIGALRM
is a second, independent net.

    $ hangproof check-worker --port 9808 --timeout 3 --json
    {"healthy": true, "source": "http://127.0.0.1:9808/healthz", ...}

Exit 0 healthy, 1 unhealthy (or no answer within the deadline), 2 usage.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hangproof.errors import EXIT_FINDING, EXIT_OK, EXIT_USAGE, HangproofError

#: Whoever takes it reports: the deadline thread or the main thread, never both.
#: Measured on a loaded box: the socket timeout and the deadline expire together,
#: and both JSON objects landed on one line ("Extra data" for a JSON reader).
_report = threading.Lock()


def _arm_deadline(seconds: float, as_json: bool) -> threading.Event:
    """End the process with exit 1 after ``seconds``, even if the main thread is stuck."""
    done = threading.Event()

    def expire() -> None:
        if done.wait(seconds) or not _report.acquire(blocking=False):
            return  # answered in time, or the main thread is already reporting
        if as_json:
            os.write(1, json.dumps({"healthy": False, "reason": "deadline exceeded"}).encode())
            os.write(1, b"\n")
        os.write(2, f"hangproof: check-worker: no answer within {seconds:g} s\n".encode())
        os._exit(EXIT_FINDING)  # no cleanup can be allowed to block here

    threading.Thread(target=expire, name="check-worker-deadline", daemon=True).start()
    if hasattr(signal, "SIGALRM"):
        # Independent of the thread: fires even if the GIL holder never yields.
        signal.signal(signal.SIGALRM, lambda *_: os._exit(EXIT_FINDING))
        signal.alarm(max(1, int(seconds + 1.5)))
    return done


def check_http(host: str, port: int, path: str, timeout: float) -> dict[str, Any]:
    """GET ``path`` with one socket deadline; healthy iff 200 with ``healthy`` true."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read(1 << 20)
    finally:
        conn.close()
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        payload = {"raw": body[:200].decode(errors="replace")}
    healthy = response.status == 200 and bool(payload.get("healthy", payload.get("ready", True)))
    return {"healthy": healthy, "status": response.status, "worker": payload}


def check_heartbeat_file(path: Path, max_age: float) -> dict[str, Any]:
    """Healthy iff ``path`` was rewritten less than ``max_age`` seconds ago."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return {"healthy": False, "reason": f"{path} does not exist"}
    healthy = age <= max_age
    return {
        "healthy": healthy,
        "age_seconds": round(age, 3),
        "reason": "fresh" if healthy else f"heartbeat file is {age:.1f} s old (> {max_age:g} s)",
    }


def run_check(
    *,
    port: int | None,
    host: str,
    path: str,
    heartbeat_file: Path | None,
    max_age: float,
    timeout: float,
) -> dict[str, Any]:
    """The probe's logic without the process-level deadline (used by tests)."""
    if port is None and heartbeat_file is None:
        raise HangproofError("check-worker needs --port or --heartbeat-file")
    started = time.monotonic()
    result: dict[str, Any] = {"healthy": True, "checks": []}
    if heartbeat_file is not None:
        check = {"source": str(heartbeat_file), **check_heartbeat_file(heartbeat_file, max_age)}
        result["checks"].append(check)
        result["healthy"] &= check["healthy"]
    if port is not None:
        source = f"http://{host}:{port}{path}"
        remaining = max(0.1, timeout - (time.monotonic() - started))
        try:
            check = {"source": source, **check_http(host, port, path, remaining)}
        except (OSError, http.client.HTTPException) as exc:
            check = {"source": source, "healthy": False, "reason": repr(exc)}
        result["checks"].append(check)
        result["healthy"] &= check["healthy"]
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def register(app: typer.Typer) -> None:
    """Add ``check-worker`` to the ``hangproof`` app."""

    @app.command("check-worker")
    def check_worker(
        port: Annotated[
            int | None, typer.Option(help="the worker's liveness port (harden(liveness_port=))")
        ] = None,
        host: Annotated[str, typer.Option(help="liveness host")] = "127.0.0.1",
        path: Annotated[
            str, typer.Option(help="/healthz (liveness) or /readyz (readiness)")
        ] = "/healthz",
        heartbeat_file: Annotated[
            Path | None, typer.Option(help="the worker's heartbeat file (harden(heartbeat_file=))")
        ] = None,
        max_age: Annotated[
            float, typer.Option(help="heartbeat file older than this is unhealthy (s)")
        ] = 30.0,
        timeout: Annotated[float, typer.Option(help="hard deadline for the whole probe (s)")] = 3.0,
        as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
    ) -> int:
        """Exec probe for a guarded worker: exit 0 healthy, 1 unhealthy, 2 usage."""
        if timeout <= 0:
            raise HangproofError("--timeout must be > 0", exit_code=EXIT_USAGE)
        done = _arm_deadline(timeout, as_json)
        try:
            result = run_check(
                port=port,
                host=host,
                path=path,
                heartbeat_file=heartbeat_file,
                max_age=max_age,
                timeout=timeout,
            )
        finally:
            done.set()
        # Blocks only while the deadline thread reports, and it ends the process.
        _report.acquire()
        with contextlib.suppress(Exception):
            signal.alarm(0)
        if as_json:
            print(json.dumps(result, default=str))
        else:
            state = "healthy" if result["healthy"] else "UNHEALTHY"
            reasons = "; ".join(
                str(c.get("reason") or c.get("worker", {}).get("reason") or c.get("status"))
                for c in result["checks"]
            )
            print(f"{state}: {reasons}", file=sys.stderr)
        code = EXIT_OK if result["healthy"] else EXIT_FINDING
        raise typer.Exit(code)
