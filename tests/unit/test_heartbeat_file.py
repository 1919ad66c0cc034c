"""The guard's heartbeat file: atomic, through a private temporary name, never through a symlink."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from hangproof.guard.runtime import write_heartbeat_file


def test_planted_symlink_at_the_old_tmp_name_is_not_followed(tmp_path: Path) -> None:
    # Another user planted <path>.tmp -> a file of ours (e.g. in a shared /tmp).
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "worker.hb"
    planted = tmp_path / "worker.hb.tmp"
    planted.symlink_to(victim)

    write_heartbeat_file(path, {"healthy": True, "pid": 1})

    assert victim.read_text() == "precious\n"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    assert json.loads(path.read_text()) == {"healthy": True, "pid": 1}
    assert not path.is_symlink()


def test_symlink_at_the_path_itself_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "worker.hb"
    path.symlink_to(victim)
    write_heartbeat_file(path, {"healthy": True})
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and json.loads(path.read_text()) == {"healthy": True}


def test_written_file_is_private_and_no_temporary_is_left(tmp_path: Path) -> None:
    path = tmp_path / "worker.hb"
    for n in range(3):
        write_heartbeat_file(path, {"round": n})
    assert json.loads(path.read_text()) == {"round": 2}
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0  # nobody else may write it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker.hb"]
