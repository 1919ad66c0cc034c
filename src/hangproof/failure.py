"""The shared vocabulary: how a broker connection fails, and the one Policy.

Every part of hangproof (lab, probe, doctor, guard) imports verdicts, outcomes,
fault classes and the deadline policy from here, and only from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum


class Verdict(StrEnum):
    """What ``hangproof probe`` concludes about a broker address (ARCHITECTURE.md)."""

    OK = "ok"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    SILENT = "silent"
    NOT_AMQP = "not-amqp"
    PROTOCOL_MISMATCH = "protocol-mismatch"
    STALLED = "stalled"
    CLOSED = "closed"
    AUTH_FAILED = "auth-failed"
    VHOST_DENIED = "vhost-denied"
    TLS_REQUIRED = "tls-required"


#: One line per verdict, in the incident's terms.
VERDICT_HINTS: dict[Verdict, str] = {
    Verdict.OK: "the broker completed the AMQP handshake",
    Verdict.REFUSED: "nothing listens on that port (TCP RST): wrong port, or the broker is down",
    Verdict.UNREACHABLE: (
        "no route, or the TCP connect got no answer: the address is not held by any "
        "node (a VIP in flight?) or a firewall drops the SYN"
    ),
    Verdict.SILENT: (
        "TCP was accepted but nothing answered the AMQP header: a listener that is not "
        "the broker, such as a NodePort port-holder reached without DNAT, or a proxy "
        "with no upstream"
    ),
    Verdict.NOT_AMQP: "the peer answered with bytes that are not AMQP: wrong port or protocol",
    Verdict.PROTOCOL_MISMATCH: (
        "the server sent back its own protocol header: it does not speak AMQP 0-9-1 "
        "(AMQP 1.0 broker, or a very old one)"
    ),
    Verdict.STALLED: (
        "the handshake started, then stopped (perhaps only heartbeats): an overloaded or "
        "frozen broker, or a proxy that lost its upstream"
    ),
    Verdict.CLOSED: "the peer closed the connection: a proxy with no backend, or a broker refusing clients",
    Verdict.AUTH_FAILED: "the broker refused the credentials (ACCESS_REFUSED)",
    Verdict.VHOST_DENIED: "the user may not open that virtual host (NOT_ALLOWED / ACCESS_REFUSED on Open)",
    Verdict.TLS_REQUIRED: "the port expects TLS: use amqps://, or the plain-text port",
}


class RaceOutcome(StrEnum):
    """What a client did in ``hangproof lab race``."""

    HANG = "hang"  # still waiting for Connection.Start when the observation window closed
    CONNECTED = "connected"  # reached the real broker
    RESET = "reset"  # failed fast (RST / refused), free to retry
    ERROR = "error"  # failed in some other way (timeout raised, exception)


class FaultClass(StrEnum):
    """The fault classes the guard promises to detect, each a lab fault module."""

    VIP_RACE = "vip-race"
    HEARTBEAT_ONLY_HANDSHAKE = "heartbeat-only-handshake"
    BLACKHOLE = "blackhole"
    BROKER_FREEZE = "broker-freeze"
    BROKER_KILL = "broker-kill"
    VIP_FAILOVER = "vip-failover"
    HEAL_AFTER_HALF_OPEN = "heal-after-half-open"
    MEMORY_ALARM = "memory-alarm"
    SILENT_FLOW_LOSS = "silent-flow-loss"
    CLIENT_FREEZE = "client-freeze"
    CONSUMER_TIMEOUT = "consumer-timeout"
    QUEUE_DELETED = "queue-deleted"
    CONNECTION_CLOSED = "connection-closed"
    BROKER_DOWN_AT_CALL = "broker-down-at-call"
    BROKER_REJECT_AT_CALL = "broker-reject-at-call"
    DISK_ALARM = "disk-alarm"
    DNS_STALL = "dns-stall"
    URL_FAILOVER = "url-failover"
    CLUSTER_PARTITION = "cluster-partition"
    ONE_WAY_LOSS_IN = "one-way-loss-in"
    ONE_WAY_LOSS_OUT = "one-way-loss-out"
    FLOW_STATE_EXPIRY = "flow-state-expiry"
    FLOW_STATE_RST = "flow-state-rst"


class Severity(StrEnum):
    """Severity of a doctor finding. ``warning`` or worse makes doctor exit 1."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Backoff:
    """Reconnect backoff: ``initial * factor**n``, capped at ``maximum``.

    >>> Backoff().delay(0), Backoff().delay(10)
    (0.5, 5.0)
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 5.0
    max_retries: int | None = None  # None: retry forever (a worker must come back)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (0-based).

        >>> Backoff().delay(0), Backoff().delay(1), Backoff().delay(10)
        (0.5, 1.0, 5.0)
        """
        return min(self.maximum, self.initial * self.factor ** max(0, attempt))


#: The smallest heartbeat the Policy derives (seconds); see Policy's docstring.
MIN_HEARTBEAT = 3
#: The smallest stall_timeout a Policy accepts (seconds): TCP keepalive counts
#: whole seconds, at least 1 each, so the fastest it can find an idle dead peer
#: is idle 1 s + 1 probe x 1 s = 2 s (tcp(7) TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT).
MIN_STALL_TIMEOUT = 2.0
#: The kernel's limits (linux/tcp.h MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL,
#: MAX_TCP_KEEPCNT): setsockopt() refuses larger values with EINVAL.
MAX_TCP_KEEPIDLE = 32767
MAX_TCP_KEEPINTVL = 32767
MAX_TCP_KEEPCNT = 127


def derive_keepalive(stall_timeout: float) -> tuple[int, int, int]:
    """TCP keepalive (idle, interval, count) with ``idle + interval * count <= stall_timeout``.

    Whole seconds, each at least 1, within the kernel's limits. ``idle`` is a
    third of the budget and ``interval`` a third of that, with 3 probes; when
    the budget is too small for 3 probes (stall_timeout < 4 s: at 3 s the sum
    would be 1 + 1 x 3 = 4), fewer probes are sent rather than breaking the
    promise. Below :data:`MIN_STALL_TIMEOUT` no integer setting can keep it.

    >>> derive_keepalive(15), derive_keepalive(3), derive_keepalive(2)
    ((5, 1, 3), (1, 1, 2), (1, 1, 1))
    >>> derive_keepalive(1.5)
    Traceback (most recent call last):
    ...
    ValueError: stall_timeout must be >= 2 s, got 1.5: TCP keepalive counts whole seconds (idle, interval and probes >= 1), so it cannot find an idle dead peer in less than 1 + 1 x 1 = 2 s
    """
    if not stall_timeout >= MIN_STALL_TIMEOUT:
        raise ValueError(
            f"stall_timeout must be >= {MIN_STALL_TIMEOUT:g} s, got {stall_timeout!r}: TCP "
            "keepalive counts whole seconds (idle, interval and probes >= 1), so it cannot "
            "find an idle dead peer in less than 1 + 1 x 1 = 2 s"
        )
    third = max(1, int(stall_timeout // 3))
    idle = min(MAX_TCP_KEEPIDLE, third)
    interval = min(MAX_TCP_KEEPINTVL, max(1, third // 3))
    # stall >= 2 and idle <= stall / 3 (or 1) leave room for at least one probe.
    count = max(1, min(3, int((stall_timeout - idle) // interval)))
    return idle, interval, count


@dataclass(frozen=True)
class Policy:
    """Every deadline derives from one number, ``stall_timeout``.

    The promise: any fault class is noticed within ``stall_timeout``.

    >>> p = Policy(stall_timeout=15)
    >>> p.handshake_deadline, p.heartbeat, p.tcp_user_timeout_ms
    (7.5, 5, 15000)
    >>> p.read_timeout, p.write_timeout, p.recover_timeout, p.watchdog_interval
    (15.0, 15.0, 60.0, 1.0)
    >>> Policy(stall_timeout=15, heartbeat=10).heartbeat
    10
    >>> Policy(stall_timeout=3).heartbeat, Policy(stall_timeout=3).watchdog_interval
    (3, 0.3)
    >>> p.publish_timeout, Policy(stall_timeout=15, handshake_deadline=4).publish_timeout
    (7.5, 4)
    >>> Policy(stall_timeout=15, publish_timeout=2).publish_timeout
    2
    >>> p.teardown_timeout, Policy(stall_timeout=4).teardown_timeout
    (1.5, 0.4)

    Derivation (each can be overridden by passing it explicitly):
    - ``handshake_deadline = stall_timeout / 2``: one total deadline over
      TCP connect + protocol header + Start..Open-Ok, leaving half the budget
      for a retry against another cluster member.
    - ``heartbeat = stall_timeout / 3`` (rounded down, at least
      ``MIN_HEARTBEAT`` = 3 s): AMQP declares a peer dead after two missed
      heartbeats (AMQP 0-9-1 §4.2.7), so silence is noticed within ~2/3 of the
      budget. The floor is measured, not taste: RabbitMQ sends a heartbeat
      every heartbeat/2 s, and Celery's mingle/inspect collect loop waits with
      a 1 s *per-read* timeout that every heartbeat frame resets; at
      heartbeat 1 s it never ends and the broker drops the worker for missed
      client heartbeats at every (re)connect. With a small ``stall_timeout``
      the guard's watchdog (frame age > stall_timeout) still detects within
      the budget, since frames arrive every heartbeat/2 s.
    - ``tcp_user_timeout_ms = stall_timeout``: unacknowledged data for longer
      than that closes the socket (RFC 5482).
    - keepalive idle/interval/count so that an idle dead peer is found within
      ``stall_timeout`` (idle + interval * count <= stall_timeout), see
      :func:`derive_keepalive`. Keepalive takes whole seconds, at least 1
      each, so the promise cannot be kept below 2 s: a ``stall_timeout``
      under :data:`MIN_STALL_TIMEOUT` raises ``ValueError`` rather than
      promise what the kernel cannot do. Below 4 s fewer than 3 probes are
      sent (stall 3: idle 1 + 1 x 2 probes). Explicit keepalive values are
      taken as given.
    - ``read_timeout = write_timeout = stall_timeout``: the kernel-level
      SO_RCVTIMEO/SO_SNDTIMEO bound every *blocking* socket call, such as a
      synchronous ``queue_declare`` right after a reconnect; the event loop's
      own reads are non-blocking and do not see them.
    - ``watchdog_interval = stall_timeout / 10`` (at most 1 s): how often the
      guard's watchdog looks at the clocks. It adds up to one interval to the
      detection time, and the inbound-frame clock may lag by one more, so the
      watchdogs act on :attr:`silence_limit`, ``stall_timeout - 2 *
      watchdog_interval``: silence is then noticed *within* ``stall_timeout``.
    - ``publish_timeout = handshake_deadline`` (so stall_timeout / 2): the
      total time a guarded publish may take, write plus the wait for the
      broker's publisher confirm. A broker that blocks publishers
      (connection.blocked, e.g. a memory alarm) makes the publish fail at
      once; one that neither confirms nor says why makes it fail after this.
      Short enough for a web request, and half the budget, like the
      handshake.
    - ``recover_timeout = 4 * stall_timeout``: how long a worker may stay
      without a working broker connection (reconnecting, or wedged after a
      forced reconnect) before its liveness turns unhealthy, so that
      Kubernetes restarts it. Long enough for a few backoff rounds against a
      cluster whose members are all restarting.
    - ``teardown_timeout = stall_timeout / 10``: the longest any teardown
      call on a connection may wait for the broker (channel or connection
      Close-Ok, Cancel-Ok), all of one connection's calls together; then the
      socket is abandoned (shutdown + close, no Close-Ok). A healthy broker
      answers in milliseconds; one that does not may be behind a dead flow,
      where the graceful close would wait ``read_timeout`` per call
      (measured: 2 x 15 s closing the event dispatcher's old connection
      while the new one missed its heartbeats). Why a tenth: recovery must
      fit in what is left of the budget after detection (heartbeats notice
      within ``2 * heartbeat``, about 2/3 of ``stall_timeout``), and a
      reconnect may close three or so old connections (consumer, event
      dispatcher, a pooled producer): 3 x 1/10 stays under the remaining
      third. It is also far below the broker's heartbeat timeout of the
      *new* connection (``2 * heartbeat``), whose heartbeats nobody sends
      while the loop is busy tearing down. A connection that shares a path
      the guard has just seen fail is abandoned at once, with no wait at all.
    """

    stall_timeout: float = 15.0
    handshake_deadline: float | None = None
    heartbeat: int | None = None
    tcp_user_timeout_ms: int | None = None
    keepalive_idle: int | None = None
    keepalive_interval: int | None = None
    keepalive_count: int | None = None
    read_timeout: float | None = None
    write_timeout: float | None = None
    watchdog_interval: float | None = None
    recover_timeout: float | None = None
    publish_timeout: float | None = None
    teardown_timeout: float | None = None
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if self.stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be > 0, got {self.stall_timeout!r}")
        keepalive_idle, keepalive_interval, keepalive_count = derive_keepalive(self.stall_timeout)
        third = max(1, int(self.stall_timeout // 3))
        defaults = {
            "handshake_deadline": self.stall_timeout / 2,
            "heartbeat": max(MIN_HEARTBEAT, third),
            "tcp_user_timeout_ms": int(self.stall_timeout * 1000),
            "keepalive_idle": keepalive_idle,
            "keepalive_interval": keepalive_interval,
            "keepalive_count": keepalive_count,
            "read_timeout": float(self.stall_timeout),
            "write_timeout": float(self.stall_timeout),
            "watchdog_interval": round(min(1.0, self.stall_timeout / 10), 3),
            "recover_timeout": 4.0 * self.stall_timeout,
            "teardown_timeout": round(self.stall_timeout / 10, 3),
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        assert self.handshake_deadline is not None
        if self.handshake_deadline <= 0:
            raise ValueError(f"handshake_deadline must be > 0, got {self.handshake_deadline!r}")
        if self.publish_timeout is None:
            object.__setattr__(self, "publish_timeout", self.handshake_deadline)
        assert self.publish_timeout is not None
        if self.publish_timeout <= 0:
            raise ValueError(f"publish_timeout must be > 0, got {self.publish_timeout!r}")

    @property
    def silence_limit(self) -> float:
        """Frame or loop silence after which a watchdog acts (see the class docstring).

        >>> Policy(stall_timeout=15).silence_limit, Policy(stall_timeout=3).silence_limit
        (13.0, 2.4)
        """
        assert self.watchdog_interval is not None
        return round(
            max(self.stall_timeout / 2, self.stall_timeout - 2 * self.watchdog_interval), 3
        )

    def with_(self, **changes: object) -> Policy:
        """A copy with some settings changed (derived ones are kept unless given).

        >>> Policy(stall_timeout=15).with_(heartbeat=3).heartbeat
        3
        """
        return replace(self, **changes)  # type: ignore[arg-type]
