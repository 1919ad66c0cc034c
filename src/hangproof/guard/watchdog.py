"""The watchdog's decision, as a pure function of clocks (no sockets, no threads).

Given what the worker's clocks say (when the last inbound frame arrived, when
the event loop last ticked, whether a connection is up and since when), decide:
force a reconnect or not, and whether the worker is healthy (liveness) and
ready (readiness). The Celery bootstep feeds it real clocks from a thread.

    >>> from hangproof.failure import Policy
    >>> p = Policy(stall_timeout=3)
    >>> d = decide(Observation(now=100.0, connected=True, state_since=90.0,
    ...                        last_inbound_frame_at=96.5, last_loop_tick_at=99.9), p)
    >>> d.action, d.detection, d.healthy
    (<Action.FORCE_RECONNECT: 'force-reconnect'>, <Detection.LINK_SILENT: 'link-silent'>, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hangproof.failure import Policy


class Action(StrEnum):
    """What the watchdog does about an observation."""

    NONE = "none"
    FORCE_RECONNECT = "force-reconnect"  # shut the consumer socket down; Celery reconnects


class Detection(StrEnum):
    """How a stall was detected; the label of ``hangproof_stalls_detected_total``."""

    LINK_SILENT = "link-silent"  # no inbound frame for stall_timeout (watchdog)
    LOOP_STALLED = "loop-stalled"  # the event loop did not tick for stall_timeout (watchdog)
    HEARTBEAT_MISSED = "heartbeat-missed"  # py-amqp's own heartbeat check fired
    HANDSHAKE_DEADLINE = "handshake-deadline"  # guard transport's total deadline
    RESOURCE_LOCKED = "resource-locked"  # 405 on reconnect: broker still holds the old link
    SOCKET_TIMEOUT = "socket-timeout"  # SO_RCVTIMEO/SO_SNDTIMEO on a blocking call
    CONNECTION_ERROR = "connection-error"  # reset, refused, closed by the broker, ...
    NOT_CONSUMING = "not-consuming"  # connected, but the broker shows no consumer (watchdog)


@dataclass(frozen=True)
class Observation:
    """The clocks, read at ``now`` (all monotonic seconds).

    ``connected``: the consumer has a connection and its bootsteps started.
    ``state_since``: when the current connected/disconnected state began.
    ``busy_in_loop``: a task runs *on* the event loop's thread (solo pool), so
    the loop cannot read frames until it returns; that is not a stall.
    ``forced_reconnect_at``: when the watchdog last forced a reconnect of the
    current connection (None if it has not).
    """

    now: float
    connected: bool
    state_since: float
    last_inbound_frame_at: float | None = None
    last_loop_tick_at: float | None = None
    busy_in_loop: bool = False
    forced_reconnect_at: float | None = None
    #: Queues the broker showed without a consumer (or not at all) in a
    #: consuming-probe round that *started* after this connection was up
    #: (empty: no such round, or every queue had a consumer).
    unconsumed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The watchdog's verdict for one observation."""

    action: Action
    healthy: bool
    ready: bool
    detection: Detection | None
    reason: str
    frame_age: float | None = None
    loop_age: float | None = None


def decide(obs: Observation, policy: Policy) -> Decision:
    """Decide what to do about ``obs`` under ``policy``.

    Rules, in order:
    - Disconnected (reconnecting): healthy while it has lasted at most
      ``recover_timeout``; never ready.
    - Connected, a forced reconnect pending for longer than
      ``recover_timeout``: unhealthy (the reconnect never happened, e.g. the
      loop is wedged somewhere a socket shutdown cannot reach).
    - Connected, a task runs on the loop's thread (solo pool): no action.
    - Connected, no inbound frame for ``stall_timeout``: force a reconnect.
    - Connected, loop did not tick for ``stall_timeout``: force a reconnect (a
      loop blocked in a read returns when the socket is shut down).
    - Connected, and the broker's own view (a consuming-probe round begun
      after this connection came up) shows no consumer on one of the
      worker's queues: force a reconnect. The link and the loop may look
      alive (measured: client-freeze x gevent, frames kept the link clock
      fresh while the broker had dropped the consumer), but nothing is
      consumed, and only a new connection brings the consumer back.

    >>> p = Policy(stall_timeout=3)
    >>> decide(Observation(now=10.0, connected=False, state_since=0.0), p).healthy
    True
    >>> decide(Observation(now=13.0, connected=False, state_since=0.0), p).healthy
    False
    """
    stall = policy.silence_limit
    recover = float(policy.recover_timeout or 4 * stall)
    if not obs.connected:
        down_for = obs.now - obs.state_since
        healthy = down_for <= recover
        return Decision(
            Action.NONE,
            healthy=healthy,
            ready=False,
            detection=None,
            reason=(
                f"reconnecting for {down_for:.1f} s"
                if healthy
                else f"no broker connection for {down_for:.1f} s (> recover_timeout {recover:g} s)"
            ),
        )

    frame_clock = obs.last_inbound_frame_at if obs.last_inbound_frame_at is not None else None
    frame_age = obs.now - max(frame_clock or obs.state_since, obs.state_since)
    loop_age = obs.now - max(obs.last_loop_tick_at or obs.state_since, obs.state_since)

    if obs.forced_reconnect_at is not None:
        pending = obs.now - obs.forced_reconnect_at
        healthy = pending <= recover
        return Decision(
            Action.NONE,
            healthy=healthy,
            ready=False,
            detection=None,
            reason=(
                f"forced reconnect {pending:.1f} s ago, waiting for it"
                if healthy
                else f"forced a reconnect {pending:.1f} s ago and the connection never came back"
            ),
            frame_age=frame_age,
            loop_age=loop_age,
        )

    if obs.busy_in_loop:
        return Decision(
            Action.NONE,
            healthy=True,
            ready=False,
            detection=None,
            reason="a task runs on the event loop's thread (solo pool); link not checked",
            frame_age=frame_age,
            loop_age=loop_age,
        )

    if frame_age > stall:
        return Decision(
            Action.FORCE_RECONNECT,
            healthy=True,
            ready=False,
            detection=Detection.LINK_SILENT,
            reason=f"no inbound frame for {frame_age:.1f} s (> {stall:g} s, within stall_timeout)",
            frame_age=frame_age,
            loop_age=loop_age,
        )
    if loop_age > stall:
        return Decision(
            Action.FORCE_RECONNECT,
            healthy=True,
            ready=False,
            detection=Detection.LOOP_STALLED,
            reason=f"event loop did not tick for {loop_age:.1f} s (> {stall:g} s, within stall_timeout)",
            frame_age=frame_age,
            loop_age=loop_age,
        )
    if obs.unconsumed:
        return Decision(
            Action.FORCE_RECONNECT,
            healthy=True,
            ready=False,
            detection=Detection.NOT_CONSUMING,
            reason=f"connected, but the broker shows no consumer: {', '.join(obs.unconsumed)}",
            frame_age=frame_age,
            loop_age=loop_age,
        )
    return Decision(
        Action.NONE,
        healthy=True,
        ready=True,
        detection=None,
        reason="connected",
        frame_age=frame_age,
        loop_age=loop_age,
    )


def classify_error(exc: BaseException) -> Detection:
    """Name the detection behind a connection error Celery recovers from.

    >>> from amqp.exceptions import ConnectionForced, ResourceLocked
    >>> classify_error(ConnectionForced("Too many heartbeats missed"))
    <Detection.HEARTBEAT_MISSED: 'heartbeat-missed'>
    >>> classify_error(ResourceLocked(reply_text="RESOURCE_LOCKED - pidbox"))
    <Detection.RESOURCE_LOCKED: 'resource-locked'>
    """
    import socket

    from amqp.exceptions import ResourceLocked

    from hangproof.guard.transport import HandshakeDeadlineExceeded

    if isinstance(exc, ResourceLocked) or getattr(exc, "code", None) == 405:
        return Detection.RESOURCE_LOCKED
    if isinstance(exc, HandshakeDeadlineExceeded):
        return Detection.HANDSHAKE_DEADLINE
    if "heartbeats missed" in str(exc).lower():
        return Detection.HEARTBEAT_MISSED
    if isinstance(exc, socket.timeout):
        return Detection.SOCKET_TIMEOUT
    return Detection.CONNECTION_ERROR
