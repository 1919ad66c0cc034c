"""Policy derivation: every setting follows from stall_timeout, each overridable."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hangproof.failure import MIN_HEARTBEAT, MIN_STALL_TIMEOUT, Backoff, Policy


def test_defaults_follow_stall_timeout() -> None:
    p = Policy(stall_timeout=15)
    assert p.handshake_deadline == 7.5
    assert p.heartbeat == 5
    assert p.tcp_user_timeout_ms == 15000
    assert (p.read_timeout, p.write_timeout) == (15.0, 15.0)
    assert p.recover_timeout == 60.0
    assert p.watchdog_interval == 1.0


def test_overrides_win() -> None:
    p = Policy(stall_timeout=15, heartbeat=10, handshake_deadline=2.0, recover_timeout=300)
    assert (p.heartbeat, p.handshake_deadline, p.recover_timeout) == (10, 2.0, 300)


def test_heartbeat_floor() -> None:
    assert Policy(stall_timeout=3).heartbeat == MIN_HEARTBEAT


@pytest.mark.parametrize("bad", [0, -1])
def test_rejects_non_positive(bad: float) -> None:
    with pytest.raises(ValueError):
        Policy(stall_timeout=bad)


@given(st.floats(min_value=MIN_STALL_TIMEOUT, max_value=1e6))
@example(2.0)
@example(3.0)  # the old derivation gave 1 + 1 x 3 = 4 here
@example(3.99)
def test_idle_dead_peer_found_within_budget(stall: float) -> None:
    p = Policy(stall_timeout=stall)
    assert p.handshake_deadline is not None and p.handshake_deadline < stall
    keepalive = (p.keepalive_idle, p.keepalive_interval, p.keepalive_count)
    # TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT take whole seconds (counts), at least 1,
    # and the kernel refuses more than 32767 s / 127 probes (linux/tcp.h).
    assert all(isinstance(v, int) and v >= 1 for v in keepalive)
    assert p.keepalive_idle <= 32767 and p.keepalive_interval <= 32767
    assert p.keepalive_count <= 127
    assert p.keepalive_idle + p.keepalive_interval * p.keepalive_count <= stall
    assert 0 < p.watchdog_interval <= 1.0


@given(st.floats(min_value=0.0, max_value=MIN_STALL_TIMEOUT, exclude_min=True, exclude_max=True))
def test_stall_timeout_keepalive_cannot_meet_is_refused(stall: float) -> None:
    # The fastest TCP keepalive is idle 1 s + 1 probe x 1 s: 2 s.
    with pytest.raises(ValueError, match="keepalive"):
        Policy(stall_timeout=stall)


def test_backoff_is_capped() -> None:
    b = Backoff(initial=0.5, factor=2, maximum=5)
    assert [b.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
