"""`hangproof --version`, and README links that work for a user who has only the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import hangproof
from hangproof.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"hangproof {version('hangproof')}\n"
    assert hangproof.__version__ == version("hangproof")


def test_version_flag_of_the_console_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hangproof.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("hangproof "), proc.stderr


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize(
    "doc", ["README.md", *[str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")]]
)
def test_relative_links_resolve_inside_the_repository(doc: str) -> None:
    source = ROOT / doc
    for target in _LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # http(s), mailto, in-page anchors
        resolved = (source.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc} links outside the repository: {target}"
        assert resolved.exists(), f"{doc} links to a missing file: {target}"
