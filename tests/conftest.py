"""Shared test configuration.

Tests marked ``lab`` need root, network namespaces and the lab's Debian
packages; they are skipped (with the reason) elsewhere. Everything else runs as
any user with no network.
"""

from __future__ import annotations

import os
import shutil

import pytest

LAB_TOOLS = ("ip", "iptables-restore", "conntrack", "rabbitmq-server", "keepalived", "ss")


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in LAB_TOOLS if shutil.which(t, path=path) is None]
    if missing:
        return f"lab tools missing: {', '.join(missing)} (run `make setup`)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _lab_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)
