"""The health contract: liveness, readiness and "consuming", as a pure function of recorded inputs.

Three questions, three answers, because Kubernetes acts differently on each:

- **live** ("restart me"): False only when the process itself is wedged and a
  restart is what fixes it: the watchdog forced a reconnect that never
  happened (the loop is stuck where a socket shutdown cannot reach), the
  event loop, watched from outside it, has not run for longer than
  ``recover_timeout`` (asyncio, where nothing outside the loop can act), or the
  broker is reachable from a fresh connection and yet, for longer than
  ``recover_timeout``, one of the worker's queues has no consumer or the
  worker's private canary does not come back (a consumer that will not come
  back on its own: kombu#814, aio-pika#231, celery#3409, celery#6760).
  A broker that is *down* is never a liveness failure: restarting every
  worker during a broker outage (the common result of ``celery inspect
  ping`` probes, celery#4079, celery#5067) helps nothing and adds a
  reconnect storm when the broker returns.
- **ready** ("not now"): False while the worker has no working connection
  (reconnecting, a stall being recovered) or the broker is unreachable from a
  fresh connection. A restart would not help, so this is where an outage
  shows.
- **consuming** (proof, not a ping): the broker's own view says every one of
  the worker's queues has a consumer (passive ``queue_declare`` on a
  separate short-lived connection), and a canary message published to the
  worker's private queue came back through the worker's own consumer within
  the budget. It never depends on the pidbox ``ping`` broadcast
  (celery#4079).

The inputs are recorded by :mod:`hangproof.guard.consuming` (probe rounds)
and :mod:`hangproof.guard.runtime` (the watchdog's decision); this module
only decides, so the unit tests can replay any timeline.

    >>> from hangproof.failure import Policy
    >>> from hangproof.guard.watchdog import Observation, decide
    >>> p = Policy(stall_timeout=3)
    >>> d = decide(Observation(now=100.0, connected=False, state_since=50.0), p)
    >>> down = ProbeRound(at=99.0, reachable=False, error="ConnectionRefusedError(111)")
    >>> h = assess(HealthInputs(now=100.0, decision=d, connected=False, rounds=(down,)), p)
    >>> h.live, h.ready, h.consuming
    (True, False, False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hangproof.failure import Policy
from hangproof.guard.watchdog import Decision


@dataclass(frozen=True)
class ProbeRound:
    """One consuming-probe round, as recorded (monotonic ``at``: when it ended).

    ``reachable``: a fresh connection to the broker completed its handshake.
    ``consumers``: queue -> the broker's consumer_count (None: the queue does
    not exist, or the passive declare failed). ``canary_rtt``: seconds the
    canary took to come back through the worker's consumer (None: not within
    the budget, or not sent). ``blocked``: the broker blocks publishing
    (connection.blocked), so a missing canary says nothing about the consumer.
    """

    at: float
    reachable: bool
    error: str | None = None
    consumers: dict[str, int | None] = field(default_factory=dict)
    canary_rtt: float | None = None
    canary_sent: bool = False
    blocked: bool = False
    seconds: float = 0.0

    def queue_problems(self) -> list[str]:
        """The queues the broker shows without a consumer (or not at all)."""
        return [
            f"{q}: no such queue" if n is None else f"{q}: 0 consumers"
            for q, n in sorted(self.consumers.items())
            if not n
        ]

    def consuming_queues(self) -> dict[str, bool]:
        """queue -> consumed (consumer_count >= 1 and the canary came back)."""
        canary = self.canary_rtt is not None
        return {q: bool(n) and canary for q, n in self.consumers.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "reachable": self.reachable,
            "error": self.error,
            "consumers": dict(self.consumers),
            "canary_sent": self.canary_sent,
            "canary_rtt": None if self.canary_rtt is None else round(self.canary_rtt, 3),
            "blocked": self.blocked,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class HealthInputs:
    """What the contract is decided from, read at ``now`` (monotonic seconds).

    ``rounds``: recent probe rounds, oldest first (empty: no probe runs).
    ``busy_in_loop``: a task runs on the loop's own thread (solo pool), so the
    canary cannot be read until it returns; not a wedge.
    ``blocked``: a guarded connection of this process is blocked by the broker.
    ``probe_interval``: how often rounds are expected; a newest round older
    than 3 intervals plus its deadline is stale (the prober itself stopped).
    ``loop_stalled_for``: seconds the consumer's event loop is overdue for its
    tick, measured from outside the loop (asyncio: :mod:`hangproof.aio`'s
    health thread); None where the watchdog acts on a stalled loop itself
    (Celery: a forced reconnect, then the "never came back" rule).
    """

    now: float
    decision: Decision
    connected: bool
    rounds: tuple[ProbeRound, ...] = ()
    busy_in_loop: bool = False
    blocked: bool = False
    probe_interval: float = 5.0
    probe_deadline: float = 10.0
    loop_stalled_for: float | None = None


@dataclass(frozen=True)
class Health:
    """The three verdicts with their reasons."""

    live: bool
    live_reason: str
    ready: bool
    ready_reason: str
    consuming: bool
    consuming_reason: str
    queues: dict[str, bool]
    #: Seconds the worker has been reachable-but-not-consuming (None: it is not).
    not_consuming_for: float | None = None


def _round_is_bad(r: ProbeRound, inputs: HealthInputs) -> str | None:
    """Why ``r`` shows a worker that should be consuming and is not (None: it is fine)."""
    if not r.reachable:
        return None  # the broker is down or unreachable: readiness, never liveness
    problems = r.queue_problems()
    if problems:
        return "; ".join(problems)
    if r.canary_sent and r.canary_rtt is None and not (r.blocked or inputs.blocked):
        if inputs.busy_in_loop:
            return None  # solo pool: the loop runs a task, it reads the canary later
        return "canary did not come back through the worker's consumer"
    return None


def _fresh(inputs: HealthInputs) -> ProbeRound | None:
    if not inputs.rounds:
        return None
    last = inputs.rounds[-1]
    stale_after = 3 * inputs.probe_interval + inputs.probe_deadline
    return last if inputs.now - last.at <= stale_after else None


def assess(inputs: HealthInputs, policy: Policy) -> Health:
    """Decide live / ready / consuming from ``inputs`` (rules in the module docstring).

    >>> from hangproof.guard.watchdog import Observation, decide
    >>> p = Policy(stall_timeout=3)
    >>> d = decide(Observation(now=100.0, connected=True, state_since=50.0,
    ...                        last_inbound_frame_at=99.5, last_loop_tick_at=99.9), p)
    >>> gone = [ProbeRound(at=t, reachable=True, consumers={"q": 0}, canary_sent=True,
    ...                    canary_rtt=0.01) for t in (80.0, 90.0, 99.0)]
    >>> h = assess(HealthInputs(now=100.0, decision=d, connected=True, rounds=tuple(gone)), p)
    >>> h.live, h.ready, h.consuming, h.live_reason
    (False, False, False, 'broker reachable but not consuming for 20.0 s (> recover_timeout 12 s): q: 0 consumers')
    """
    recover = float(policy.recover_timeout or 4 * policy.stall_timeout)
    decision = inputs.decision
    last = _fresh(inputs)

    # -- consuming: the newest round, if fresh, proves it or not ------------
    queues: dict[str, bool] = {}
    if last is None:
        consuming = False
        consuming_reason = "no recent probe round" if inputs.rounds else "not probed yet"
    elif not last.reachable:
        consuming = False
        consuming_reason = f"broker unreachable from a fresh connection: {last.error}"
    else:
        queues = last.consuming_queues()
        bad = _round_is_bad(last, inputs)
        if bad is not None:
            consuming, consuming_reason = False, bad
        elif not last.canary_sent or last.canary_rtt is None:
            consuming = False
            consuming_reason = (
                "canary not proven (broker blocks publishing)"
                if last.blocked or inputs.blocked
                else "canary not proven (a task runs on the loop's thread)"
            )
        elif not queues:
            consuming, consuming_reason = False, "the worker consumes no queue"
        else:
            consuming = all(queues.values())
            consuming_reason = (
                f"every queue has a consumer; canary back in {last.canary_rtt:.3f} s"
                if consuming
                else "not every queue is consumed"
            )

    if consuming and not decision.ready:
        # The round is older than what the worker knows now: it lost its
        # connection, or its loop stopped ticking, since (measured: 4.5 s of
        # a stale 200 during a blackhole before this rule).
        consuming, consuming_reason = False, f"the worker is not consuming now: {decision.reason}"

    # -- liveness -----------------------------------------------------------
    not_consuming_for: float | None = None
    # The trailing run of rounds that are reachable-and-bad: since when.
    bad_since: float | None = None
    bad_reason = ""
    if last is not None:
        for r in reversed(inputs.rounds):
            why = _round_is_bad(r, inputs)
            if why is None:
                break
            bad_since, bad_reason = r.at, bad_reason or why
    if bad_since is not None:
        # Counted from the first bad round: a worker that lost its consumer
        # just before it gets a whole recover_timeout to come back by itself.
        not_consuming_for = inputs.now - bad_since
    forced_wedge = (
        not decision.healthy
        and decision.reason.startswith("forced a reconnect")
        and inputs.connected
    )
    if forced_wedge:
        live, live_reason = False, decision.reason
    elif inputs.loop_stalled_for is not None and inputs.loop_stalled_for > recover:
        # Nothing outside the loop can unwedge it (a blocking call, a busy
        # callback, a deadlock), and it answers neither the broker nor the
        # canary: whether the broker is up or not, only a restart helps.
        live = False
        live_reason = (
            f"event loop stalled for {inputs.loop_stalled_for:.1f} s "
            f"(> recover_timeout {recover:g} s)"
        )
    elif not_consuming_for is not None and not_consuming_for > recover:
        live = False
        live_reason = (
            f"broker reachable but not consuming for {not_consuming_for:.1f} s "
            f"(> recover_timeout {recover:g} s): {bad_reason}"
        )
    elif not decision.healthy and not inputs.connected:
        # No connection for > recover_timeout: the restart question is
        # whether the broker answers a fresh connection.
        if last is not None and not last.reachable:
            live, live_reason = (
                True,
                f"{decision.reason}; broker unreachable, restart would not help",
            )
        else:
            live = True
            live_reason = f"{decision.reason}; waiting for a probe round to tell outage from wedge"
    elif not decision.healthy:
        live, live_reason = False, decision.reason
    else:
        live, live_reason = True, decision.reason

    # -- readiness ----------------------------------------------------------
    if not decision.ready:
        ready, ready_reason = False, decision.reason
        if last is not None and not last.reachable:
            ready_reason += f"; broker unreachable from a fresh connection: {last.error}"
    elif last is not None and not last.reachable:
        ready, ready_reason = False, f"broker unreachable from a fresh connection: {last.error}"
    elif last is not None and _round_is_bad(last, inputs) is not None:
        ready, ready_reason = False, f"not consuming: {_round_is_bad(last, inputs)}"
    else:
        ready, ready_reason = True, decision.reason
    return Health(
        live=live,
        live_reason=live_reason,
        ready=ready,
        ready_reason=ready_reason,
        consuming=consuming,
        consuming_reason=consuming_reason,
        queues=queues,
        not_consuming_for=None if not_consuming_for is None else round(not_consuming_for, 3),
    )
