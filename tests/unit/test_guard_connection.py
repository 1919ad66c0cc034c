"""harden()'s broker connections reconnect with the policy's intervals, through amqp_cls.

Celery's consumer calls ``conn.ensure_connection(errback, max_retries,
callback=...)`` without intervals; stock kombu then waits 2 s, 4 s, 6 s ...
Measured here on a refused port: kombu's own errback reports each interval.
"""

from __future__ import annotations

import socket

import pytest
from celery import Celery
from celery.app.amqp import AMQP

from hangproof.celery import harden
from hangproof.failure import Policy
from hangproof.guard.connection import GUARDED_AMQP_PATH, GuardReconnectMixin


def _refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: ECONNREFUSED at once
    return f"amqp://guest:guest@127.0.0.1:{port}//"


def _intervals(app: Celery, retries: int = 3) -> list[float]:
    seen: list[float] = []
    conn = app.connection_for_read()
    try:
        # What Celery's Consumer.ensure_connected does: no intervals given.
        with pytest.raises(Exception):  # noqa: B017 - kombu's OperationalError after retries
            conn.ensure_connection(lambda exc, interval: seen.append(interval), retries)
    finally:
        conn.release()
    return seen


@pytest.mark.timeout(30)
def test_consumer_reconnect_intervals_are_the_policys() -> None:
    stock = Celery("stock", broker=_refused_url(), set_as_current=False)
    guarded = Celery("guarded", broker=_refused_url(), set_as_current=False)
    harden(guarded, Policy(stall_timeout=4))
    # First retry after backoff.initial (never at once), then backoff.initial steps.
    assert _intervals(guarded) == [0.5, 1.0, 1.5]
    assert _intervals(stock, retries=1) == [2]  # kombu's default: 2 s, then +2 s, ...


def test_harden_uses_amqp_cls_and_patches_no_instance() -> None:
    app = Celery("p", broker="amqp://127.0.0.1:1//", set_as_current=False)
    harden(app)
    assert app.amqp_cls == GUARDED_AMQP_PATH
    conn = app.connection_for_write()
    assert isinstance(conn, GuardReconnectMixin)
    assert "ensure_connection" not in vars(conn)  # a method of the class, not an instance patch
    assert isinstance(conn.clone(), GuardReconnectMixin)  # pools clone connections


def test_harden_keeps_a_custom_amqp_class_and_an_existing_helper() -> None:
    class MyAMQP(AMQP):
        marker = "mine"

    app = Celery("p", broker="amqp://127.0.0.1:1//", amqp=MyAMQP, set_as_current=False)
    harden(app)
    assert app.amqp.marker == "mine"
    assert isinstance(app.connection_for_write(), GuardReconnectMixin)

    early = Celery("q", broker="amqp://127.0.0.1:1//", set_as_current=False)
    helper = early.amqp  # built before harden(): its documented Connection attribute is set
    harden(early)
    assert early.amqp is helper
    assert isinstance(early.connection_for_write(), GuardReconnectMixin)


def test_explicit_intervals_are_kept() -> None:
    app = Celery("p", broker="amqp://127.0.0.1:1//", set_as_current=False)
    harden(app)
    conn = app.connection_for_write()
    assert conn.reconnect_intervals((None, 3, 7), {"interval_max": 9}) == {"interval_step": 0.5}
