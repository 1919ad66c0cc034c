"""The health contract (guard/health.py) on recorded timelines, the bounded prober, and check-worker --probe.

Pure logic: no broker. The timelines are what the lab records (a broker
outage, a lost consumer, a wedged loop, a memory alarm, a busy solo pool).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from hangproof.failure import Policy
from hangproof.guard.consuming import Canary, Prober
from hangproof.guard.health import HealthInputs, ProbeRound, assess
from hangproof.guard.runtime import GuardState, LivenessServer
from hangproof.guard.watchdog import Observation, decide

P = Policy(stall_timeout=3)  # recover_timeout 12 s
CLI = [sys.executable, "-m", "hangproof.cli"]


def ok_round(at: float, consumers: dict[str, int | None] | None = None) -> ProbeRound:
    return ProbeRound(
        at=at,
        reachable=True,
        consumers={"q": 1, "canary": 1} if consumers is None else consumers,
        canary_sent=True,
        canary_rtt=0.02,
    )


def down_round(at: float) -> ProbeRound:
    return ProbeRound(at=at, reachable=False, error="HandshakeDeadlineExceeded: 1.5 s")


def connected(now: float, since: float = 0.0) -> tuple[float, object]:
    obs = Observation(
        now=now, connected=True, state_since=since, last_inbound_frame_at=now - 0.5,
        last_loop_tick_at=now - 0.1,
    )  # fmt: skip
    return now, decide(obs, P)


def disconnected(now: float, since: float) -> object:
    return decide(Observation(now=now, connected=False, state_since=since), P)


def test_healthy_worker_is_live_ready_consuming() -> None:
    now, d = connected(100.0)
    h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=(ok_round(99.0),)), P)
    assert (h.live, h.ready, h.consuming) == (True, True, True)
    assert h.queues == {"q": True, "canary": True}


@pytest.mark.parametrize("down_for", [1.0, 11.0, 13.0, 60.0, 600.0])
def test_broker_outage_is_never_a_liveness_failure(down_for: float) -> None:
    """However long the broker is down: not ready, not consuming, but live (no restart storm)."""
    now = 1000.0
    d = disconnected(now, now - down_for)
    rounds = tuple(down_round(now - k * 3.0) for k in range(int(min(down_for, 60) // 3) + 1))
    h = assess(HealthInputs(now=now, decision=d, connected=False, rounds=rounds), P)
    assert h.live, h.live_reason
    assert not h.ready and not h.consuming
    # The watchdog's own verdict (/healthz) does fail after recover_timeout:
    assert d.healthy == (down_for <= 12.0)


def test_a_good_round_from_before_a_disconnect_proves_nothing() -> None:
    """Measured in the lab: /consumingz said 200 for 4.5 s of a blackhole before this rule."""
    d = disconnected(100.0, 98.0)
    h = assess(HealthInputs(now=100.0, decision=d, connected=False, rounds=(ok_round(96.0),)), P)
    assert not h.consuming and "not consuming now" in h.consuming_reason
    assert h.live and not h.ready


def test_outage_without_probe_data_stays_live() -> None:
    d = disconnected(100.0, 0.0)
    h = assess(HealthInputs(now=100.0, decision=d, connected=False), P)
    assert h.live and not h.ready and not h.consuming


def test_connected_but_broker_unreachable_from_fresh_connection_is_not_ready() -> None:
    """A blackhole the worker's own link has not noticed yet: readiness fails first."""
    now, d = connected(100.0)
    rounds = (ok_round(95.0), down_round(99.0))
    h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=rounds), P)
    assert h.live and not h.ready and not h.consuming


def test_queue_without_consumer_while_broker_reachable_fails_liveness_after_recover() -> None:
    now = 200.0
    _, d = connected(now)
    lost = {"q": 0, "canary": 1}
    early = tuple(ok_round(t, lost) for t in (190.0, 193.0, 196.0, 199.0))
    h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=early), P)
    assert h.live, "within recover_timeout the consumer may still come back"
    assert not h.ready and not h.consuming and h.queues["q"] is False
    late = tuple(ok_round(t, lost) for t in (186.0, 190.0, 193.0, 196.0, 199.0))
    h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=late), P)
    assert not h.live and "q: 0 consumers" in h.live_reason


def test_missing_queue_counts_as_no_consumer() -> None:
    now = 200.0
    _, d = connected(now)
    rounds = tuple(ok_round(t, {"q": None, "canary": 1}) for t in (180.0, 190.0, 199.0))
    h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=rounds), P)
    assert not h.live and "no such queue" in h.live_reason


def test_one_good_round_resets_the_clock() -> None:
    now = 200.0
    _, d = connected(now)
    bad = {"q": 0, "canary": 1}
    rounds = (ok_round(180.0, bad), ok_round(185.0, bad), ok_round(190.0), ok_round(199.0, bad))
    h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=rounds), P)
    assert h.live and h.not_consuming_for == 1.0


def test_disconnected_while_broker_reachable_fails_liveness() -> None:
    """The consumer will not come back on its own: the broker answers, the canary queue is gone."""
    now = 300.0
    d = disconnected(now, 270.0)
    gone = {"q": 0, "canary": None}
    rounds = tuple(
        ProbeRound(at=t, reachable=True, consumers=gone) for t in (280.0, 285.0, 290.0, 299.0)
    )
    h = assess(HealthInputs(now=now, decision=d, connected=False, rounds=rounds), P)
    assert not h.live and not h.ready


def test_canary_lost_while_broker_reachable_fails_liveness() -> None:
    now = 300.0
    _, d = connected(now)
    rounds = tuple(
        ProbeRound(at=t, reachable=True, consumers={"q": 1, "c": 1}, canary_sent=True)
        for t in (280.0, 290.0, 299.0)
    )
    h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=rounds), P)
    assert not h.live and "canary" in h.live_reason


@pytest.mark.parametrize("why", ["round-blocked", "process-blocked", "busy-solo"])
def test_lost_canary_is_excused_by_a_memory_alarm_or_a_busy_solo_loop(why: str) -> None:
    now = 300.0
    _, d = connected(now)
    rounds = tuple(
        ProbeRound(
            at=t, reachable=True, consumers={"q": 1, "c": 1}, canary_sent=True,
            blocked=why == "round-blocked",
        )
        for t in (270.0, 280.0, 290.0, 299.0)
    )  # fmt: skip
    h = assess(
        HealthInputs(
            now=now, decision=d, connected=True, rounds=rounds,
            blocked=why == "process-blocked", busy_in_loop=why == "busy-solo",
        ),
        P,
    )  # fmt: skip
    assert h.live, h.live_reason
    assert not h.consuming  # not proven, but not blamed on the consumer


def test_wedged_loop_after_forced_reconnect_fails_liveness_whatever_the_broker() -> None:
    now = 100.0
    obs = Observation(
        now=now, connected=True, state_since=0.0, last_inbound_frame_at=80.0,
        last_loop_tick_at=80.0, forced_reconnect_at=85.0,
    )  # fmt: skip
    d = decide(obs, P)
    for rounds in ((down_round(99.0),), (ok_round(99.0),), ()):
        h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=rounds), P)
        assert not h.live and "never came back" in h.live_reason
        assert not h.ready


def test_loop_stalled_past_recover_timeout_fails_liveness_whatever_the_broker() -> None:
    """asyncio (hangproof.aio.serve_health): the loop's delay, measured from outside it."""
    now = 100.0
    obs = Observation(
        now=now, connected=True, state_since=0.0, last_inbound_frame_at=85.0,
        last_loop_tick_at=87.0,
    )  # fmt: skip
    d = decide(obs, P)  # a late loop: "not ready", no forced reconnect (nothing acts)
    for rounds in ((down_round(99.0),), (ok_round(99.0),), ()):
        early = HealthInputs(now=now, decision=d, connected=True, rounds=rounds,
                             loop_stalled_for=11.9)  # fmt: skip
        h = assess(early, P)
        assert h.live and not h.ready, h
        late = HealthInputs(now=now, decision=d, connected=True, rounds=rounds,
                            loop_stalled_for=12.1)  # fmt: skip
        h = assess(late, P)
        assert not h.live and h.live_reason.startswith("event loop stalled for 12.1 s"), h
        # Celery passes None: its verdict is the forced-reconnect rule's, unchanged.
        h = assess(HealthInputs(now=now, decision=d, connected=True, rounds=rounds), P)
        assert h.live, h


def test_stale_probe_proves_nothing() -> None:
    now, d = connected(100.0)
    h = assess(
        HealthInputs(
            now=now, decision=d, connected=True, rounds=(ok_round(50.0),), probe_interval=3
        ),
        P,
    )
    assert not h.consuming and h.consuming_reason == "no recent probe round"
    assert h.live and h.ready


def test_canary_wait_is_bounded_and_thread_safe() -> None:
    canary = Canary("c")
    token = canary.arm()
    started = time.monotonic()
    assert not canary.wait(token, 0.3)
    assert 0.25 <= time.monotonic() - started < 2
    threading.Timer(0.1, canary.seen, (token,)).start()
    assert canary.wait(token, 5)


def test_prober_round_never_outlasts_its_deadline() -> None:
    """A round stuck on a dead path is cut at the deadline; no second one piles up behind it."""
    release = threading.Event()
    calls = []

    def stuck() -> ProbeRound:
        calls.append(1)
        release.wait(30)
        return ok_round(time.monotonic())

    prober = Prober(stuck, lambda r: None, interval=0.1, deadline=0.5)
    try:
        started = time.monotonic()
        first = prober.round()
        assert time.monotonic() - started < 2
        assert not first.reachable and "deadline" in (first.error or "")
        second = prober.round()
        assert "still stuck" in (second.error or "") and len(calls) == 1
    finally:
        release.set()


def test_endpoints_and_metrics() -> None:
    state = GuardState(P)
    state.queues = ("q",)
    state.record_round(down_round(time.monotonic()))
    server = LivenessServer(state, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        body = json.loads(urllib.request.urlopen(base + "/livez", timeout=5).read())
        assert body["live"] is True and body["probe"]["reachable"] is False
        for path in ("/readyz", "/consumingz"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path, timeout=5)
            assert err.value.code == 503
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "hangproof_live 1.0" in metrics
        assert "hangproof_ready 0.0" in metrics
        assert 'hangproof_consuming{queue="q"} 0.0' in metrics
    finally:
        server.close()


def run_cli(*args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [*CLI, "check-worker", *args], capture_output=True, text=True, timeout=20, check=False
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.timeout(90)
def test_check_worker_probe_modes() -> None:
    state = GuardState(P)
    state.queues = ("q",)
    state.record_round(down_round(time.monotonic()))
    server = LivenessServer(state, "127.0.0.1", 0)
    try:
        port = str(server.port)
        code, out, _ = run_cli("--port", port, "--probe", "liveness", "--json", "--timeout", "3")
        assert code == 0 and json.loads(out)["probe"] == "liveness"
        assert json.loads(out)["checks"][0]["source"].endswith("/livez")
        code, out, _ = run_cli("--port", port, "--probe", "readiness", "--json", "--timeout", "3")
        assert code == 1 and "unreachable" in json.loads(out)["checks"][0]["reason"]
        code, _, err = run_cli("--port", port, "--probe", "consuming", "--timeout", "3")
        assert code == 1 and err.startswith("UNHEALTHY") and len(err.strip().splitlines()) == 1
    finally:
        server.close()


@pytest.mark.parametrize(
    "args",
    [
        ("--port", "1", "--probe", "bogus"),
        ("--port", "1", "--probe", "liveness", "--path", "/readyz"),
        ("--heartbeat-file", "/nonexistent", "--probe", "consuming"),
    ],
)
def test_check_worker_probe_usage_errors(args: tuple[str, ...]) -> None:
    code, _, err = run_cli(*args, "--timeout", "2")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
