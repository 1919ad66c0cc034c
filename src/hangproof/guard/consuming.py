"""Proving that a worker consumes: the broker's view of its queues, and a canary round trip.

Each round (every ``interval`` seconds, from a thread of the worker's main
process) opens a *separate, short-lived* broker connection (never the
worker's own: the check must not be able to hang or disturb the consumer):

1. passive ``queue_declare`` of each of the worker's queues and of its
   private canary queue: the broker's own ``consumer_count`` (a missing
   queue counts as no consumer);
2. publishes a canary (a message with a random token) to the canary queue,
   which only this worker consumes, and waits up to ``canary_budget`` for the
   worker's consumer to see it (:meth:`Canary.seen`); meanwhile it reads its
   own connection, so a ``connection.blocked`` (resource alarm) is noticed
   and the missing canary is not blamed on the consumer;
3. closes the connection.

The whole round runs in its own thread and is joined with a hard deadline:
a round that does not finish in time is recorded as "broker unreachable"
(readiness), and no second round starts while it is stuck, so at most one
thread can ever wait on a dead path. The pidbox ``ping`` broadcast is not
involved at all (celery#4079, celery#5067).

    >>> c = Canary("hangproof.canary.w1")
    >>> token = c.arm(); c.seen(token); c.wait(token, 0.1)
    True
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from hangproof.guard import upstream
from hangproof.guard.health import ProbeRound

logger = logging.getLogger("hangproof.guard")

#: The Celery task name the canary message carries; the worker's strategy for
#: it acknowledges in the consumer's own loop (never sent to the pool).
CANARY_TASK = "hangproof.canary"
#: Header carrying the token.
CANARY_HEADER = "hangproof_canary"


class Canary:
    """Tokens sent by the prober and seen by the worker's consumer (thread-safe)."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self._cond = threading.Condition()
        self._seen: set[str] = set()
        self.last_seen_at: float | None = None
        self.delivered = 0

    def arm(self) -> str:
        """A fresh token to publish."""
        return uuid.uuid4().hex

    def seen(self, token: str | None) -> None:
        """Called by the worker's consumer when a canary arrives."""
        with self._cond:
            self.delivered += 1
            self.last_seen_at = monotonic()
            if token:
                self._seen.add(token)
                if len(self._seen) > 64:  # bounded: stale tokens of abandoned rounds
                    self._seen = {token}
            self._cond.notify_all()

    def wait(self, token: str, timeout: float) -> bool:
        """Wait up to ``timeout`` for ``token``; True if it came back."""
        end = monotonic() + timeout
        with self._cond:
            while token not in self._seen:
                left = end - monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            self._seen.discard(token)
            return True


def canary_queue_name(hostname: str) -> str:
    """The private canary queue of one worker process.

    >>> canary_queue_name("w1@host").startswith("hangproof.canary.w1@host.")
    True
    """
    return f"hangproof.canary.{hostname}.{uuid.uuid4().hex[:8]}"


def _is_blocked(connection: Any) -> bool:
    raw = upstream.kombu_amqp_connection(connection)
    return bool(getattr(raw, "blocked_reason", None))


def probe_once(
    connect: Callable[[], Any],
    queues: Sequence[str],
    canary: Canary | None,
    canary_budget: float,
) -> ProbeRound:
    """One round on a fresh connection from ``connect()`` (a kombu Connection, not connected).

    Blocking; the caller bounds it (:class:`Prober`).
    """
    from kombu import Producer

    started = monotonic()
    consumers: dict[str, int | None] = {}
    conn = connect()
    try:
        try:
            conn.connect()
        except Exception as exc:
            return ProbeRound(
                at=monotonic(), reachable=False, error=_brief(exc), seconds=monotonic() - started
            )
        channel = conn.channel()
        names = [*queues, *([canary.queue] if canary else [])]
        for name in names:
            try:
                _, _, count = channel.queue_declare(queue=name, passive=True)
                consumers[name] = int(count)
            except conn.connection_errors:
                raise
            except Exception:  # 404 NOT_FOUND (channel closed), 405 exclusive
                consumers[name] = None
                with contextlib.suppress(Exception):
                    channel.close()
                channel = conn.channel()
        sent = False
        rtt: float | None = None
        if canary is not None and consumers.get(canary.queue):
            token = canary.arm()
            t0 = monotonic()
            Producer(channel).publish(
                {"canary": token},
                exchange="",
                routing_key=canary.queue,
                headers={"task": CANARY_TASK, "id": token, CANARY_HEADER: token},
                serializer="json",
                retry=False,
                expiration=max(1.0, canary_budget),
                delivery_mode=1,
            )
            sent = True
            end = t0 + canary_budget
            while monotonic() < end:
                if canary.wait(token, min(0.2, max(0.0, end - monotonic()))):
                    rtt = monotonic() - t0
                    break
                # Read our own socket: connection.blocked arrives here.
                with contextlib.suppress(TimeoutError, OSError):
                    conn.drain_events(timeout=0.01)
        return ProbeRound(
            at=monotonic(),
            reachable=True,
            consumers=consumers,
            canary_sent=sent,
            canary_rtt=rtt,
            blocked=_is_blocked(conn),
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
        _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    raw = upstream.kombu_amqp_connection(conn)
    drop = getattr(raw, "drop", None)
    with contextlib.suppress(Exception):
        if drop is not None and getattr(raw, "abandoned", False):
            drop("probe")
        conn.release()


def _brief(exc: BaseException) -> str:
    from hangproof.credentials import mask_url

    return mask_url(f"{type(exc).__name__}: {exc}")[:200]


class _QuietRounds(logging.Filter):
    """Keep the probe's own connection out of the worker's guard log.

    The fault matrix and operators read ``hangproof.guard: handshake-deadline``
    and friends as the *consumer's* detections; the probe's separate
    connection failing the same way is recorded as a ``broker-probe`` event
    instead (by the prober thread, which this filter lets through).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != ROUND_THREAD


#: The name of every round's thread (what :class:`_QuietRounds` filters).
ROUND_THREAD = "hangproof-consuming-round"
_quiet = _QuietRounds()
for _name in ("hangproof.guard", "hangproof.guard.transport"):
    logging.getLogger(_name).addFilter(_quiet)


class Prober:
    """The thread that runs :func:`probe_once` every ``interval`` s, each within ``deadline``."""

    def __init__(
        self,
        run_round: Callable[[], ProbeRound],
        record: Callable[[ProbeRound], None],
        *,
        interval: float,
        deadline: float,
        name: str = "hangproof-consuming-probe",
    ) -> None:
        self.run_round = run_round
        self.record = record
        self.interval = interval
        self.deadline = deadline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stuck: threading.Thread | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def round(self) -> ProbeRound:
        """One bounded round (never longer than ``deadline``)."""
        started = monotonic()
        if self._stuck is not None and self._stuck.is_alive():
            return ProbeRound(
                at=monotonic(),
                reachable=False,
                error=f"previous probe round still stuck (> {self.deadline:g} s)",
            )
        box: list[ProbeRound] = []

        def target() -> None:
            try:
                box.append(self.run_round())
            except Exception as exc:  # recorded, never raised into the thread
                box.append(ProbeRound(at=monotonic(), reachable=False, error=_brief(exc)))

        worker = threading.Thread(target=target, name=ROUND_THREAD, daemon=True)
        worker.start()
        worker.join(self.deadline)
        if worker.is_alive():
            self._stuck = worker
            return ProbeRound(
                at=monotonic(),
                reachable=False,
                error=f"probe round exceeded its {self.deadline:g} s deadline",
                seconds=monotonic() - started,
            )
        self._stuck = None
        return box[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.record(self.round())
            except Exception:  # the prober must outlive any one bad round
                logger.exception("hangproof.guard: consuming probe round failed")
            self._stop.wait(max(0.1, self.interval - (time.monotonic() - started)))
