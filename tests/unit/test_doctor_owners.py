"""Mapping socket inodes to processes through a /proc tree (a fake one here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hangproof.doctor import sockets


def _fake_proc(root: Path) -> Path:
    (root / "640" / "fd").mkdir(parents=True)
    (root / "640" / "comm").write_text("kube-proxy\n")
    os.symlink("socket:[55]", root / "640" / "fd" / "7")
    os.symlink("/dev/null", root / "640" / "fd" / "0")
    (root / "812" / "fd").mkdir(parents=True)
    (root / "812" / "comm").write_text("python\n")
    os.symlink("socket:[101]", root / "812" / "fd" / "3")
    os.symlink("socket:[999]", root / "812" / "fd" / "4")  # a socket nobody asked about
    (root / "900").mkdir()  # exited mid-scan: no fd directory any more
    (root / "self").mkdir()  # not a pid
    return root


def test_owners_found_and_vanished_processes_skipped(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path)
    scan = sockets.map_owners([55, 101, 0], proc=str(proc))
    assert {i: [(o.pid, o.name, o.fd) for o in owners] for i, owners in scan.owners.items()} == {
        55: [(640, "kube-proxy", 7)],
        101: [(812, "python", 3)],
    }
    assert scan.unreadable_pids == 0


def test_other_users_fd_tables_are_counted_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = _fake_proc(tmp_path)
    real_listdir = os.listdir

    def listdir(path: str) -> list[str]:
        if str(path).endswith("640/fd"):
            raise PermissionError(13, "Permission denied")  # as for a non-root user
        return real_listdir(path)

    monkeypatch.setattr(sockets.os, "listdir", listdir)
    scan = sockets.map_owners([55, 101], proc=str(proc))
    assert list(scan.owners) == [101]
    assert scan.unreadable_pids == 1


def test_netns_names_cannot_escape_run_netns() -> None:
    from hangproof.errors import HangproofError

    for bad in ("../etc", "", "a/b"):
        with pytest.raises(HangproofError):
            sockets.netns_path(bad)
