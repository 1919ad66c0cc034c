"""The guard at run time: clocks, the watchdog thread, metrics and the liveness server.

One :class:`GuardState` per Celery consumer. The Celery bootstep tells it when
the consumer connects and disconnects and ticks its loop clock; a watchdog
thread applies :func:`hangproof.guard.watchdog.decide` every
``policy.watchdog_interval`` seconds and shuts the consumer's socket down when
the link is silent, which makes Celery's own recovery path reconnect. The
opt-in HTTP server answers ``/livez``, ``/readyz``, ``/consumingz``,
``/healthz`` (the watchdog's own verdict, as before) and ``/metrics``; the
health contract behind the first three is :mod:`hangproof.guard.health`.

Every detection and reconnect is logged on the ``hangproof.guard`` logger and
kept (with wall-clock timestamps) in ``/healthz``'s ``events``, so the lab can
measure time-to-detect and time-to-resume from the outside.

    >>> from hangproof.failure import Policy
    >>> state = GuardState(Policy(stall_timeout=3))
    >>> state.health()["state"]
    'reconnecting'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hangproof.credentials import mask_url
from hangproof.failure import Policy
from hangproof.guard import upstream
from hangproof.guard.consuming import Canary
from hangproof.guard.health import Health, HealthInputs, ProbeRound, assess
from hangproof.guard.watchdog import Action, Decision, Detection, Observation, decide
from hangproof.http_endpoint import NOT_FOUND, EndpointServer

logger = logging.getLogger("hangproof.guard")

#: Events kept for /healthz; enough for a fault-matrix cell, bounded in memory.
MAX_EVENTS = 200
#: Seconds a forced reconnect may stay pending before the socket is closed
#: outright (green workers only, see :func:`close_socket_under_gevent`).
ESCALATE_AFTER = 1.0
#: A probe round must start this long after the consumer connected before its
#: "no consumer" counts against the connection (Basic.Consume in flight).
CONSUME_GRACE = 1.0


@dataclass(frozen=True)
class LivenessConfig:
    """Where the worker serves its health (both opt-in).

    >>> LivenessConfig(port=9808).host
    '127.0.0.1'
    """

    port: int | None = None
    host: str = "127.0.0.1"
    heartbeat_file: Path | None = None


class GuardState:
    """Clocks, counters and the latest decision of one guarded consumer."""

    #: The watchdog acts on a stall (shuts the consumer's socket down). A
    #: subclass whose consumer recovers by other means only reports.
    acts = True

    def __init__(
        self,
        policy: Policy,
        *,
        busy_in_loop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.policy = policy
        self._busy_in_loop = busy_in_loop
        self._clock = clock
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self.connection: Any = None
        self.connected = False
        self.ever_connected = False
        self.state_since = clock()
        self.last_loop_tick_at: float | None = None
        self.forced_reconnect_at: float | None = None
        self.escalated = False
        self.resource_locked_streak = 0
        self.last_decision: Decision | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.started_at = time.time()
        self.pid = os.getpid()

        self.registry = CollectorRegistry(auto_describe=True)
        self.m_state = Enum(
            "hangproof_connection_state",
            "Broker connection state of the consumer",
            states=["connected", "reconnecting"],
            registry=self.registry,
        )
        self.m_state.state("reconnecting")
        self.m_stalls = Counter(
            "hangproof_stalls_detected",
            "Stalls and connection losses detected, by how they were detected",
            ["detection"],
            registry=self.registry,
        )
        for detection in Detection:
            self.m_stalls.labels(detection=detection.value)
        self.m_reconnects = Counter(
            "hangproof_reconnects", "Broker connections re-established", registry=self.registry
        )
        self.m_forced = Counter(
            "hangproof_forced_reconnects",
            "Reconnects forced by the watchdog (socket shut down)",
            registry=self.registry,
        )
        self.m_frame_age = Gauge(
            "hangproof_last_inbound_frame_age_seconds",
            "Seconds since the last frame from the broker on the consumer connection",
            registry=self.registry,
        )
        self.m_frame_age.set_function(lambda: self._age(self._frame_clock()))
        self.m_loop_age = Gauge(
            "hangproof_event_loop_tick_age_seconds",
            "Seconds since the worker's event loop last ran the guard's tick",
            registry=self.registry,
        )
        self.m_loop_age.set_function(lambda: self._age(self.last_loop_tick_at))
        # connection.blocked (RabbitMQ resource alarm) on any guarded
        # connection of this process: reported, never a liveness failure (a
        # consumer keeps consuming while publishers are blocked).
        self.blocked: dict[int, tuple[str, float]] = {}
        self.m_blocked = Gauge(
            "hangproof_broker_blocked",
            "1 while the broker blocks publishing on a guarded connection (connection.blocked)",
            registry=self.registry,
        )
        self.m_blocked.set_function(lambda: 1.0 if self.blocked else 0.0)
        self.m_blocked_total = Counter(
            "hangproof_broker_blocked_events",
            "connection.blocked notifications received (resource alarms)",
            registry=self.registry,
        )
        self.m_healthy = Gauge("hangproof_healthy", "1 if live", registry=self.registry)
        self.m_ready = Gauge("hangproof_ready", "1 if ready", registry=self.registry)
        # The health contract (guard/health.py): /livez, /readyz, /consumingz.
        self.m_live = Gauge(
            "hangproof_live",
            "1 unless the worker is wedged and a restart would help (/livez)",
            registry=self.registry,
        )
        self.m_live.set(1)
        self.m_consuming = Gauge(
            "hangproof_consuming",
            "1 if the broker shows a consumer on the queue and the worker's canary came back",
            ["queue"],
            registry=self.registry,
        )
        self.m_canary_rtt = Gauge(
            "hangproof_canary_round_trip_seconds",
            "Seconds the last canary took through the broker and the worker's consumer (-1: lost)",
            registry=self.registry,
        )
        self.m_canary_rtt.set(-1)
        #: Consuming probe (guard/consuming.py), set by the bootstep that runs it.
        self.rounds: deque[ProbeRound] = deque(maxlen=64)
        self.queues: tuple[str, ...] = ()
        self.canary: Canary | None = None
        self.probe_interval = max(1.0, float(policy.stall_timeout))
        self.probe_deadline = float(
            policy.handshake_deadline or policy.stall_timeout / 2
        ) + 2.0 * float(policy.stall_timeout)
        self.last_health: Health | None = None

    # -- inputs from the bootstep ------------------------------------------
    def _age(self, at: float | None) -> float:
        return -1.0 if at is None else max(0.0, self._clock() - at)

    def _frame_clock(self) -> float | None:
        if self.connection is None:
            return None
        # Imported here, not at the top: hangproof.aio's health state
        # (guard/aio_health.py) subclasses GuardState where kombu and py-amqp
        # need not be installed.
        from hangproof.guard.transport import last_inbound_frame_at

        return last_inbound_frame_at(self.connection)

    def event(self, kind: str, **detail: Any) -> None:
        """Record an event with wall and monotonic time, and log it."""
        # /healthz and the heartbeat file show these: a repr(exc) may carry the URL.
        detail = {k: mask_url(v) if isinstance(v, str) else v for k, v in detail.items()}
        record = {"at": time.time(), "monotonic": self._clock(), "kind": kind, **detail}
        self.events.append(record)
        logger.warning("hangproof.guard: %s %s", kind, json.dumps(detail, default=str))

    def tick_loop(self) -> None:
        """Called from the worker's event loop (timer): the loop makes progress."""
        self.last_loop_tick_at = self._clock()

    def on_connected(self, connection: Any) -> None:
        """The consumer is connected and consuming again."""
        now = self._clock()
        with self._lock:
            down_for = now - self.state_since
            self.connection = connection
            self.connected = True
            self.state_since = now
            self.last_loop_tick_at = now
            self.forced_reconnect_at = None
            self.escalated = False
            self.resource_locked_streak = 0
            reconnect = self.ever_connected
            self.ever_connected = True
        self.m_state.state("connected")
        if reconnect:
            self.m_reconnects.inc()
            self.event("reconnected", down_seconds=round(down_for, 3))
        else:
            self.event("connected", startup_seconds=round(down_for, 3))

    def on_disconnected(self, reason: str) -> None:
        """The consumer lost (or gave up) its connection."""
        with self._lock:
            if not self.connected:
                return
            self.connected = False
            self.connection = None
            self.state_since = self._clock()
        self.m_state.state("reconnecting")
        self.event("disconnected", reason=reason)

    def on_connection_error(self, exc: BaseException, detection: Detection) -> None:
        """Celery is about to recover from ``exc``; count how it was detected."""
        from hangproof.guard.transport import note_path_fault

        forced = self.forced_reconnect_at is not None
        if detection is not Detection.RESOURCE_LOCKED:
            # The connections opened before now may share the dead path:
            # their teardown abandons the socket instead of waiting.
            note_path_fault(detection.value)
        if not forced:  # the watchdog already counted the stall it forced
            self.m_stalls.labels(detection=detection.value).inc()
        if detection is Detection.RESOURCE_LOCKED:
            self.resource_locked_streak += 1
        self.event("connection-error", detection=detection.value, error=repr(exc), forced=forced)
        self.on_disconnected(f"{detection.value}: {exc!r}")

    def on_blocked_event(self, event: str, reason: str, connection_id: int) -> None:
        """A guarded connection was blocked / unblocked by the broker (transport listener)."""
        with self._lock:
            if event == "blocked":
                self.blocked[connection_id] = (reason, self._clock())
            elif self.blocked.pop(connection_id, None) is None:
                return
        if event == "blocked":
            self.m_blocked_total.inc()
            self.event("broker-blocked", reason=reason)
        else:
            self.event("broker-unblocked", reason=reason)

    def blocked_status(self) -> dict[str, Any] | None:
        """The oldest current block, for /healthz (None when not blocked)."""
        with self._lock:
            if not self.blocked:
                return None
            reason, since = min(self.blocked.values(), key=lambda item: item[1])
            count = len(self.blocked)
        return {"reason": reason, "seconds": round(self._age(since), 3), "connections": count}

    # -- the watchdog ------------------------------------------------------
    def observe(self) -> Observation:
        """One consistent snapshot of the consumer's state (taken under the lock).

        Read field by field, the watchdog thread could see ``connected`` of a
        connection that had just come up next to ``forced_reconnect_at`` of
        the one before it (``on_connected`` sets one, then clears the other),
        i.e. "forced a reconnect 18 s ago and the connection never came back",
        and ``/livez`` answered 503 for a watchdog period right after a broker
        outage healed (CI, test_prefork_outage_queue_delete_and_wedge).
        """
        with self._lock:
            connected = self.connected
            state_since = self.state_since
            tick = self.last_loop_tick_at
            forced = self.forced_reconnect_at
            last = self.rounds[-1] if self.rounds else None
        return Observation(
            now=self._clock(),
            connected=connected,
            state_since=state_since,
            last_inbound_frame_at=self._frame_clock(),
            last_loop_tick_at=tick,
            busy_in_loop=connected and self._busy_in_loop(),
            forced_reconnect_at=forced,
            unconsumed=self._unconsumed(last, connected, state_since),
        )

    def unconsumed_queues(self) -> tuple[str, ...]:
        """The worker's queues the broker showed without a consumer, seen since we connected.

        From the last consuming-probe round only if it reached the broker,
        the broker was not blocking, and it *started* more than
        :data:`CONSUME_GRACE` s after the current connection came up (so the
        broker had our Basic.Consume before it counted).
        """
        with self._lock:
            last = self.rounds[-1] if self.rounds else None
            connected, state_since = self.connected, self.state_since
        return self._unconsumed(last, connected, state_since)

    def _unconsumed(
        self, last: ProbeRound | None, connected: bool, state_since: float
    ) -> tuple[str, ...]:
        if last is None or not connected or not last.reachable or last.blocked:
            return ()
        if last.at - last.seconds <= state_since + CONSUME_GRACE:
            return ()
        return tuple(q for q in self.queues if not last.consumers.get(q))

    def check(self) -> Decision:
        """One watchdog round: decide, act, publish (one round at a time)."""
        with self._check_lock:
            return self._check()

    def _check(self, again: bool = True) -> Decision:
        self._escalate_if_stuck()
        obs = self.observe()
        decision = decide(obs, self.policy)
        detection = decision.detection
        if self.acts and decision.action is Action.FORCE_RECONNECT and detection is not None:
            from hangproof.guard.transport import note_path_fault

            with self._lock:
                # Act only on the connection that was observed: one that came
                # up since is not the one found stalled.
                current = self.connected == obs.connected and self.state_since == obs.state_since
                connection = self.connection
                if current:
                    self.forced_reconnect_at = self._clock()
            if not current:
                if again:
                    return self._check(again=False)  # decide on the connection there is now
            else:
                self.m_stalls.labels(detection=detection.value).inc()
                self.m_forced.inc()
                self.event(
                    "stall-detected",
                    detection=detection.value,
                    reason=decision.reason,
                    action="force-reconnect",
                    by=threading.current_thread().name,
                )
                note_path_fault(detection.value)
                force_reconnect(connection)
        if self.last_decision is None or self.last_decision.healthy != decision.healthy:
            if not decision.healthy:
                self.event("unhealthy", reason=decision.reason)
            elif self.last_decision is not None:
                self.event("healthy-again", reason=decision.reason)
        self.last_decision = decision
        self.m_healthy.set(1 if decision.healthy else 0)
        self.assess(decision, obs)
        return decision

    def _escalate_if_stuck(self) -> None:
        """A forced reconnect that did not take within ESCALATE_AFTER: close the socket (gevent).

        Measured (client-freeze x celery-gevent+harden): after the broker had
        reset the connection, ``shutdown()`` of the consumer socket did not
        wake the main greenlet blocked in its ``recv``; gevent's own
        ``close()`` does (it cancels every greenlet waiting on the socket).
        """
        forced = self.forced_reconnect_at
        if forced is None or self.escalated or not self.connected:
            return
        if self._clock() - forced <= ESCALATE_AFTER:
            return
        self.escalated = True
        closed = close_socket_under_gevent(self.connection)
        self.event(
            "force-reconnect-escalated",
            reason=f"no reconnect {self._clock() - forced:.1f} s after the socket shutdown",
            closed=closed,
        )

    # -- the health contract -------------------------------------------------
    def record_round(self, r: ProbeRound) -> None:
        """A consuming-probe round finished (prober thread)."""
        previous = self.rounds[-1] if self.rounds else None
        with self._lock:
            self.rounds.append(r)
        if r.canary_sent:
            self.m_canary_rtt.set(-1 if r.canary_rtt is None else r.canary_rtt)
        if previous is None or previous.reachable != r.reachable:
            self.event("broker-probe", reachable=r.reachable, error=r.error)
        if self.forced_reconnect_at is None and self.unconsumed_queues():
            # Act on the broker's view at once, from this thread too: the
            # watchdog's next round would, but it need not be the one to see it.
            self.check()
            return
        self.assess()

    def assess(self, decision: Decision | None = None, obs: Observation | None = None) -> Health:
        """Live / ready / consuming now (pure logic in guard/health.py); updates the gauges.

        ``decision`` and ``obs`` come together (the watchdog's round) or not at
        all: then both are taken fresh, from one snapshot. The watchdog's last
        decision ("no broker connection for 19 s") next to ``connected`` read
        later (the consumer had just come back) is the "connected, unhealthy"
        case and said ``/livez`` 503 for up to one watchdog period after an
        outage healed (CI: test_prefork_outage_queue_delete_and_wedge).
        """
        if decision is None or obs is None:
            obs = self.observe()
            decision = decide(obs, self.policy)
        health = assess(self.health_inputs(decision, obs), self.policy)
        previous = self.last_health
        if previous is not None and previous.live != health.live:
            self.event("live" if health.live else "not-live", reason=health.live_reason)
        if previous is not None and previous.consuming != health.consuming:
            kind = "consuming" if health.consuming else "not-consuming"
            self.event(kind, reason=health.consuming_reason)
        self.last_health = health
        self.m_live.set(1 if health.live else 0)
        self.m_ready.set(1 if health.ready else 0)
        for queue in self.queues:
            self.m_consuming.labels(queue=queue).set(1 if health.queues.get(queue) else 0)
        return health

    def health_inputs(self, decision: Decision, obs: Observation) -> HealthInputs:
        """What :func:`~hangproof.guard.health.assess` decides from: ``decision`` made on ``obs``."""
        with self._lock:
            rounds = tuple(self.rounds)
        return HealthInputs(
            now=obs.now,
            decision=decision,
            connected=obs.connected,
            rounds=rounds,
            busy_in_loop=obs.busy_in_loop,
            blocked=bool(self.blocked),
            probe_interval=self.probe_interval,
            probe_deadline=self.probe_deadline,
        )

    def contract(self) -> dict[str, Any]:
        """The JSON body of /livez, /readyz and /consumingz (a superset of /healthz's)."""
        health = self.assess()
        last = self.rounds[-1] if self.rounds else None
        return {
            **self.health(),
            "live": health.live,
            "live_reason": health.live_reason,
            "ready": health.ready,
            "ready_reason": health.ready_reason,
            "consuming": health.consuming,
            "consuming_reason": health.consuming_reason,
            "queues": health.queues,
            "not_consuming_for": health.not_consuming_for,
            "probe": None
            if last is None
            else {**last.as_dict(), "age": round(self._age(last.at), 3)},
            "canary_queue": self.canary.queue if self.canary else None,
        }

    def health(self) -> dict[str, Any]:
        """The JSON body of /healthz and /readyz."""
        decision = self.last_decision or decide(self.observe(), self.policy)
        return {
            "healthy": decision.healthy,
            "ready": decision.ready,
            "state": "connected" if self.connected else "reconnecting",
            "reason": decision.reason,
            "blocked": self.blocked_status(),
            "last_inbound_frame_age": round(self._age(self._frame_clock()), 3),
            "event_loop_tick_age": round(self._age(self.last_loop_tick_at), 3),
            "stall_timeout": self.policy.stall_timeout,
            "pid": self.pid,
            "checked_at": time.time(),
            "events": list(self.events)[-20:],
        }


def force_reconnect(connection: Any) -> bool:
    """Shut the consumer's socket down so every reader sees EOF and Celery reconnects.

    ``shutdown()`` (not ``close()``) is safe from another thread: the fd stays
    valid, a read blocked in the kernel returns at once, and the loop takes
    Celery's normal connection-error path.

    >>> force_reconnect(None)
    False
    """
    from hangproof.guard.transport import shutdown_socket

    sock = upstream.consumer_socket(connection)
    if sock is None:
        return False
    try:
        shutdown_socket(sock)  # TLS: an SSLSocket's own shutdown() would crash the reader
    except OSError:
        return False
    return True


def close_socket_under_gevent(connection: Any) -> bool:
    """Close the consumer's socket if this process is gevent-patched (else do nothing).

    gevent's ``socket.close()`` cancels every greenlet waiting on the socket
    (they get ``EBADF``, an ``OSError``: Celery's connection-error path).
    With real threads closing an fd another thread reads could hand that
    thread a reused fd, so it is never done there.

    >>> close_socket_under_gevent(None)
    False
    """
    import sys

    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return False
    sock = upstream.consumer_socket(connection)
    if sock is None:
        return False
    try:
        sock.close()
    except OSError:
        return False
    return True


class Watchdog:
    """The thread that runs :meth:`GuardState.check` (bounded by ``stop()``)."""

    def __init__(self, state: GuardState, heartbeat_file: Path | None = None) -> None:
        self.state = state
        self.heartbeat_file = heartbeat_file
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hangproof-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        interval = float(self.state.policy.watchdog_interval or 1.0)
        while not self._stop.wait(interval):
            try:
                decision = self.state.check()
                # The file means "live" (the health contract): it keeps being
                # rewritten through a broker outage, so a file-based liveness
                # probe does not restart every worker while the broker is down.
                live = self.state.last_health.live if self.state.last_health else decision.healthy
                if self.heartbeat_file is not None and live:
                    write_heartbeat_file(self.heartbeat_file, self.state.health())
            except Exception:  # the watchdog must outlive any one bad round
                logger.exception("hangproof.guard: watchdog round failed")


def write_heartbeat_file(path: Path, health: dict[str, Any]) -> None:
    """Atomically replace ``path``; its mtime is what check-worker reads.

    The data goes to a fresh private file in the same directory
    (``mkstemp``: O_CREAT|O_EXCL, mode 0600, an unguessable name), then is
    renamed over ``path``, so a reader sees the old file or the new one, whole.
    No fsync, on purpose: the file only matters while this process lives (a
    crash that loses it also ends the worker), and an fsync on a slow or hung
    disk would block the watchdog thread this very file reports on. A fixed ``<path>.tmp`` name let anyone who can
    write the directory plant a symlink there and have the worker overwrite
    the file it points to; rename() replaces a symlink at ``path`` itself
    rather than following it. Keep the file in a directory only the worker
    can write (an emptyDir volume, ``/run/<app>``), not ``/tmp``.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> write_heartbeat_file(d / "worker.hb", {"healthy": True}); (d / "worker.hb").read_text()
    '{"healthy": true}'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(health, default=str))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: Path -> the key of :meth:`GuardState.contract` that decides 200 or 503.
CONTRACT_PATHS = {"/livez": "live", "/readyz": "ready", "/consumingz": "consuming"}


class LivenessServer(EndpointServer):
    """``/livez``, ``/readyz``, ``/consumingz`` (the health contract), ``/healthz``, ``/metrics``.

    ``/healthz`` is the watchdog's own verdict, unchanged: it also fails after
    ``recover_timeout`` without a connection, whatever the cause. Point a
    Kubernetes liveness probe at ``/livez``, which does not fail while the
    broker is down (docs/guard.md, "Health contract").

    >>> from hangproof.failure import Policy
    >>> server = LivenessServer(GuardState(Policy()), "127.0.0.1", 0)
    >>> server.port > 0
    True
    >>> server.close()
    """

    def __init__(self, state: GuardState, host: str, port: int) -> None:
        def route(path: str) -> tuple[int, bytes, str]:
            if path == "/metrics":
                return 200, generate_latest(state.registry), CONTENT_TYPE_LATEST
            if path in CONTRACT_PATHS:
                body = state.contract()
                return (
                    200 if body[CONTRACT_PATHS[path]] else 503,
                    json.dumps(body, default=str).encode(),
                    "application/json",
                )
            if path == "/healthz":
                health = state.health()
                ok = health["healthy"]
                return (
                    200 if ok else 503,
                    json.dumps(health, default=str).encode(),
                    "application/json",
                )
            return NOT_FOUND

        super().__init__(route, host, port, name="hangproof-liveness")
