"""call-probe: time what an application call does while the broker is unreachable or blocked.

Upstream reports: celery#6911 / kombu#1463 (``delay()`` hangs forever when the
broker is down, open), celery#5067 (``inspect ping`` ignores its timeout),
celery#1305 (``apply_async`` blocks), celery#1828 (publishing hangs under a
disk/memory alarm), pika#764 (``close()`` hangs on a blocked connection).

Each call runs in its own subprocess in the clients' namespace, with the
lab's Celery app (:mod:`hangproof.lab.clients.celery_app`, stock or
``harden(app)`` by ``HANGPROOF_GUARD``), and is bounded from *outside*: a call
still running at ``bound`` seconds is killed by pid and reported as ``HANG``,
never waited for. The calls:

- ``delay``: ``record.delay(key)`` (the app's default queue set to the probe's);
- ``apply_async``: ``record.apply_async((key,), queue=...)``;
- ``ping``: ``app.control.inspect(timeout=1).ping()`` (celery#5067);
- ``close``: open a connection, publish one task on it, then ``release()`` it,
  each step timed (pika#764: the close of a blocked connection).

The child prints one JSON line per step as it ends (so a hang is placed in
its step) and a last line with the call's outcome. ``ok`` publishes are
checked afterwards: ``queued`` is whether the broker really had the message
(the caller decides how: the queue's message count, or the consumer's ledger);
``ok`` and not queued is a **false ok**.

    >>> r = parse_output("delay", '{"step": "start", "at": 1.0}\\n'
    ...                  '{"call": "delay", "outcome": "ok", "seconds": 0.2}\\n')
    >>> r.outcome, r.seconds
    ('ok', 0.2)

Run one call by hand (inside the clients' namespace)::

    HANGPROOF_BROKER_URL=amqp://... HANGPROOF_GUARD=1 \\
        python -m hangproof.lab.clients.call_probe call delay --queue q --key k1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hangproof.lab.engine import processes

MODULE = "hangproof.lab.clients.call_probe"
CALLS = ("delay", "apply_async", "ping", "close")
#: Calls that publish a task (``queued`` applies to them).
PUBLISHING = frozenset({"delay", "apply_async", "close"})
OK, ERROR, HANG = "ok", "error", "HANG"
#: ``inspect(timeout=...)`` of the ping call (the issue's ``inspect().ping(timeout=1)``).
PING_TIMEOUT = 1.0
#: Slack on top of publish_timeout a guarded call may take (the issue's "+ 1 s").
SLACK = 1.0
#: How long a warm child waits for its go file before giving up (seconds).
GO_WAIT = 300.0


@dataclass
class CallResult:
    """One call's outcome: ``ok``, ``error`` (with its type) or ``HANG`` (killed at the bound)."""

    call: str
    profile: str = ""
    outcome: str = HANG
    seconds: float | None = None
    error: str | None = None
    message: str = ""
    #: For ok publishes: whether the broker really had the message (None: not checked).
    queued: bool | None = None
    #: ping: how many workers answered.
    replies: int | None = None
    #: close: each step (connect, publish, release) with its own outcome and time.
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: Where a HANG was stuck (the first step that did not end).
    hung_in: str | None = None
    deadline_s: float | None = None
    #: Warm: the call made once before the fault (its step line), else None (cold).
    warm_up: dict[str, Any] | None = None

    @property
    def false_ok(self) -> bool:
        """An ok publish whose message the broker never had.

        >>> CallResult("delay", outcome="ok", queued=False).false_ok
        True
        >>> CallResult("delay", outcome="ok", queued=None).false_ok
        False
        """
        return self.outcome == OK and self.call in PUBLISHING and self.queued is False

    def label(self) -> str:
        """A short cell text: ``ok 0.1s``, ``FALSE OK 0.1s``, ``error 0.3s Type``, ``HANG >20s``.

        >>> CallResult("ping", outcome="error", seconds=0.31, error="OperationalError").label()
        'error 0.3s OperationalError'
        >>> CallResult("delay", outcome="HANG", seconds=20.04, hung_in="publish").label()
        'HANG >20.0s (in publish)'
        """
        if self.outcome == HANG:
            where = f" (in {self.hung_in})" if self.hung_in else ""
            return f"HANG >{self.seconds or 0:.1f}s{where}"
        text = f"{'FALSE OK' if self.false_ok else self.outcome} {self.seconds or 0:.1f}s"
        if self.outcome == ERROR:
            text += f" {self.error}"
        if self.replies is not None:
            text += f" replies={self.replies}"
        if self.outcome == OK and self.queued and self.call in PUBLISHING:
            text += " queued"
        if self.call == "close" and self.steps:
            text += " [" + ", ".join(_step_text(s) for s in self.steps) + "]"
        if self.warm_up is not None and self.warm_up.get("outcome") != OK:
            text += " (warm-up failed)"
        return text


def _step_text(step: dict[str, Any]) -> str:
    """``release 0.0s ok`` style text of one close step.

    >>> _step_text({"step": "publish", "outcome": "error", "seconds": 0.04, "error": "X"})
    'publish error 0.0s X'
    """
    text = f"{step['step']} {step.get('outcome', '?')} {float(step.get('seconds') or 0):.1f}s"
    return text + (f" {step['error']}" if step.get("error") else "")


def deadline(call: str, publish_timeout: float, handshake_deadline: float) -> float:
    """The longest a guarded ``call`` may take (seconds) before it is a miss.

    A publish: ``publish_timeout + 1 s`` (the issue's bound). ping: that plus
    its own reply wait. close (connect, publish, release): the handshake
    deadline on top.

    >>> deadline("delay", 7.5, 7.5), deadline("ping", 7.5, 7.5), deadline("close", 7.5, 7.5)
    (8.5, 9.5, 16.0)
    """
    base = publish_timeout + SLACK
    if call == "ping":
        return base + PING_TIMEOUT
    if call == "close":
        return base + handshake_deadline
    return base


def parse_output(
    call: str, text: str, *, timed_out: bool = False, now: float | None = None
) -> CallResult:
    """The :class:`CallResult` from a child's JSON lines (pure; ``timed_out``: killed at the bound).

    A killed child's hang lasts from its ``start`` line to ``now`` (wall clock).

    >>> r = parse_output("close", '{"step": "start", "at": 10.0}\\n'
    ...     '{"step": "connect", "outcome": "ok", "seconds": 0.1}\\n'
    ...     '{"step": "publish", "outcome": "ok", "seconds": 0.0}\\n', timed_out=True, now=40.0)
    >>> r.outcome, r.seconds, r.hung_in, len(r.steps)
    ('HANG', 30.0, 'release', 2)
    >>> parse_output("delay", "garbage").outcome
    'error'
    """
    lines = []
    for raw in text.splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(raw)
            if isinstance(value, dict):
                lines.append(value)
    result = CallResult(call)
    started = next((float(v["at"]) for v in lines if v.get("step") == "start"), None)
    result.steps = [v for v in lines if v.get("step") not in (None, "start", "warm")]
    result.warm_up = next((v for v in lines if v.get("step") == "warm"), None)
    final = next((v for v in reversed(lines) if v.get("call") == call), None)
    if final is None and timed_out:
        result.outcome = HANG
        if started is not None and now is not None:
            result.seconds = round(now - started, 1)
        done = {s["step"] for s in result.steps}
        order = ["connect", "publish", "release"] if call == "close" else [call]
        result.hung_in = next((s for s in order if s not in done), call)
        return result
    if final is None:
        result.outcome, result.error = ERROR, "NoResult" if lines else "NoOutput"
        result.message = text.strip()[-200:]
        return result
    if timed_out:  # the call returned, the process did not exit (e.g. at-exit teardown)
        result.hung_in = "exit"
    result.outcome = str(final.get("outcome", ERROR))
    result.seconds = final.get("seconds")
    result.error = final.get("error")
    result.message = str(final.get("message", ""))[:200]
    result.replies = final.get("replies")
    return result


# ---------------------------------------------------------------- the child


def _emit(**values: Any) -> None:
    print(json.dumps(values), flush=True)


def _timed(step: str, fn: Any) -> tuple[bool, Any]:
    """Run ``fn()``; emit its step line; (ok, value-or-exception)."""
    t = time.monotonic()
    try:
        value = fn()
    except Exception as exc:
        _emit(step=step, outcome=ERROR, seconds=round(time.monotonic() - t, 3),
              error=type(exc).__name__, message=str(exc)[:200])  # fmt: skip
        return False, exc
    _emit(step=step, outcome=OK, seconds=round(time.monotonic() - t, 3))
    return True, value


def _wait_for(path: Path, bound: float = GO_WAIT) -> bool:
    deadline = time.monotonic() + bound
    for _ in range(int(bound / 0.05) + 1):
        if path.exists():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return False


def child(call: str, queue: str, key: str, go: Path | None = None) -> int:
    """Make ``call`` once with the matrix app; print its JSON lines. Always exits 0.

    With ``go`` (warm): first make the call once while the broker is still
    fine (a web process that has published before: its pooled connection is
    open; for ``close``, the connection opened and used once), touch
    ``go.ready-CALL``, wait for ``go`` to exist, then make the measured call.
    """
    from hangproof.lab.clients.celery_app import app, record

    app.conf.task_default_queue = queue  # delay() routes here
    conn: Any = None
    if go is not None:
        t = time.monotonic()
        try:
            if call in ("delay", "apply_async"):
                record.apply_async((f"{key}-warm",), queue=queue)
            elif call == "ping":
                app.control.inspect(timeout=PING_TIMEOUT).ping()
            elif call == "close":
                conn = app.connection_for_write()
                conn.ensure_connection(max_retries=1)
                record.apply_async((f"{key}-warm",), queue=queue, connection=conn, retry=False)
        except Exception as exc:
            _emit(step="warm", outcome=ERROR, seconds=round(time.monotonic() - t, 3),
                  error=type(exc).__name__, message=str(exc)[:200])  # fmt: skip
        else:
            _emit(step="warm", outcome=OK, seconds=round(time.monotonic() - t, 3))
        Path(f"{go}.ready-{call}").write_text("ready")
        if not _wait_for(go):
            return 0
    _emit(step="start", at=time.time())
    t = time.monotonic()
    replies: int | None = None
    try:
        if call == "delay":
            record.delay(key)
        elif call == "apply_async":
            record.apply_async((key,), queue=queue)
        elif call == "ping":
            answer = app.control.inspect(timeout=PING_TIMEOUT).ping()
            replies = len(answer or {})
        elif call == "close":
            if conn is None:
                conn = app.connection_for_write()
                ok, err = _timed("connect", lambda: conn.ensure_connection(max_retries=1))
            else:
                ok, err = True, None
                _emit(step="connect", outcome=OK, seconds=0.0, reused=True)
            if ok:
                ok, err = _timed(
                    "publish",
                    lambda: record.apply_async((key,), queue=queue, connection=conn, retry=False),
                )
            _timed("release", conn.release)
            if not ok:
                raise err
        else:
            raise ValueError(f"unknown call {call!r}; choose one of: {', '.join(CALLS)}")
    except Exception as exc:
        _emit(call=call, outcome=ERROR, seconds=round(time.monotonic() - t, 3),
              error=type(exc).__name__, message=str(exc)[:200])  # fmt: skip
        return 0
    _emit(call=call, outcome=OK, seconds=round(time.monotonic() - t, 3), replies=replies)
    return 0


# ---------------------------------------------------------------- the runner


@dataclass
class Running:
    """A call's child process, started by :func:`start_call`."""

    call: str
    proc: Any
    started: float


def start_call(
    call: str,
    netns: str | None,
    env: dict[str, str],
    queue: str,
    key: str,
    go: Path | None = None,
) -> Running:
    """Start ``call`` in ``netns`` (its own process group, stopped by pid in :func:`finish_call`).

    With ``go`` the child warms up first and waits for ``go`` (see :func:`child`).
    """
    argv = [sys.executable, "-m", MODULE, "call", call, "--queue", queue, "--key", key]
    argv += ["--go", str(go)] if go is not None else []
    proc = processes.spawn(argv, netns=netns, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=-1)
    return Running(call, proc, time.monotonic())


def finish_call(running: Running, bound: float) -> CallResult:
    """Wait until ``bound`` seconds after the call started, then kill it: a HANG."""
    out = b""
    timed_out = False
    try:
        out, _ = running.proc.communicate(
            timeout=max(0.1, bound - (time.monotonic() - running.started))
        )
    except Exception:  # subprocess.TimeoutExpired
        timed_out = True
        processes.stop_pid(running.proc.pid, grace=1)
        with contextlib.suppress(Exception):
            out, _ = running.proc.communicate(timeout=5)
    finally:
        processes.stop_pid(running.proc.pid, grace=1)
    return parse_output(running.call, (out or b"").decode(errors="replace"),
                        timed_out=timed_out, now=time.time())  # fmt: skip


class Calls:
    """Children for some calls: started (warm ones warm up at once), then let go, then finished.

    Cold (``go=None``): each child makes its call as soon as it starts.
    Warm: :meth:`start` makes each call once (broker still fine) and waits;
    :meth:`release` lets them all make the measured call at once.
    """

    def __init__(self, go: Path | None = None) -> None:
        self.go = go
        self.running: list[Running] = []

    def start(
        self, calls: list[str], netns: str | None, env: dict[str, str], queue_of: Any, key_of: Any
    ) -> None:
        for call in calls:
            self.running.append(start_call(call, netns, env, queue_of(call), key_of(call), self.go))

    def wait_warm(self, bound: float = 60.0) -> bool:
        """Whether every warm child is ready (warmed up, waiting for go) within ``bound``."""
        if self.go is None:
            return True
        return all(_wait_for(Path(f"{self.go}.ready-{r.call}"), bound) for r in self.running)

    def release(self) -> None:
        """Let warm children make their measured call; the bound counts from now."""
        if self.go is not None:
            self.go.write_text("go")
        now = time.monotonic()
        for r in self.running:
            r.started = now

    def finish(self, bound: float) -> list[CallResult]:
        try:
            return [finish_call(r, bound) for r in self.running]
        finally:
            self.close()

    def close(self) -> None:
        for r in self.running:
            processes.stop_pid(r.proc.pid, grace=1)


def run_calls(
    calls: list[str],
    netns: str | None,
    env: dict[str, str],
    queue_of: Any,
    key_of: Any,
    bound: float,
) -> list[CallResult]:
    """Make every call at once (one cold child each), each bounded by ``bound`` seconds."""
    made = Calls()
    try:
        made.start(calls, netns, env, queue_of, key_of)
        return made.finish(bound)
    finally:
        made.close()


def judge(result: CallResult, limit: float, *, must_fail: bool) -> str | None:
    """Why a *guarded* call misses its promise, or None when it keeps it.

    The promise: it returns within ``limit``; an ok publish was really queued
    (no false ok); with ``must_fail`` (the broker is unreachable) it is an error.

    >>> judge(CallResult("delay", outcome="error", seconds=0.4, error="E"), 8.5, must_fail=True)
    >>> judge(CallResult("delay", outcome="HANG", seconds=20.0), 8.5, must_fail=True)
    'HANG >20.0 s (deadline 8.5 s)'
    >>> judge(CallResult("ping", outcome="ok", seconds=1.0, replies=0), 9.5, must_fail=True)
    'ok while the broker is unreachable'
    >>> judge(CallResult("delay", outcome="ok", seconds=0.1, queued=False), 8.5, must_fail=False)
    'false ok: the broker never had the message'
    """
    if result.outcome == HANG:
        return f"HANG >{result.seconds or 0:.1f} s (deadline {limit:g} s)"
    if result.seconds is not None and result.seconds > limit:
        return f"took {result.seconds:.1f} s (deadline {limit:g} s)"
    if result.false_ok:
        return "false ok: the broker never had the message"
    if must_fail and result.outcome == OK:
        return "ok while the broker is unreachable"
    return None


def as_dict(result: CallResult) -> dict[str, Any]:
    """The JSON form, with ``false_ok`` and ``label`` added."""
    return {**asdict(result), "false_ok": result.false_ok, "label": result.label()}


def main(argv: list[str] | None = None) -> int:
    """``call NAME --queue Q --key K``: the child (internal; see the module docstring)."""
    parser = argparse.ArgumentParser(prog="call_probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("call")
    c.add_argument("call", choices=CALLS)
    c.add_argument("--queue", required=True)
    c.add_argument("--key", required=True)
    c.add_argument("--go", default=None, help="warm up, then wait for this file")
    args = parser.parse_args(argv)
    return child(args.call, args.queue, args.key, Path(args.go) if args.go else None)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
