"""User-facing errors: one line that says what is wrong and how to fix it.

Every front end catches :class:`HangproofError` and prints ``str(error)`` with
no traceback. Exit code 2 means "usage error, or the environment is missing
something" (ARCHITECTURE.md).
"""

from __future__ import annotations

import os
import shutil

#: Exit codes, as fixed by ARCHITECTURE.md.
EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2

#: Which Debian package provides each external tool the lab and doctor run.
DEBIAN_PACKAGE_FOR_TOOL: dict[str, str] = {
    "ip": "iproute2",
    "ss": "iproute2",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
    "conntrack": "conntrack",
    "keepalived": "keepalived",
    "rabbitmq-server": "rabbitmq-server",
    "rabbitmqctl": "rabbitmq-server",
    "epmd": "erlang-base",
    "curl": "curl",
}


class HangproofError(Exception):
    """An error the user can fix. ``str()`` is the one line we print."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NotRootError(HangproofError):
    """The command changes kernel state (namespaces, iptables) and needs root."""


class MissingToolError(HangproofError):
    """An external tool is not installed."""


def require_root(what: str) -> None:
    """Fail with exit 2 unless we run as root.

    >>> require_root("hangproof lab up")  # doctest: +SKIP
    """
    if os.geteuid() != 0:
        raise NotRootError(
            f"{what} needs root (it creates network namespaces and iptables rules): "
            f"run it with sudo, e.g. `sudo {what}`"
        )


def require_tools(*tools: str) -> None:
    """Fail with exit 2 naming the first missing tool and the apt command that installs it."""
    missing = [t for t in tools if _which(t) is None]
    if missing:
        packages = sorted({DEBIAN_PACKAGE_FOR_TOOL.get(t, t) for t in missing})
        raise MissingToolError(
            f"missing tool{'s' if len(missing) > 1 else ''}: {', '.join(missing)}; "
            f"install with `apt-get install -y {' '.join(packages)}` (or run `make setup`)"
        )


def _which(tool: str) -> str | None:
    # sbin is not on every user's PATH, but root tools live there.
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/lib/rabbitmq/bin"
    return shutil.which(tool, path=path)


def tool_path(tool: str) -> str:
    """The absolute path of ``tool``; raises :class:`MissingToolError` if absent."""
    found = _which(tool)
    if found is None:
        require_tools(tool)
    assert found is not None
    return found
