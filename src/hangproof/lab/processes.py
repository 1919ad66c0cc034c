"""Processes the lab starts: always tracked by pid, stopped by pid.

Each process gets its own session (so its process group id is its pid). Stopping
sends SIGTERM to that group, waits a bounded time, then SIGKILL. We never look
processes up by name or pattern: only what we started, by its pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hangproof.credentials import mask_argv

#: How long a process gets between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 10.0


def netns_prefix(netns: str | None) -> list[str]:
    """The argv prefix that runs a command inside ``netns`` (or nothing)."""
    return ["ip", "netns", "exec", netns] if netns else []


def spawn(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
    stdout: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (inside ``netns``) in a new session; its pid is its group id.

    >>> p = spawn(["sleep", "5"]); stop_pid(p.pid)  # doctest: +SKIP
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    out: int | object
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # handed to the child, closed below
    else:
        out = subprocess.DEVNULL if stdout is None else stdout
    try:
        return subprocess.Popen(
            [*netns_prefix(netns), *argv],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def stop_pid(pid: int, *, grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop the process group we started as ``pid``: TERM, bounded wait, KILL.

    A group leader that is already gone may leave children in its group, so we
    signal the group (which is ours: it was created with the process).
    """
    for sig, wait in ((signal.SIGCONT, 0.0), (signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid) and not _group_alive(pid):
                return
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc, all threads)."""
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in task_dir.iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendant_named(pid: int, comm: str, *, depth: int = 6) -> int | None:
    """The first descendant of ``pid`` (ours) whose comm is ``comm``; bounded depth."""
    frontier = [pid]
    for _ in range(depth):
        next_frontier: list[int] = []
        for p in frontier:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if Path(f"/proc/{p}/comm").read_text().strip() == comm:
                    return p
            next_frontier += children(p)
        frontier = next_frontier
    return None


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    input: str | None = None,
    timeout: float = 30.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command (inside ``netns``) with a hard timeout; text output."""
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    full = [*netns_prefix(netns), *argv]
    try:
        return subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=full_env,
        )
    except subprocess.TimeoutExpired as exc:
        # str() of these exceptions is the whole argv: `rabbitmqctl add_user bob PASSWORD`.
        raise subprocess.TimeoutExpired(
            mask_argv(full), exc.timeout, exc.output, exc.stderr
        ) from None
    except subprocess.CalledProcessError as exc:
        raise subprocess.CalledProcessError(
            exc.returncode, mask_argv(full), exc.output, exc.stderr
        ) from None
