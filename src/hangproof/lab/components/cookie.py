"""Erlang cookies for the lab's RabbitMQ nodes: random, root-only from the first byte.

Whoever holds a node's cookie can attach to it and run ``os:cmd`` as the user
the broker runs as (root, in the lab). So a cookie is never a fixed string,
never written to a file anyone else can read even for a moment, and never
printed:

- :func:`new_cookie` is ``secrets.token_hex`` (128 bits);
- :func:`write_cookie` creates the file with ``O_CREAT | O_EXCL | O_NOFOLLOW``
  and mode 0400 in one ``open``: no window with a looser mode, no following a
  symlink planted at the path, and the umask cannot loosen it;
- the directory holding it (a node's ``$HOME``) is 0700.

One lab has one cookie (:func:`lab_cookie`, in its state directory): its
cluster nodes must share it to join one another (classic-config peer
discovery), and each node gets its own copy, created the same way.

    >>> write_cookie(Path("/tmp/x/.erlang.cookie"), new_cookie())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

#: Name of the lab's shared cookie file in its state directory.
LAB_COOKIE_FILE = "erlang.cookie"


def new_cookie() -> str:
    """A random cookie (32 hex characters: what Erlang accepts, 128 bits)."""
    return secrets.token_hex(16)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed; ``path`` itself ends up 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def read_private(path: Path) -> str | None:
    """The cookie at ``path`` if it is a regular file of ours that no one else can read.

    Anything else (missing, a symlink, readable by others, someone else's)
    is None: not trusted, to be replaced.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        value = f.read().strip()
    return value or None


def write_cookie(path: Path, cookie: str, *, replace: bool = True) -> None:
    """Create ``path`` holding ``cookie``, mode 0400, with O_EXCL (never follows a symlink).

    An existing file is kept if it already is our private copy of ``cookie``;
    otherwise, with ``replace``, it is unlinked and created afresh (still
    O_EXCL: if something reappears at the path in between, this fails rather
    than write through it). Without ``replace`` an existing path raises
    :class:`FileExistsError`.
    """
    if replace:
        if read_private(path) == cookie:
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(cookie)


def node_cookie(path: Path, cookie: str | None) -> str:
    """Write a node's ``$HOME/.erlang.cookie``: ``cookie``, or its own, or a new one.

    A node given no cookie keeps the private one it already has (a restart
    must not lock rabbitmqctl out), or gets a new random one.
    """
    private_dir(path.parent)
    value = cookie or read_private(path) or new_cookie()
    write_cookie(path, value)
    return value


def lab_cookie(directory: Path, *, renew: bool = False) -> str:
    """The lab's one cookie, in ``directory`` (created, random, 0400, on first use).

    ``renew`` (at ``lab up``) replaces it, so every lab up gets a fresh one.
    """
    path = private_dir(directory) / LAB_COOKIE_FILE
    value = None if renew else read_private(path)
    if value is None:
        value = new_cookie()
        write_cookie(path, value)
    return value
