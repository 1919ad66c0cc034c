"""Shared test configuration.

Tests marked ``lab`` need root, network namespaces and the lab's Debian
packages; they are skipped (with the reason) elsewhere. Everything else runs as
any user with no network.

Under ``HANGPROOF_REQUIRE_LAB=1`` (set by ``.ci/run``, and by scripts/test.sh
when run as root with the tools installed) a lab test that cannot run, or that
skips itself, is a FAILURE: CI cannot go green with the real evidence unrun.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

LAB_TOOLS = ("ip", "iptables-restore", "conntrack", "rabbitmq-server", "keepalived", "ss")
REQUIRE_LAB_ENV = "HANGPROOF_REQUIRE_LAB"


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in LAB_TOOLS if shutil.which(t, path=path) is None]
    if missing:
        return f"lab tools missing: {', '.join(missing)} (run `make setup`)"
    return None


def _lab_required() -> bool:
    return os.environ.get(REQUIRE_LAB_ENV, "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _lab_unavailable()
    if reason is None or _lab_required():  # required: pytest_runtest_setup fails them
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "lab" in item.keywords and _lab_required():
        reason = _lab_unavailable()
        if reason is not None:
            pytest.fail(f"{REQUIRE_LAB_ENV}=1 but this lab test cannot run: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    expected_failure = hasattr(report, "wasxfail")  # an xfail is reported as skipped
    if report.skipped and not expected_failure and "lab" in item.keywords and _lab_required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_LAB_ENV}=1 forbids skipping a lab test; it skipped: {reason}"
