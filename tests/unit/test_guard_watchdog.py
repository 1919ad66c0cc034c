"""The watchdog's decisions, from clocks alone."""

from __future__ import annotations

import socket

import pytest
from amqp.exceptions import ConnectionForced, ResourceLocked

from hangproof.failure import Policy
from hangproof.guard.runtime import GuardState, force_reconnect
from hangproof.guard.transport import HandshakeDeadlineExceeded
from hangproof.guard.watchdog import Action, Detection, Observation, classify_error, decide

P = Policy(stall_timeout=3)  # recover_timeout 12


def obs(**kw: object) -> Observation:
    base: dict[str, object] = dict(
        now=100.0,
        connected=True,
        state_since=50.0,
        last_inbound_frame_at=99.0,
        last_loop_tick_at=99.8,
    )
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_healthy_link_is_ready() -> None:
    d = decide(obs(), P)
    assert (d.action, d.healthy, d.ready) == (Action.NONE, True, True)


def test_silent_link_forces_reconnect() -> None:
    d = decide(obs(last_inbound_frame_at=100.0 - P.silence_limit - 0.1), P)
    assert d.action is Action.FORCE_RECONNECT and d.detection is Detection.LINK_SILENT
    assert d.healthy  # recovering is not dead


def test_exactly_at_bound_is_not_a_stall() -> None:
    at_bound = 100.0 - P.silence_limit + 1e-9  # float subtraction may overshoot by an ulp
    assert decide(obs(last_inbound_frame_at=at_bound), P).action is Action.NONE


def test_detection_fits_inside_stall_timeout() -> None:
    # The watchdog looks every watchdog_interval on a clock that may lag by one
    # more: acting at silence_limit keeps the promise "within stall_timeout".
    for stall in (3, 15, 60):
        p = Policy(stall_timeout=stall)
        assert p.silence_limit + 2 * p.watchdog_interval <= p.stall_timeout
        # ... and stays well above the heartbeat gap, so a healthy link is never stalled.
        assert p.silence_limit > p.heartbeat / 2 + 0.5


def test_frozen_loop_forces_reconnect() -> None:
    d = decide(obs(last_loop_tick_at=100.0 - P.silence_limit - 0.1), P)
    assert d.detection is Detection.LOOP_STALLED


def test_fresh_connection_uses_connect_time_not_old_frames() -> None:
    # The frame clock of the previous connection must not count against a new one.
    d = decide(obs(state_since=99.5, last_inbound_frame_at=10.0, last_loop_tick_at=None), P)
    assert d.action is Action.NONE


def test_solo_pool_task_is_not_a_stall() -> None:
    d = decide(obs(last_inbound_frame_at=60.0, last_loop_tick_at=60.0, busy_in_loop=True), P)
    assert d.action is Action.NONE and d.healthy and not d.ready


def test_forced_reconnect_that_never_completes_turns_unhealthy() -> None:
    assert decide(obs(forced_reconnect_at=95.0), P).healthy
    d = decide(obs(forced_reconnect_at=87.9), P)
    assert not d.healthy and d.action is Action.NONE


def test_reconnecting_is_healthy_until_recover_timeout() -> None:
    assert decide(obs(connected=False, state_since=90.0), P).healthy
    d = decide(obs(connected=False, state_since=87.0), P)
    assert not d.healthy and not d.ready


def test_classify_errors() -> None:
    assert (
        classify_error(ConnectionForced("Too many heartbeats missed")) is Detection.HEARTBEAT_MISSED
    )
    assert classify_error(ResourceLocked(reply_text="x")) is Detection.RESOURCE_LOCKED
    assert classify_error(HandshakeDeadlineExceeded()) is Detection.HANDSHAKE_DEADLINE
    assert classify_error(TimeoutError()) is Detection.SOCKET_TIMEOUT
    assert classify_error(ConnectionResetError()) is Detection.CONNECTION_ERROR


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_state_forces_one_reconnect_and_counts_it() -> None:
    clock = FakeClock()
    state = GuardState(P, clock=clock)
    a, b = socket.socketpair()

    class AmqpConn:
        last_inbound_frame_at = clock.now

        class _transport:
            sock = a

    def kombu_conn() -> object:
        # A real kombu Connection (its private slot is what the guard reads,
        # checked by hangproof.guard.upstream); only py-amqp's side is a fake.
        import kombu

        conn = kombu.Connection("amqp://127.0.0.1:1//")
        conn._connection = AmqpConn()
        return conn

    state.on_connected(kombu_conn())
    clock.now += 1
    state.tick_loop()
    assert state.check().ready
    clock.now += 2.5  # frames 3.5 s old
    state.tick_loop()
    d = state.check()
    assert d.detection is Detection.LINK_SILENT
    assert b.recv(1) == b""  # the socket was shut down: readers see EOF
    clock.now += 1
    assert state.check().action is Action.NONE  # only once per connection
    state.on_connection_error(ConnectionResetError(), Detection.CONNECTION_ERROR)
    state.on_connected(kombu_conn())
    assert state.m_reconnects._value.get() == 1
    assert state.m_stalls.labels(detection="link-silent")._value.get() == 1
    assert state.m_stalls.labels(detection="connection-error")._value.get() == 0  # forced
    kinds = [e["kind"] for e in state.events]
    assert kinds == [
        "connected",
        "stall-detected",
        "connection-error",
        "disconnected",
        "reconnected",
    ]
    a.close()
    b.close()


def test_force_reconnect_without_socket() -> None:
    assert force_reconnect(None) is False


def test_broker_showing_no_consumer_forces_a_reconnect_even_with_a_fresh_link() -> None:
    # client-freeze x gevent (measured): after SIGCONT the link clock looked
    # fresh and the loop ticked, but the broker had dropped the consumer.
    p = Policy(stall_timeout=4)
    fresh = Observation(
        now=100.0, connected=True, state_since=50.0, last_inbound_frame_at=99.9,
        last_loop_tick_at=99.9, unconsumed=("q1",),
    )  # fmt: skip
    d = decide(fresh, p)
    assert (d.action, d.detection) == (Action.FORCE_RECONNECT, Detection.NOT_CONSUMING)
    assert "q1" in d.reason and d.healthy and not d.ready
    # Already forced: wait for it (no second force), as for any other stall.
    pending = Observation(**{**fresh.__dict__, "forced_reconnect_at": 99.0})
    assert decide(pending, p).action is Action.NONE


def test_unconsumed_queues_counts_only_rounds_begun_after_connecting() -> None:
    from hangproof.guard.health import ProbeRound
    from hangproof.guard.runtime import CONSUME_GRACE

    now = [100.0]
    state = GuardState(Policy(stall_timeout=4), clock=lambda: now[0])
    state.queues = ("q1", "q2")
    state.on_connected(None)  # state_since = 100
    # A round that started before the connection was up says nothing.
    state.record_round(ProbeRound(at=100.5, reachable=True, consumers={"q1": 0, "q2": 1},
                                  seconds=1.0))  # fmt: skip
    assert state.unconsumed_queues() == ()
    assert state.forced_reconnect_at is None
    # Broker blocked, or unreachable: no verdict on the consumer either.
    start = 100.0 + CONSUME_GRACE + 0.5
    for kwargs in ({"blocked": True}, {"reachable": False}):
        r = {"reachable": True, **kwargs}
        state.record_round(ProbeRound(at=start + 1, consumers={"q1": 0}, seconds=1.0, **r))
        assert state.unconsumed_queues() == ()
    # Begun after connecting, reachable, q1 without a consumer: forced at once.
    now[0] = start + 1
    state.record_round(ProbeRound(at=start + 1, reachable=True, consumers={"q1": 0, "q2": 2},
                                  seconds=1.0))  # fmt: skip
    assert state.unconsumed_queues() == ("q1",)
    assert state.forced_reconnect_at == now[0]
    kinds = [e["kind"] for e in state.events]
    assert "stall-detected" in kinds
    detected = [e for e in state.events if e["kind"] == "stall-detected"][-1]
    assert detected["detection"] == "not-consuming"
    # Reconnected: the old round no longer counts.
    now[0] += 2
    state.on_connected(None)
    assert state.unconsumed_queues() == ()


def test_a_forced_reconnect_that_does_not_take_closes_the_socket_under_gevent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    from hangproof.guard.runtime import ESCALATE_AFTER

    class FakeSocket:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def shutdown(self, how: int) -> None:
            self.calls.append("shutdown")

        def close(self) -> None:
            self.calls.append("close")

    sock = FakeSocket()
    connection = types.SimpleNamespace(_transport=types.SimpleNamespace(sock=sock))
    now = [100.0]
    state = GuardState(Policy(stall_timeout=4), clock=lambda: now[0])
    state.on_connected(connection)
    state.forced_reconnect_at = now[0]
    # Real threads: never closed, however long the reconnect is pending.
    monkeypatch.delitem(sys.modules, "gevent.monkey", raising=False)
    now[0] += ESCALATE_AFTER + 0.5
    state.check()
    assert "close" not in sock.calls
    state.escalated = False
    # gevent-patched: closed once, after ESCALATE_AFTER, and only once.
    fake = types.ModuleType("gevent.monkey")
    fake.is_module_patched = lambda name: name == "socket"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gevent.monkey", fake)
    state.check()
    state.check()
    assert sock.calls.count("close") == 1
    assert any(e["kind"] == "force-reconnect-escalated" for e in state.events)
    # A new connection re-arms it.
    state.on_connected(connection)
    assert state.escalated is False


def test_a_connection_coming_up_during_a_watchdog_round_is_neither_torn_nor_shut() -> None:
    """The watchdog thread and the consumer thread share GuardState.

    CI (test_prefork_outage_queue_delete_and_wedge): right after a broker
    outage healed, /livez said 503 for one watchdog period. Read field by
    field, a round could pair ``connected`` of the new connection with
    ``forced_reconnect_at`` of the old one ("forced a reconnect 18 s ago and
    the connection never came back"), and a stall decided on the old
    connection was acted on against the new one. Here the new connection
    comes up in the middle of the round (from the frame clock the round reads).
    """
    now = [100.0]
    state = GuardState(P, clock=lambda: now[0])
    a, b = socket.socketpair()

    class Old:
        last_inbound_frame_at = 100.0

    class New:
        last_inbound_frame_at: float | None = None

        class _transport:
            sock = a

    def kombu_conn(amqp: object) -> object:
        import kombu

        conn = kombu.Connection("amqp://127.0.0.1:1//")
        conn._connection = amqp
        return conn

    state.on_connected(kombu_conn(Old()))
    now[0] = 110.0  # the old link silent for 10 s: a stall, forced below
    state.forced_reconnect_at = None
    came_up: list[bool] = []
    original = state._frame_clock

    def frame_clock() -> float | None:
        read = original()  # the old link's clock: 10 s silent
        if not came_up:  # then the consumer thread connects, mid-round
            came_up.append(True)
            New.last_inbound_frame_at = now[0]
            state.on_connected(kombu_conn(New()))
        return read

    state._frame_clock = frame_clock  # type: ignore[method-assign]
    d = state.check()
    assert came_up
    assert state.forced_reconnect_at is None, "a stall of the old link was pinned on the new one"
    a.setblocking(False)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # the new connection's socket was not shut down
    assert d.healthy and d.ready, d.reason  # decided again, on the new connection
    a.close()
    b.close()


def test_livez_right_after_a_reconnect_that_ends_a_long_outage_says_live() -> None:
    """The watchdog's last decision was made while the worker was down.

    CI (test_prefork_outage_queue_delete_and_wedge): ~1 s after a 20 s broker
    outage healed, /livez said 503: the HTTP answer combined the watchdog's
    last decision ("no broker connection for 19.0 s", unhealthy) with
    ``connected`` read at request time (True: the consumer had just come
    back), which is the "connected and unhealthy" case. Found by the aio
    health helper with this recipe; fails on the code before the fix.
    """
    now = [100.0]
    state = GuardState(P, clock=lambda: now[0])
    state.on_connected(None)
    state.on_disconnected("blackhole")
    now[0] += 19.0  # > recover_timeout 12
    assert not state.check().healthy  # the watchdog's round while down
    state.on_connected(None)  # the consumer is back before the next round
    body = state.contract()
    assert body["live"] is True, body["live_reason"]
    assert body["ready"] is True, body["ready_reason"]
