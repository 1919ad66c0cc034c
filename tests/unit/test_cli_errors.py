"""User errors: one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hangproof.cli import main
from hangproof.errors import MissingToolError, NotRootError, require_root, require_tools


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hangproof.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_malformed_topology_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("vip: 10.1.2.3\n")
    r = run_cli("lab", "up", "--config", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "vip" in lines[0] and "198.18.0.0" in lines[0]


def test_unknown_option_is_a_usage_error() -> None:
    r = run_cli("lab", "race", "--no-such-flag")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_not_root_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotRootError, match="sudo"):
        require_root("hangproof lab up")
    assert main(["lab", "down"]) == 2


def test_missing_tool_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import hangproof.errors

    monkeypatch.setattr(hangproof.errors, "_which", lambda tool: None)
    with pytest.raises(MissingToolError, match="apt-get install -y conntrack iproute2"):
        require_tools("conntrack", "ss")


def test_race_without_a_lab(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the root check comes first without root")
    monkeypatch.setenv("HANGPROOF_STATE_DIR", str(tmp_path))
    assert main(["lab", "race", "--name", "hpnolab"]) == 2
    err = capsys.readouterr().err
    assert "is not up" in err and "hangproof lab up" in err
