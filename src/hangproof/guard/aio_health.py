"""The health contract for an aio-pika consumer: ``/livez``, ``/readyz``, ``/consumingz``, ``/metrics``.

:func:`hangproof.aio.serve_health` (implemented here) gives a consumer built on
:func:`hangproof.aio.connect_robust` the same endpoints, JSON keys, status
codes and metrics as a hardened Celery worker, so ``hangproof check-worker
--probe liveness|readiness|consuming`` and the same Kubernetes probes work
unchanged (aio-pika#588: "workers that fail loudly so Kubernetes can act").
The verdicts are the pure :func:`hangproof.guard.health.assess` (no second
copy of the rules); this module only feeds it:

- **from the consumer's event loop**, a tick every ``watchdog_interval``
  (:meth:`AioGuardState.on_loop_tick`): the loop runs, and whether aio-pika
  has a live link (connected / reconnecting, and since when);
- **from outside the loop**, read by the health threads: the link's last
  frame time (aiormq's clock, the one the silence watchdog acts on), and how
  long the loop is overdue for its tick (``loop_stalled_for``: a loop that has
  not run for ``recover_timeout`` is a wedge, whatever the broker does);
- **the consuming probe** (:func:`probe_once_aio`), every ``stall_timeout`` on
  its own short-lived connection in its own thread and its own event loop
  (never the consumer's connection, never its loop): a passive
  ``queue_declare`` per queue (the broker's consumer count) and a canary
  published to a private canary queue that the consumer's connection
  consumes (on a robust channel of its own, restored by aio-pika with the
  rest), so a canary that comes back proves that this loop reads this link.

The HTTP server (:class:`~hangproof.guard.runtime.LivenessServer`) and the
watchdog and prober threads are the Celery side's own: they live on threads,
so a wedged loop cannot stop them answering, and they answer from the last
probe round and the last tick, never waiting on the broker. The state does
not act on what it sees: the consumer's own silence watchdog
(:func:`hangproof.aio.connect_robust`) closes a silent link and aio-pika
reconnects and restores the consumers; a loop that is wedged can only be
restarted, which is what ``/livez`` then says.

    >>> from hangproof.failure import Policy
    >>> state = AioGuardState(Policy(stall_timeout=3), connection=None, queues=["tasks"],
    ...                       canary=Canary("hangproof.canary.t"))
    >>> state.contract()["state"], state.contract()["ready"]
    ('reconnecting', False)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from hangproof.failure import Policy
from hangproof.guard import upstream
from hangproof.guard.consuming import CANARY_HEADER, Canary, Prober, _brief, canary_queue_name
from hangproof.guard.health import HealthInputs, ProbeRound
from hangproof.guard.runtime import GuardState, LivenessServer, Watchdog
from hangproof.guard.watchdog import Decision, Detection, Observation

logger = logging.getLogger("hangproof.guard")

#: The canary queue disappears this long after nobody consumes it (ms), as on
#: the Celery side; auto-delete covers a clean cancel.
CANARY_QUEUE_EXPIRES_MS = 300_000


def _link(connection: Any) -> Any:
    """aio-pika's current aiormq link (None between two links); attribute reads only."""
    transport = getattr(connection, "transport", None)
    return None if transport is None else getattr(transport, "connection", None)


def link_is_up(connection: Any) -> bool:
    """Whether ``connection`` (an aio-pika RobustConnection) has an open link now."""
    link = _link(connection)
    if link is None or link.is_closed:
        return False
    connected = getattr(connection, "connected", None)  # aio-pika's Event, cleared on close
    return connected is None or connected.is_set()


class AioGuardState(GuardState):
    """:class:`~hangproof.guard.runtime.GuardState` fed by an asyncio consumer.

    Same events, metrics and :meth:`contract` JSON; the clocks come from
    :meth:`on_loop_tick` (on the loop) and the link's frame clock (read from
    any thread). ``acts`` is False: see the module docstring.
    """

    acts = False

    def __init__(
        self,
        policy: Policy,
        *,
        connection: Any,
        queues: Sequence[str],
        canary: Canary,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        super().__init__(policy, clock=clock)
        self.aio_connection = connection
        self.queues = tuple(sorted(queues))
        self.canary = canary
        self.tick_interval = float(policy.watchdog_interval or 1.0)
        #: ``clock() - loop.time()``, measured on the loop at each tick: turns
        #: aiormq's frame time (the loop's clock) into this state's clock.
        self.loop_offset: float | None = None
        self._copied_until = float("-inf")

    def _frame_clock(self) -> float | None:
        if not self.connected or self.loop_offset is None:
            return None
        link = _link(self.aio_connection)
        if link is None:
            return None
        try:
            return upstream.aiormq_last_frame_time(link) + self.loop_offset
        except Exception:  # an aiormq without the clock: say "silent", never "fine"
            return None

    def on_loop_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the consumer's loop: it runs; and is there a link?"""
        self.loop_offset = self._clock() - loop.time()
        self.tick_loop()
        up = link_is_up(self.aio_connection)
        if up and not self.connected:
            self.on_connected(self.aio_connection)
        elif not up and self.connected:
            self.on_disconnected("link lost; aio-pika reconnects")
        self._copy_connection_events()

    def _copy_connection_events(self) -> None:
        """The silence watchdog's detections (``hangproof_events``) into events and metrics."""
        for record in list(getattr(self.aio_connection, "hangproof_events", ()) or ()):
            at = float(record.get("monotonic", 0.0))
            if at <= self._copied_until:
                continue
            self._copied_until = at
            if record.get("kind") == "reconnected":
                continue  # on_connected records the reconnect itself
            self.events.append(dict(record))  # already logged by the connection
            if record.get("kind") == "stall-detected":
                with contextlib.suppress(ValueError):
                    detection = Detection(record.get("detection", "link-silent"))
                    self.m_stalls.labels(detection=detection.value).inc()

    def loop_stalled_for(self, obs: Observation | None = None) -> float:
        """Seconds the loop is overdue for its tick (0 while it ticks on time)."""
        obs = obs or self.observe()
        if obs.last_loop_tick_at is None:
            return 0.0
        return max(0.0, obs.now - obs.last_loop_tick_at - self.tick_interval)

    def health_inputs(self, decision: Decision, obs: Observation) -> HealthInputs:
        inputs = super().health_inputs(decision, obs)
        return dataclasses.replace(inputs, loop_stalled_for=self.loop_stalled_for(obs))


async def _probe_round(
    url: Any,
    queues: Sequence[str],
    canary: Canary,
    canary_budget: float,
    step_timeout: float,
    context: Any,
) -> ProbeRound:
    import aiormq
    import aiormq.exceptions
    from pamqp.commands import Basic

    started = monotonic()
    consumers: dict[str, int | None] = {}
    try:
        async with asyncio.timeout(step_timeout):
            conn = await aiormq.connect(
                url,
                context=context,
                client_properties={"connection_name": "hangproof consuming probe"},
            )
    except Exception as exc:
        return ProbeRound(
            at=monotonic(), reachable=False, error=_brief(exc), seconds=monotonic() - started
        )
    try:
        async with asyncio.timeout(step_timeout):
            channel = await conn.channel(publisher_confirms=False)
            for name in [*queues, canary.queue]:
                try:
                    ok = await channel.queue_declare(name, passive=True)
                    consumers[name] = int(ok.consumer_count or 0) if ok is not None else None
                except aiormq.exceptions.ChannelClosed:  # 404 NOT_FOUND, 405 exclusive
                    consumers[name] = None
                    channel = await conn.channel(publisher_confirms=False)
        sent = False
        rtt: float | None = None
        blocked = upstream.aiormq_blocked(conn)
        if consumers.get(canary.queue) and not blocked:
            token = canary.arm()
            t0 = monotonic()
            properties = Basic.Properties(
                headers={CANARY_HEADER: token},
                expiration=str(int(max(1.0, canary_budget) * 1000)),
                delivery_mode=1,
                content_type="application/json",
            )
            async with asyncio.timeout(canary_budget):
                await channel.basic_publish(
                    json.dumps({"canary": token}).encode(),
                    routing_key=canary.queue,
                    properties=properties,
                )
            sent = True
            end = t0 + canary_budget
            while monotonic() < end:
                if canary.wait(token, 0.0):
                    rtt = monotonic() - t0
                    break
                await asyncio.sleep(0.02)  # this loop reads our link: connection.blocked
        return ProbeRound(
            at=monotonic(),
            reachable=True,
            consumers=consumers,
            canary_sent=sent,
            canary_rtt=rtt,
            blocked=blocked or upstream.aiormq_blocked(conn),
            seconds=monotonic() - started,
        )
    except Exception as exc:
        return ProbeRound(
            at=monotonic(),
            reachable=False,
            error=_brief(exc),
            consumers=consumers,
            seconds=monotonic() - started,
        )
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await conn.close()


def probe_once_aio(
    url: Any,
    queues: Sequence[str],
    canary: Canary,
    canary_budget: float,
    step_timeout: float,
    context: Any = None,
) -> ProbeRound:
    """One consuming-probe round on a fresh aiormq connection, in a fresh event loop.

    Blocking (run it in a thread: :class:`~hangproof.guard.consuming.Prober`
    does, and bounds it); the connect, the declares and the canary are each
    bounded too (``step_timeout``, ``step_timeout``, ``canary_budget``).
    """
    return asyncio.run(_probe_round(url, queues, canary, canary_budget, step_timeout, context))


class HealthServer:
    """What :func:`serve_health` returns: the port it answers on, the state, ``close()``."""

    def __init__(
        self,
        state: AioGuardState,
        server: LivenessServer,
        watchdog: Watchdog,
        prober: Prober,
        ticker: asyncio.Task[None],
        canary_setup: asyncio.Task[Any],
    ) -> None:
        self.state = state
        self.host = str(server.address[0])
        self.port = server.port
        self._server = server
        self._watchdog = watchdog
        self._prober = prober
        self._ticker = ticker
        self._canary_setup = canary_setup

    @property
    def url(self) -> str:
        """``http://host:port`` of the endpoints."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop answering and probing; close the canary channel (bounded, never raises)."""
        for task in (self._ticker, self._canary_setup):
            task.cancel()
        await asyncio.gather(self._ticker, self._canary_setup, return_exceptions=True)
        channel = self._canary_setup.result() if self._canary_setup_ok() else None
        if channel is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(float(self.state.policy.handshake_deadline or 1.0)):
                    await channel.close()

        def stop_threads() -> None:
            self._server.close()
            self._prober.stop()
            self._watchdog.stop()

        await asyncio.to_thread(stop_threads)

    def _canary_setup_ok(self) -> bool:
        task = self._canary_setup
        return task.done() and not task.cancelled() and task.exception() is None

    async def __aenter__(self) -> HealthServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _ticker(state: AioGuardState) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            state.on_loop_tick(loop)
        except Exception:  # the tick must outlive any one bad round
            logger.exception("hangproof.guard: aio health tick failed")
        await asyncio.sleep(state.tick_interval)


async def _consume_canary(connection: Any, state: AioGuardState) -> Any:
    """Consume the canary queue on a robust channel of the consumer's connection; retried.

    Returns the channel. Until it succeeds (e.g. ``serve_health`` called
    while the broker is down) the probe shows no consumer on the canary
    queue, which the contract counts against consuming.
    """
    canary = state.canary
    assert canary is not None

    async def on_canary(message: Any) -> None:
        token = (getattr(message, "headers", None) or {}).get(CANARY_HEADER)
        if isinstance(token, bytes | bytearray):
            token = token.decode(errors="replace")
        canary.seen(token if isinstance(token, str) else None)

    deadline = float(state.policy.handshake_deadline or 7.5)
    retry = max(1.0, float(state.policy.stall_timeout))
    while True:
        channel = None
        try:
            async with asyncio.timeout(deadline):
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    canary.queue,
                    durable=False,
                    auto_delete=True,
                    arguments={"x-expires": CANARY_QUEUE_EXPIRES_MS},
                )
                await queue.consume(on_canary, no_ack=True)
            return channel
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.event("canary-consume-failed", error=repr(exc)[:200])
            if channel is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(deadline):
                        await channel.close()
        await asyncio.sleep(retry)


async def serve_health(
    connection: Any,
    queues: Sequence[str] = (),
    *,
    port: int = 9808,
    host: str = "127.0.0.1",
    policy: Policy | None = None,
    url: str | None = None,
) -> HealthServer:
    """See :func:`hangproof.aio.serve_health` (the public entry point)."""
    upstream.check("aiormq")
    upstream.check("aio-pika")
    policy = policy or getattr(connection, "hangproof_policy", None) or Policy()
    canary = Canary(canary_queue_name(f"{socket.gethostname()}.{os.getpid()}"))
    state = AioGuardState(policy, connection=connection, queues=queues, canary=canary)
    loop = asyncio.get_running_loop()
    state.on_loop_tick(loop)
    probe_url = url or connection.url
    context = (getattr(connection, "kwargs", None) or {}).get("context")
    budget = max(1.0, float(policy.stall_timeout) / 2)
    step = float(policy.handshake_deadline or 7.5)
    canary_setup = loop.create_task(_consume_canary(connection, state))
    ticker = loop.create_task(_ticker(state))
    prober = Prober(
        lambda: probe_once_aio(probe_url, state.queues, canary, budget, step, context),
        state.record_round,
        interval=state.probe_interval,
        deadline=state.probe_deadline,
        name="hangproof-aio-consuming-probe",
    )
    watchdog = Watchdog(state)
    try:
        server = LivenessServer(state, host, port)
    except BaseException:
        for task in (ticker, canary_setup):
            task.cancel()
        await asyncio.gather(ticker, canary_setup, return_exceptions=True)
        raise
    watchdog.start()
    # The first round should find the canary consumed (measured: a round that
    # raced the canary's declare said "0 consumers", and /consumingz came 5 s
    # late, at the next round). Bounded: with the broker down, the round
    # starts anyway, after one handshake_deadline, and says so.
    handle = HealthServer(state, server, watchdog, prober, ticker, canary_setup)
    try:
        await asyncio.wait({canary_setup}, timeout=step)
    except BaseException:  # cancelled while waiting: leave nothing running
        for task in (ticker, canary_setup):
            task.cancel()
        server.close()
        watchdog.stop()
        raise
    prober.start()
    logger.info("hangproof.guard: health on http://%s:%d/livez", host, server.port)
    return handle


__all__ = ["AioGuardState", "HealthServer", "probe_once_aio", "serve_health"]
