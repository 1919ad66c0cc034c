"""hangproof.aio.serve_health: the health contract's wiring for an asyncio consumer (no broker).

The rules are guard/health.py's (tests/unit/test_health_contract.py); here:
what the aio state feeds them (the loop's tick, the link's frame clock, the
link going away, the silence watchdog's events), on a fake clock; and the
real thing with no broker behind it (a refusing port): real threads, a real
event loop that is then wedged, real HTTP, ``hangproof check-worker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from hangproof.failure import Policy
from hangproof.guard.aio_health import AioGuardState
from hangproof.guard.consuming import Canary
from hangproof.guard.health import ProbeRound

P = Policy(stall_timeout=3)  # recover_timeout 12 s, watchdog_interval 0.3 s, silence_limit 2.4 s
CLI = [sys.executable, "-m", "hangproof.cli"]
SLACK = 1.0  # scheduling slack on a loaded 2-core box


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLoop:
    """``loop.time()`` on a clock of its own (offset from the state's), as asyncio's is."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def time(self) -> float:
        return self.clock.now - 900.0


def fake_connection(loop: FakeLoop) -> Any:
    link = types.SimpleNamespace(is_closed=False, _Connection__last_frame_time=loop.time())
    connected = threading.Event()
    connected.set()
    return types.SimpleNamespace(
        transport=types.SimpleNamespace(connection=link),
        connected=connected,
        hangproof_events=deque(),
    )


def ok_round(at: float, state: AioGuardState) -> ProbeRound:
    assert state.canary is not None
    return ProbeRound(
        at=at,
        reachable=True,
        consumers={"tasks": 1, state.canary.queue: 1},
        canary_sent=True,
        canary_rtt=0.01,
        seconds=0.05,
    )


def make_state() -> tuple[AioGuardState, FakeClock, FakeLoop, Any]:
    clock = FakeClock()
    loop = FakeLoop(clock)
    conn = fake_connection(loop)
    state = AioGuardState(
        P, connection=conn, queues=["tasks"], canary=Canary("hangproof.canary.t"), clock=clock
    )
    return state, clock, loop, conn


def advance(state: AioGuardState, clock: FakeClock, loop: FakeLoop, seconds: float, *,
            ticks: bool = True, frames: bool = True, conn: Any = None) -> None:  # fmt: skip
    """Let ``seconds`` pass in watchdog_interval steps, the loop ticking and frames arriving or not."""
    step = state.tick_interval
    end = clock.now + seconds
    while clock.now < end - 1e-9:
        clock.now = min(end, clock.now + step)
        if frames and conn is not None and conn.transport is not None:
            conn.transport.connection._Connection__last_frame_time = loop.time()
        if ticks:
            state.on_loop_tick(loop)  # type: ignore[arg-type]


def test_tick_marks_connected_and_the_contract_is_the_workers() -> None:
    state, clock, loop, conn = make_state()
    state.on_loop_tick(loop)  # type: ignore[arg-type]
    assert state.connected and state.contract()["state"] == "connected"
    advance(state, clock, loop, 2.0, conn=conn)
    state.record_round(ok_round(clock.now - 0.5, state))
    body = state.contract()
    assert (body["live"], body["ready"], body["consuming"]) == (True, True, True), body
    # The keys check-worker and the Celery worker's /livez have.
    for key in ("live_reason", "ready_reason", "consuming_reason", "queues", "probe", "events"):
        assert key in body
    assert body["canary_queue"] == "hangproof.canary.t"
    # frame clock converted from the loop's clock to the state's
    assert 0.0 <= body["last_inbound_frame_age"] <= state.tick_interval


def test_silent_link_is_not_ready_but_live() -> None:
    state, clock, loop, conn = make_state()
    advance(state, clock, loop, 1.0, conn=conn)
    advance(state, clock, loop, P.silence_limit + 0.5, frames=False, conn=conn)
    h = state.assess(state.check())
    assert not h.ready and h.live, h
    assert "no inbound frame" in h.ready_reason


def test_wedged_loop_is_not_live_after_recover_timeout_and_not_before() -> None:
    state, clock, loop, conn = make_state()
    advance(state, clock, loop, 2.0, conn=conn)
    state.record_round(ok_round(clock.now, state))
    wedged = clock.now  # the last tick; nothing runs on the loop from here
    recover = float(P.recover_timeout or 0)
    clock.now = wedged + state.tick_interval + recover - 0.05
    h = state.assess(state.check())
    assert h.live and not h.ready, h  # late loop: not ready, but not yet a restart
    clock.now = wedged + state.tick_interval + recover + 0.05
    h = state.assess(state.check())
    assert not h.live and h.live_reason.startswith("event loop stalled for 12.0 s"), h
    assert state.m_live._value.get() == 0  # type: ignore[attr-defined]
    assert any(e["kind"] == "not-live" for e in state.events)
    # The loop runs again: live again at once.
    advance(state, clock, loop, state.tick_interval, conn=conn)
    assert state.assess(state.check()).live


def test_lost_link_is_reconnecting_and_an_outage_never_says_restart() -> None:
    state, clock, loop, conn = make_state()
    advance(state, clock, loop, 1.0, conn=conn)
    conn.transport = None  # aio-pika between two links
    conn.connected.clear()
    advance(state, clock, loop, 0.5, conn=conn)
    assert not state.connected
    assert any(e["kind"] == "disconnected" for e in state.events)
    recover = float(P.recover_timeout or 0)
    t = clock.now
    while clock.now < t + recover + 10:
        advance(state, clock, loop, 3.0, conn=conn)
        state.record_round(ProbeRound(at=clock.now, reachable=False, error="TimeoutError: "))
        h = state.assess(state.check())
        assert h.live and not h.ready and not h.consuming, h
    # The link is back: connected, counted as a reconnect.
    conn.transport = types.SimpleNamespace(
        connection=types.SimpleNamespace(is_closed=False, _Connection__last_frame_time=loop.time())
    )
    conn.connected.set()
    advance(state, clock, loop, 2.0, conn=conn)
    assert state.connected and state.m_reconnects._value.get() == 1  # type: ignore[attr-defined]
    state.record_round(ok_round(clock.now, state))
    assert state.assess(state.check()).consuming


def test_silence_watchdog_events_are_copied_once_and_counted() -> None:
    state, clock, loop, conn = make_state()
    advance(state, clock, loop, 1.0, conn=conn)
    conn.hangproof_events.append(
        {"kind": "stall-detected", "at": time.time(), "monotonic": 5.0, "detection": "link-silent"}
    )
    state.on_loop_tick(loop)  # type: ignore[arg-type]
    state.on_loop_tick(loop)  # type: ignore[arg-type]
    stalls = [e for e in state.events if e["kind"] == "stall-detected"]
    assert len(stalls) == 1
    counter = state.m_stalls.labels(detection="link-silent")._value.get()  # type: ignore[attr-defined]
    assert counter == 1


# -- the real thing, no broker ------------------------------------------------


def _get(port: int, path: str) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            code, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read()
    took = time.monotonic() - t0
    return code, (json.loads(body) if path != "/metrics" else {"text": body.decode()}), took


class LoopThread:
    """An asyncio loop on a thread of its own (the "consumer"), which the test can wedge."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wedge(self, release: threading.Event) -> None:
        self.loop.call_soon_threadsafe(release.wait)  # blocks the loop: a sync call in a handler

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.mark.timeout(90)
def test_serve_health_answers_from_threads_while_the_loop_is_wedged() -> None:
    """No broker (refused): live 200, ready/consuming 503; a wedged loop: 503 after recover_timeout."""
    from aio_pika.connection import make_url

    from hangproof.aio import GuardedRobustConnection, serve_health

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    dead = listener.getsockname()[1]
    listener.close()
    policy = Policy(stall_timeout=2.0, recover_timeout=4.0)  # watchdog 0.2 s, handshake 1 s
    recover = float(policy.recover_timeout or 0)
    lt = LoopThread()
    release = threading.Event()
    try:

        async def start() -> Any:
            conn = GuardedRobustConnection(make_url(f"amqp://guest:guest@127.0.0.1:{dead}/"))
            return await serve_health(conn, ["tasks"], port=0, policy=policy)

        health = lt.run(start())
        port = health.port
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not health.state.rounds:
            time.sleep(0.1)
        assert health.state.rounds and not health.state.rounds[-1].reachable
        code_live, live, _ = _get(port, "/livez")
        code_ready, ready, _ = _get(port, "/readyz")
        code_cons, cons, _ = _get(port, "/consumingz")
        assert (code_live, code_ready, code_cons) == (200, 503, 503), (live, ready, cons)
        assert ready["state"] == "reconnecting" and "broker unreachable" in ready["ready_reason"]
        assert cons["probe"]["reachable"] is False
        metrics = _get(port, "/metrics")[1]["text"]
        assert (
            "hangproof_live 1.0" in metrics and 'hangproof_consuming{queue="tasks"} 0.0' in metrics
        )
        assert _get(port, "/nope")[0] == 404

        # check-worker, unchanged, against it
        run = [*CLI, "check-worker", "--port", str(port), "--json", "--probe"]
        live_rc = subprocess.run([*run, "liveness"], capture_output=True, text=True, timeout=30)
        ready_rc = subprocess.run([*run, "readiness"], capture_output=True, text=True, timeout=30)
        assert live_rc.returncode == 0, live_rc.stdout + live_rc.stderr
        assert ready_rc.returncode == 1, ready_rc.stdout + ready_rc.stderr
        assert json.loads(ready_rc.stdout)["probe"] == "readiness"

        # wedge the consumer's loop: the endpoints keep answering, fast; /livez
        # turns 503 after recover_timeout (+ one tick period), not before
        wedged = time.monotonic()
        lt.wedge(release)
        samples: list[tuple[float, int, float]] = []
        while time.monotonic() < wedged + recover + 3.0:
            code, body, took = _get(port, "/livez")
            samples.append((time.monotonic() - wedged, code, took))
            time.sleep(0.1)
        slowest = max(s[2] for s in samples)
        first_503 = next((s[0] for s in samples if s[1] == 503), None)
        print(f"wedged loop: first /livez 503 after {first_503} s; slowest answer {slowest:.3f} s")
        assert slowest < 0.1, samples
        assert first_503 is not None, samples
        assert first_503 >= recover, samples
        assert first_503 <= recover + 2 * policy.watchdog_interval + 0.5, samples  # type: ignore[operator]
        assert all(code == 200 for t, code, _ in samples if t < recover), samples
        assert "event loop stalled" in body["live_reason"], body
        assert _get(port, "/readyz")[0] == 503
        release.set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and _get(port, "/livez")[0] != 200:
            time.sleep(0.05)
        assert _get(port, "/livez")[0] == 200
        lt.run(health.close())
        with pytest.raises(OSError):
            _get(port, "/livez")
    finally:
        release.set()
        lt.close()


def test_a_reconnect_between_two_watchdog_rounds_is_not_a_restart() -> None:
    """The tick marks the link up after the watchdog last decided "down for > recover_timeout".

    Measured in the lab (one /livez 503 sample 3 s after a blackhole healed):
    the stale decision next to ``connected`` read at request time is the
    "connected but unhealthy" case. The aio state decides from one snapshot.
    """
    state, clock, loop, conn = make_state()
    advance(state, clock, loop, 1.0, conn=conn)
    link = conn.transport
    conn.transport = None
    conn.connected.clear()
    advance(state, clock, loop, float(P.recover_timeout or 0) + 5.0, conn=conn)
    state.record_round(ProbeRound(at=clock.now, reachable=True, consumers={"tasks": 0}))
    assert not state.check().healthy  # the watchdog's last word: down for 17 s
    conn.transport = link
    conn.connected.set()
    link.connection._Connection__last_frame_time = loop.time()
    state.on_loop_tick(loop)  # type: ignore[arg-type]  # up again, before the next check()
    body = state.contract()
    assert body["live"], body["live_reason"]
    assert body["state"] == "connected"


def test_serve_health_as_the_docs_use_it() -> None:
    """``async with await serve_health(...)`` (docs/guard.md): any free port, closed on exit."""
    from aio_pika.connection import make_url

    from hangproof.aio import GuardedRobustConnection, serve_health

    async def main() -> int:
        conn = GuardedRobustConnection(make_url("amqp://guest:guest@127.0.0.1:1/"))
        policy = Policy(stall_timeout=2.0)
        async with await serve_health(conn, ["tasks"], port=0, policy=policy) as health:
            assert health.url == f"http://127.0.0.1:{health.port}"
            code, body, _ = await asyncio.to_thread(_get, health.port, "/livez")
            assert code == 200 and body["state"] == "reconnecting"
            return health.port

    port = asyncio.run(main())
    with pytest.raises(OSError):
        _get(port, "/livez")


# -- the consuming probe's round, against a fake broker ------------------------

#: What RabbitMQ announces; aiormq reads it (connection.blocked).
SERVER = {
    "product": "fake",
    "capabilities": {
        "publisher_confirms": True,
        "basic.nack": True,
        "connection.blocked": True,
        "consumer_cancel_notify": True,
        "authentication_failure_close": True,
        "per_consumer_qos": True,
    },
}


@contextlib.contextmanager
def fake_broker(
    consumers: dict[str, int], canary: Canary, mode: str = "deliver"
) -> Iterator[tuple[int, list[str]]]:
    """Handshakes, answers passive declares from ``consumers`` (404 otherwise), takes publishes.

    ``deliver``: a published canary is "seen by the consumer" at once;
    ``lose``: it never is; ``blocked``: Connection.Blocked right after Open-Ok;
    ``silent``: accepts the TCP connection and never says a word.
    """
    from fake_amqp import client_frames, serving
    from pamqp import commands, frame

    from hangproof.guard.consuming import CANARY_HEADER

    stop = threading.Event()
    received: list[str] = []

    def session(conn: socket.socket, born: float) -> None:
        def send(channel: int, method: object) -> None:
            conn.sendall(frame.marshal(method, channel))

        conn.settimeout(5)
        conn.recv(8)  # the protocol header
        if mode == "silent":
            stop.wait(10)
            conn.close()
            return
        conn.settimeout(0.1)
        send(0, commands.Connection.Start(server_properties=SERVER, mechanisms="PLAIN"))
        answers = {
            "Connection.StartOk": commands.Connection.Tune(0, 131072, 0),
            "Channel.Open": commands.Channel.OpenOk(),
            "Connection.Close": commands.Connection.CloseOk(),
        }
        for channel, name, value in client_frames(conn, stop, born):
            received.append(name)
            if name == "Connection.Open":
                send(0, commands.Connection.OpenOk())
                if mode == "blocked":
                    send(0, commands.Connection.Blocked(reason="low on memory"))
            elif name == "Queue.Declare":
                if value.queue in consumers:
                    ok = commands.Queue.DeclareOk(value.queue, 0, consumers[value.queue])
                    send(channel, ok)
                else:
                    close = commands.Channel.Close(
                        404, f"NOT_FOUND - no queue '{value.queue}'", 50, 10
                    )
                    send(channel, close)
            elif name == "ContentHeader" and mode == "deliver":
                canary.seen((value.properties.headers or {}).get(CANARY_HEADER))
            elif name in answers:
                send(channel, answers[name])
        conn.close()

    with serving(session, stop) as port:
        yield port, received


def _round(port: int, canary: Canary, budget: float = 1.0) -> tuple[float, ProbeRound]:
    from hangproof.guard.aio_health import probe_once_aio

    started = time.monotonic()
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    r = probe_once_aio(url, ["tasks", "gone"], canary, budget, 1.0)
    return time.monotonic() - started, r


@pytest.mark.timeout(30)
def test_probe_round_reads_consumer_counts_and_times_the_canary() -> None:
    canary = Canary("hangproof.canary.t")
    with fake_broker({"tasks": 2, canary.queue: 1}, canary) as (port, received):
        _, r = _round(port, canary)
    assert r.reachable, r
    assert r.consumers == {"tasks": 2, "gone": None, canary.queue: 1}
    assert r.canary_sent and r.canary_rtt is not None and r.canary_rtt < 0.5, r
    assert not r.blocked
    assert received.count("Queue.Declare") == 3 and "Basic.Publish" in received
    assert received[-1] == "Connection.Close"  # the probe's connection is closed


@pytest.mark.timeout(30)
def test_probe_round_lost_canary_and_blocked_broker() -> None:
    canary = Canary("hangproof.canary.t")
    with fake_broker({"tasks": 1, canary.queue: 1}, canary, "lose") as (port, _):
        took, r = _round(port, canary, budget=1.0)
    assert r.reachable and r.canary_sent and r.canary_rtt is None, r
    assert 1.0 <= took < 1.0 + SLACK, took
    with fake_broker({"tasks": 1, canary.queue: 1}, canary, "blocked") as (port, received):
        _, r = _round(port, canary)
    # Blocked: no canary sent (aiormq would wait for unblocked), and the round says why.
    assert r.reachable and r.blocked and not r.canary_sent, r
    assert "Basic.Publish" not in received


@pytest.mark.timeout(30)
def test_probe_round_against_a_silent_listener_is_bounded() -> None:
    canary = Canary("hangproof.canary.t")
    with fake_broker({}, canary, "silent") as (port, _):
        took, r = _round(port, canary)
    assert not r.reachable and r.error and r.error.startswith("TimeoutError"), r
    assert took < 1.0 + SLACK, took
