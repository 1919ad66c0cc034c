"""Celery's front doors for the guard: a consumer bootstep and a consumer subclass.

- :class:`WatchdogStep` (consumer bootstep, after ``Tasks``): owns the
  :class:`~hangproof.guard.runtime.GuardState`, the watchdog thread and the
  liveness server; marks connected/disconnected; ticks the loop clock from
  the worker's own timer, so a tick proves the loop runs.
- :class:`ConsumingStep` (consumer bootstep, after :class:`WatchdogStep`):
  proves the worker consumes (the health contract, guard/health.py): a
  private canary queue consumed on its own channel of the worker's
  connection, and a prober thread that checks the broker's consumer counts
  and the canary's round trip on a separate short-lived connection
  (guard/consuming.py).
- :func:`guard_consumer_class` builds a subclass of the configured
  ``worker_consumer`` class (Celery's documented setting) that
  - counts every connection error by how it was detected;
  - backs off before retrying after ``ResourceLocked`` (405 on the exclusive
    pidbox queue the broker still holds for the dead connection), instead of
    reconnecting in a tight loop (``broker_channel_error_retry=True``, set by
    harden(), is what makes the error recoverable at all);
  - (the policy's reconnect intervals come from the app's broker connections
    themselves: :mod:`hangproof.guard.connection`, installed by harden()).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any

from celery import bootsteps
from celery.concurrency.solo import TaskPool as SoloPool
from celery.worker.consumer.consumer import Consumer
from celery.worker.state import active_requests

from hangproof.failure import Policy
from hangproof.guard import transport, upstream
from hangproof.guard.consuming import CANARY_HEADER, Canary, Prober, canary_queue_name, probe_once
from hangproof.guard.runtime import GuardState, LivenessConfig, LivenessServer, Watchdog
from hangproof.guard.watchdog import Detection, classify_error

logger = logging.getLogger("hangproof.guard")

#: The attribute harden() sets on the Celery app: (Policy, LivenessConfig).
APP_ATTRIBUTE = "hangproof_guard"


def guard_config(app: Any) -> tuple[Policy, LivenessConfig]:
    """The policy and liveness settings harden() stored on ``app``."""
    return getattr(app, APP_ATTRIBUTE, None) or (Policy(), LivenessConfig())


class WatchdogStep(bootsteps.StartStopStep):
    """Consumer bootstep: watchdog, loop clock and liveness for one worker."""

    label = "hangproof watchdog"
    # Start after the task consumer: "connected" means frames flow and tasks
    # can arrive. Connection errors before that are "reconnecting".
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        policy, liveness = guard_config(c.app)
        is_solo = isinstance(c.pool, SoloPool)
        # With the solo pool the task runs on the loop's own thread: the loop
        # cannot read frames until it returns. That is not a link stall.
        self.state = GuardState(
            policy, busy_in_loop=(lambda: bool(active_requests)) if is_solo else (lambda: False)
        )
        c.hangproof_guard = self.state
        # Inside a worker, publishes are stock (no confirms, no BrokerBlocked):
        # Celery's own control traffic (mingle hello, pidbox replies) shares
        # the app's producer pool and treats any non-connection error as
        # fatal. Measured: a worker starting during a memory alarm died with
        # "Unrecoverable error: BrokerBlocked" in mingle. The blocked state is
        # still recorded and reported in /healthz and /metrics. The publish
        # bound is for producers (web requests), which run no worker.
        c.app.conf.broker_transport_options = {
            **(c.app.conf.broker_transport_options or {}),
            "confirm_publish": False,
            "refuse_when_blocked": False,
        }
        self.liveness = liveness
        self.watchdog: Watchdog | None = None
        self.server: LivenessServer | None = None
        self._tick: Any = None
        super().__init__(c, **kwargs)

    def _start_services(self) -> None:
        if upstream.cooperative_retry_sleep():
            self.state.event(
                "gevent-retry-sleep", reason="kombu's retry pauses now yield to the hub"
            )
        with transport._listeners_lock:
            if self.state.on_blocked_event not in transport.blocked_listeners:
                transport.blocked_listeners.append(self.state.on_blocked_event)
        if self.watchdog is None:
            self.watchdog = Watchdog(self.state, self.liveness.heartbeat_file)
            self.watchdog.start()
        if self.server is None and self.liveness.port is not None:
            self.server = LivenessServer(self.state, self.liveness.host, self.liveness.port)
            logger.info(
                "hangproof.guard: liveness on http://%s:%d/healthz",
                self.liveness.host,
                self.server.port,
            )

    def start(self, c: Any) -> None:
        self._start_services()
        interval = float(self.state.policy.watchdog_interval or 1.0)
        self.state.tick_loop()
        # The worker's own timer: under prefork it runs inside the event loop
        # (hub), so a tick proves that the loop turns.
        self._tick = c.timer.call_repeatedly(interval, self.state.tick_loop)
        self.state.on_connected(c.connection)

    def stop(self, c: Any) -> None:
        if self._tick is not None:
            try:
                c.timer.cancel(self._tick)
            except Exception:  # already cancelled with the connection's entries
                pass
            self._tick = None
        self.state.on_disconnected("consumer stopped")

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        with transport._listeners_lock, contextlib.suppress(ValueError):
            transport.blocked_listeners.remove(self.state.on_blocked_event)
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.server is not None:
            self.server.close()
            self.server = None


#: The canary queue disappears this long after its worker stopped consuming it
#: without a clean cancel (auto-delete covers the clean case), in ms.
CANARY_QUEUE_EXPIRES_MS = 300_000


class ConsumingStep(bootsteps.StartStopStep):
    """Consumer bootstep: the canary consumer and the consuming prober (the health contract).

    The canary queue (non-durable, auto-delete, ``x-expires``) is consumed on
    a channel of its own with ``no_ack``: no prefetch window is shared with
    the tasks (Celery applies a *global* basic.qos on RabbitMQ), so a worker
    busy with long tasks still reads its canary. Under prefork (the hub) and
    gevent/solo (synloop) the worker's loop drains every channel of its
    connection, so a canary that comes back proves that loop reads the
    broker. With the solo pool a task blocks the loop; the contract does not
    count that as a wedge (guard/health.py).
    """

    label = "hangproof consuming"
    requires = (WatchdogStep,)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.canary = Canary(canary_queue_name(c.hostname))
        self.prober: Prober | None = None
        self.consumer: Any = None
        super().__init__(c, **kwargs)

    def _on_canary(self, body: Any, message: Any) -> None:
        headers = getattr(message, "headers", None) or {}
        self.canary.seen(headers.get(CANARY_HEADER))

    def _consume_canary(self, c: Any) -> None:
        from kombu import Consumer, Exchange, Queue

        queue = Queue(
            self.canary.queue,
            Exchange("", type="direct"),
            routing_key=self.canary.queue,
            durable=False,
            auto_delete=True,
            queue_arguments={"x-expires": CANARY_QUEUE_EXPIRES_MS},
        )
        channel = c.connection.channel()
        self.consumer = Consumer(
            channel, queues=[queue], callbacks=[self._on_canary], no_ack=True, accept=["json"]
        )
        self.consumer.consume()

    def start(self, c: Any) -> None:
        state: GuardState = c.hangproof_guard
        state.canary = self.canary
        task_consumer = getattr(c, "task_consumer", None)
        state.queues = tuple(sorted(q.name for q in getattr(task_consumer, "queues", ()) or ()))
        try:
            self._consume_canary(c)
        except Exception as exc:  # recorded: the probe then shows no canary consumer
            state.event("canary-consume-failed", error=repr(exc))
        if self.prober is None:
            budget = max(1.0, float(state.policy.stall_timeout) / 2)
            app = c.app

            def run_round() -> Any:
                return probe_once(
                    lambda: app.connection_for_read(heartbeat=0), state.queues, self.canary, budget
                )

            self.prober = Prober(
                run_round,
                state.record_round,
                interval=state.probe_interval,
                deadline=state.probe_deadline,
            )
            self.prober.start()

    def stop(self, c: Any) -> None:
        # No basic.cancel: the channel goes with the consumer's connection,
        # which Celery closes next (possibly over a dead path); waiting for a
        # Cancel-Ok here is exactly the hang kombu#670 reports.
        self.consumer = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self.prober is not None:
            self.prober.stop()
            self.prober = None


#: The longest pause between retries while the broker still holds the
#: worker's exclusive pidbox queue (seconds).
RESOURCE_LOCKED_MAX_DELAY = 1.0


class GuardConsumerMixin:
    """Mixed into the configured consumer class by :func:`guard_consumer_class`."""

    app: Any
    hangproof_guard: GuardState

    def _guard_error(self, exc: BaseException) -> Detection:
        detection = classify_error(exc)
        state = getattr(self, "hangproof_guard", None)
        if state is not None:
            state.on_connection_error(exc, detection)
        return detection

    def _resource_locked_backoff(self) -> None:
        state = getattr(self, "hangproof_guard", None)
        if state is None:
            return
        policy, _ = guard_config(self.app)
        # The broker frees the exclusive queue when it notices the old
        # connection is dead (two missed heartbeats); retrying at once only
        # hammers it. But that moment is the broker's, not ours: a backoff
        # that doubles past it (0.5, 1, 2, 4 s) adds up to 4 s to the resume
        # after the queue is free. A retry per RESOURCE_LOCKED_MAX_DELAY costs
        # one cheap failed declare and bounds that extra wait.
        delay = min(
            policy.backoff.delay(max(0, state.resource_locked_streak - 1)),
            RESOURCE_LOCKED_MAX_DELAY,
        )
        state.event("resource-locked-backoff", seconds=delay, streak=state.resource_locked_streak)
        time.sleep(delay)

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        detection = self._guard_error(exc)
        super().on_connection_error_after_connected(exc)  # type: ignore[misc]
        if detection is Detection.RESOURCE_LOCKED:
            self._resource_locked_backoff()

    def on_connection_error_before_connected(self, exc: BaseException) -> None:
        detection = self._guard_error(exc)
        super().on_connection_error_before_connected(exc)  # type: ignore[misc]
        if detection is Detection.RESOURCE_LOCKED:
            self._resource_locked_backoff()


@functools.cache
def guard_consumer_class(base: type = Consumer) -> type:
    """A subclass of ``base`` (the app's ``worker_consumer``) with the guard mixed in.

    >>> guard_consumer_class().__name__
    'GuardedConsumer'
    """
    return type("GuardedConsumer", (GuardConsumerMixin, base), {"__module__": __name__})
