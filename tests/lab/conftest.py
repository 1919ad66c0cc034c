"""Lab fixtures: one lab per test module, torn down even when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine.lab import Lab
from hangproof.lab.engine.topology import Topology

#: Tests use their own lab name, so a developer's `hplab` is never touched.
TEST_LAB = "hpt"


@pytest.fixture(autouse=True)
def _no_guard_worker_outlives_its_test() -> Iterator[None]:
    """Stop any worker tests/lab/guard_workers.start_worker started, even after a failure."""
    yield
    from guard_workers import stop_started  # tests/lab is on sys.path (rootdir import mode)

    stop_started()


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Lab state in a temporary directory, not the system's /var/lib/hangproof."""
    path = tmp_path_factory.mktemp("hangproof-state")
    old = os.environ.get("HANGPROOF_STATE_DIR")
    os.environ["HANGPROOF_STATE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HANGPROOF_STATE_DIR", None)
    else:
        os.environ["HANGPROOF_STATE_DIR"] = old


@pytest.fixture(scope="module")
def seed_lab() -> Iterator[Lab]:
    """The seed's 3-node lab with one broker (pod on n1), up for the module."""
    lab = Lab(Topology.seed(TEST_LAB))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def rabbit(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RabbitNode]:
    """A real RabbitMQ on loopback (private epmd/dist ports), one per test module.

    It listens with TLS too (``tls_url``, lab CA in ``tls_files``): a test
    picks its transport (guard_workers.broker), so one node serves both.
    """
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    node = RabbitNode(name, tmp_path_factory.mktemp("rabbit"), tls=True)
    try:
        node.start(timeout=90)
        yield node
    finally:
        node.stop()
