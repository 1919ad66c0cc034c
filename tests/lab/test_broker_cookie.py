"""A test broker is not a way to root (issue 9, item 3), on a real RabbitMQ on loopback.

The broker runs as root with Erlang distribution on 127.0.0.1. Its cookie is
random and only root can read it: another local user cannot read it, and the
old fixed cookie no longer opens the node. About 15 s (one broker boot).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from hangproof.lab.components.rabbitmq import RABBITMQ_BIN, RabbitNode
from hangproof.lab.engine import processes

pytestmark = pytest.mark.lab

OLD_FIXED_COOKIE = "HANGPROOFLABCOOKIE"


def ctl_with_home(node: RabbitNode, home: Path) -> subprocess.CompletedProcess[str]:
    """rabbitmqctl against ``node`` with the cookie found in ``home`` (an attacker's)."""
    return processes.run(
        [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.nodename, "-q", "eval", "1 + 1."],
        env={**node.env(), "HOME": str(home)},
        timeout=60,
        check=False,
    )


def test_only_root_can_read_the_cookie(rabbit: RabbitNode) -> None:
    cookie = rabbit.home / ".erlang.cookie"
    st = os.lstat(cookie)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == 0
    assert stat.S_IMODE(os.stat(rabbit.home).st_mode) == 0o700
    assert cookie.read_text() != OLD_FIXED_COOKIE
    as_nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(cookie)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert as_nobody.returncode != 0 and as_nobody.stdout == ""


def test_the_old_fixed_cookie_no_longer_opens_the_node(rabbit: RabbitNode, tmp_path: Path) -> None:
    assert rabbit.ctl("eval", "1 + 1.").strip() == "2"  # the node's own cookie works
    home = tmp_path / "attacker"
    home.mkdir(mode=0o700)
    (home / ".erlang.cookie").write_text(OLD_FIXED_COOKIE)
    (home / ".erlang.cookie").chmod(0o400)
    result = ctl_with_home(rabbit, home)
    assert result.returncode != 0, "a fixed cookie still runs code on the broker"
    assert "2" not in result.stdout.split()
