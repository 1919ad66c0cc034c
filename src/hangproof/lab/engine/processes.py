"""Processes the lab starts: always tracked by pid, stopped by pid.

Each process gets its own session (so its process group id is its pid). Stopping
sends SIGTERM to that group, waits a bounded time, then SIGKILL. We never look
processes up by name or pattern: only what we started, by its pid.

A pid written to a state file is only a number: after a reboot or a pid
wrap-around it names someone else's process. So the lab records each process's
identity, the boot id and the process's start time (field 22 of
``/proc/PID/stat``, in clock ticks since boot), and :func:`stop_if_ours`
signals only while both still match. Every process we spawn also carries a
token in its environment (:data:`SPAWN_TOKEN_ENV`), which its children inherit:
when the group leader is gone, only group members carrying the leader's token
are signalled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hangproof.credentials import mask_argv

#: How long a process gets between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 10.0
#: Environment variable carrying the random token of each process we spawn.
SPAWN_TOKEN_ENV = "HANGPROOF_SPAWN_TOKEN"
#: Token of each pid spawned by this Python process (read by LabState.track).
_spawn_tokens: dict[int, str] = {}


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
    token = secrets.token_hex(8)
    full_env[SPAWN_TOKEN_ENV] = token
    out: int | object
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # handed to the child, closed below
    else:
        out = subprocess.DEVNULL if stdout is None else stdout
    try:
        proc = subprocess.Popen(
            [*netns_prefix(netns), *argv],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
        _spawn_tokens[proc.pid] = token
        return proc
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def spawn_token(pid: int) -> str | None:
    """The environment token of a process this Python process spawned, if any."""
    return _spawn_tokens.get(pid)


def boot_id() -> str:
    """This boot's id: it changes on every reboot, so old pids are recognisably old."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _stat_fields(pid: int) -> list[bytes] | None:
    # comm (field 2) may contain spaces and parentheses: split after the last ")".
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when ``pid`` started, in clock ticks since boot."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


_boot_id, _start_time = boot_id, start_time  # the names is_ours's keywords shadow


def is_ours(pid: int, *, start_time: int | None, boot_id: str | None) -> str | None:
    """None if ``pid`` is still the process recorded with this identity, else why not.

    >>> is_ours(1, start_time=None, boot_id=None)
    'no start time or boot id was recorded for it'
    """
    if start_time is None or boot_id is None:
        return "no start time or boot id was recorded for it"
    if boot_id != _boot_id():
        return "it was recorded before a reboot"
    now = _start_time(pid)
    if now is None:
        return None  # gone; its group is checked member by member
    if now != start_time:
        return f"it is now another process (started at tick {now}, not {start_time})"
    return None


def stop_if_ours(
    pid: int,
    *,
    start_time: int | None,
    boot_id: str | None,
    token: str | None = None,
    grace: float = STOP_GRACE_SECONDS,
    progress: Callable[[str], None] = lambda _: None,
) -> bool:
    """Stop ``pid``'s group only if it is still the process the lab started.

    Returns True if it was ours (now stopped, or already gone). Otherwise
    nothing is signalled and ``progress`` gets one line saying why.

    >>> stop_if_ours(p.pid, start_time=st, boot_id=boot_id())  # doctest: +SKIP
    True
    """
    why = is_ours(pid, start_time=start_time, boot_id=boot_id)
    if why is not None:
        progress(f"pid {pid} not signalled: {why}")
        return False
    if pid_alive(pid) or _leader_exited(pid):
        stop_pid(pid, grace=grace)
        return True
    # The leader is gone. Its group may linger, but the pid number may also
    # have been reused as another group's id: signal only members carrying
    # the leader's token (inherited through the environment).
    members = [m for m in _group_members(pid) if token is not None and _has_token(m, token)]
    strangers = [m for m in _group_members(pid) if m not in members]
    for m in members:
        stop_pid(m, grace=grace)
    if strangers:
        progress(
            f"pid {pid}: group members {strangers} not signalled: they do not carry the lab's token"
        )
    return True


def _leader_exited(pid: int) -> bool:
    # A zombie that is our own child: the pid is still held, so it is ours.
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] in (b"Z", b"X")  # type: ignore[index]


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and len(fields) > 2 and int(fields[2]) == pgid:  # field 5: pgrp
                found.append(int(entry.name))
    return found


def _has_token(pid: int, token: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{SPAWN_TOKEN_ENV}={token}".encode() in environ.split(b"\0")


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
