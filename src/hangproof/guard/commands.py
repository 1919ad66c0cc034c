"""``hangproof check-worker``: a Kubernetes exec probe that can never hang.

The usual probe, ``celery inspect ping``, is exactly the command that blocked
in the incident. This one asks the worker's liveness port (or reads its
heartbeat file) with a socket deadline, and a watchdog thread ends the process
with ``os._exit`` at the deadline whatever the main thread is doing; SIGALRM
is a second, independent net.

    $ hangproof check-worker --port 9808 --timeout 3 --json
    {"healthy": true, "source": "http://127.0.0.1:9808/healthz", ...}

One mode per probe kind of the health contract (guard/health.py,
docs/guard.md): ``--probe liveness`` asks ``/livez`` (Kubernetes
livenessProbe: restart me), ``--probe readiness`` asks ``/readyz``
(readinessProbe: not now), ``--probe consuming`` asks ``/consumingz`` (the
broker shows a consumer on every queue and the worker's canary came back).
Without ``--probe``, ``--path`` (default ``/healthz``) as before.

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

#: Whoever writes the verdict first (the probe itself or a deadline net) holds
#: this, so stdout carries exactly one JSON line.
_VERDICT = threading.Lock()


def _arm_deadline(seconds: float, as_json: bool) -> threading.Event:
    """End the process with exit 1 after ``seconds``, even if the main thread is stuck.

    Two independent nets, each writing the same one-line verdict before
    ``os._exit`` (a probe's caller must always get its JSON): a thread at
    ``seconds``, and SIGALRM 1.5 s later in case the thread cannot run.
    The normal path's socket timeouts end earlier (:func:`socket_budget`), so
    under load the nets fire only when something really hangs.
    """
    done = threading.Event()

    def expire_now() -> None:
        if not _VERDICT.acquire(blocking=False):
            return  # the other net is already writing
        if as_json:
            os.write(1, json.dumps({"healthy": False, "reason": "deadline exceeded"}).encode())
            os.write(1, b"\n")
        os.write(2, f"hangproof: check-worker: no answer within {seconds:g} s\n".encode())
        os._exit(EXIT_FINDING)  # no cleanup can be allowed to block here

    def expire() -> None:
        if not done.wait(seconds):
            expire_now()

    threading.Thread(target=expire, name="check-worker-deadline", daemon=True).start()
    if hasattr(signal, "SIGALRM"):
        # Independent of the thread: fires even if the GIL holder never yields.
        signal.signal(signal.SIGALRM, lambda *_: expire_now())
        signal.alarm(max(1, int(seconds + 1.5)))
    return done


def socket_budget(timeout: float) -> float:
    """The socket deadline inside a ``timeout``-second probe: it ends before the hard nets.

    >>> socket_budget(3.0), socket_budget(0.4)
    (2.5, 0.3)
    """
    return round(max(timeout * 0.75, timeout - 0.5), 3)


#: ``--probe`` -> (path, the key of the worker's JSON that decides).
PROBES: dict[str, tuple[str, str]] = {
    "liveness": ("/livez", "live"),
    "readiness": ("/readyz", "ready"),
    "consuming": ("/consumingz", "consuming"),
}
#: The key that decides for each path (``/healthz``: ``healthy``).
VERDICT_KEYS = {path: key for path, key in PROBES.values()}


def probe_path(probe: str | None, path: str | None) -> str:
    """The path to ask for ``--probe`` / ``--path`` (both given: they must agree).

    >>> probe_path("liveness", None), probe_path(None, None), probe_path(None, "/readyz")
    ('/livez', '/healthz', '/readyz')
    """
    if probe is None:
        return path or "/healthz"
    if probe not in PROBES:
        raise HangproofError(
            f"--probe must be one of {', '.join(PROBES)} (got {probe!r})", exit_code=EXIT_USAGE
        )
    wanted = PROBES[probe][0]
    if path is not None and path != wanted:
        raise HangproofError(
            f"--probe {probe} asks {wanted}; drop --path {path}", exit_code=EXIT_USAGE
        )
    return wanted


def check_http(host: str, port: int, path: str, timeout: float) -> dict[str, Any]:
    """GET ``path`` with one socket deadline; healthy iff 200 and the path's verdict key true."""
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
    key = VERDICT_KEYS.get(path, "healthy")
    verdict = payload.get(key, payload.get("healthy", True)) if isinstance(payload, dict) else True
    healthy = response.status == 200 and bool(verdict)
    result: dict[str, Any] = {"healthy": healthy, "status": response.status, "worker": payload}
    if isinstance(payload, dict) and f"{key}_reason" in payload:
        result["reason"] = payload[f"{key}_reason"]
    return result


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
    if port is None and path in ("/readyz", "/consumingz"):
        raise HangproofError(
            f"{path} needs --port (the heartbeat file only says live)", exit_code=EXIT_USAGE
        )
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
            str | None,
            typer.Option(help="the path to ask (default /healthz); prefer --probe"),
        ] = None,
        probe: Annotated[
            str | None,
            typer.Option(
                help="liveness (/livez: restart me), readiness (/readyz: not now) or "
                "consuming (/consumingz: proven consumer and canary)"
            ),
        ] = None,
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
        path = probe_path(probe, path)
        if port is None and heartbeat_file is None:
            raise HangproofError(
                "check-worker needs --port or --heartbeat-file", exit_code=EXIT_USAGE
            )
        done = _arm_deadline(timeout, as_json)
        try:
            result = run_check(
                port=port,
                host=host,
                path=path,
                heartbeat_file=heartbeat_file,
                max_age=max_age,
                timeout=socket_budget(timeout),
            )
        finally:
            done.set()
            with contextlib.suppress(Exception):
                signal.alarm(0)
        if not _VERDICT.acquire(timeout=5):
            time.sleep(5)  # a deadline net is writing its verdict and exiting
        if probe is not None:
            result["probe"] = probe
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
