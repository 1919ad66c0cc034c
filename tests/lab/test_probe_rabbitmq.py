"""``probe()`` against a real RabbitMQ (Debian's rabbitmq-server) on loopback.

Uses the lab's :class:`~hangproof.lab.components.rabbitmq.RabbitNode` with private
epmd/distribution ports, so it touches nothing shared. One node for the module
(booting takes 5-15 s); it is stopped by pid even when a test fails.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.failure import Verdict
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.probe import probe

pytestmark = pytest.mark.lab

#: A probe of a healthy local broker takes milliseconds; this only bounds failure.
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    node = RabbitNode("probe", Path(tmp_path_factory.mktemp("rabbit-probe")))
    try:
        node.start(timeout=90)
        node.ctl("add_user", "bob", "bobpw")
        node.ctl("add_vhost", "bobs")
        node.ctl("set_permissions", "-p", "bobs", "bob", ".*", ".*", ".*")
        node.ctl("add_vhost", "secret")  # bob has no permissions here
        yield node
    finally:
        node.stop()


def url(node: RabbitNode, user: str, password: str, vhost: str = "") -> str:
    return f"amqp://{user}:{password}@{node.host}:{node.amqp_port}/{vhost}"


def test_ok(rabbit: RabbitNode) -> None:
    result = probe(rabbit.url, timeout=TIMEOUT)
    assert result.verdict is Verdict.OK, result.detail
    assert [s.stage for s in result.stages][-4:] == ["tune-ok", "open", "open-ok", "close"]
    assert all(s.ok for s in result.stages)
    assert result.to_dict()["server"]["product"] == "RabbitMQ"
    assert result.seconds < TIMEOUT


def test_ok_as_another_user_on_its_vhost(rabbit: RabbitNode) -> None:
    result = probe(url(rabbit, "bob", "bobpw", "bobs"), timeout=TIMEOUT)
    assert result.verdict is Verdict.OK, result.detail


def test_auth_failed(rabbit: RabbitNode) -> None:
    result = probe(url(rabbit, "guest", "wrong"), timeout=TIMEOUT)
    assert result.verdict is Verdict.AUTH_FAILED, result.detail
    assert result.reply_code == 403
    assert "wrong" not in str(result.to_dict())


def test_unknown_user_is_auth_failed(rabbit: RabbitNode) -> None:
    result = probe(url(rabbit, "mallory", "x"), timeout=TIMEOUT)
    assert result.verdict is Verdict.AUTH_FAILED, result.detail


def test_vhost_denied_no_permissions(rabbit: RabbitNode) -> None:
    result = probe(url(rabbit, "bob", "bobpw", "secret"), timeout=TIMEOUT)
    assert result.verdict is Verdict.VHOST_DENIED, result.detail
    assert result.reply_code == 530


def test_vhost_denied_missing_vhost(rabbit: RabbitNode) -> None:
    result = probe(url(rabbit, "guest", "guest", "nope"), timeout=TIMEOUT)
    assert result.verdict is Verdict.VHOST_DENIED, result.detail


def test_rabbitmq_answers_a_bad_header_with_its_own(rabbit: RabbitNode) -> None:
    # Not through probe(), which always sends 0-9-1: the raw bytes, to pin the
    # broker behaviour the protocol-mismatch verdict relies on (§4.2.2).
    with socket.create_connection((rabbit.host, int(rabbit.amqp_port or 0)), timeout=5) as s:
        s.sendall(b"AMQP\x01\x01\x00\x0a")
        assert s.recv(8) == b"AMQP\x00\x00\x09\x01"
