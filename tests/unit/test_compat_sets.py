"""The compat matrix's version sets match the ranges pyproject.toml promises.

The promise is "every range is proven at both ends": the ``oldest`` set must
sit exactly on each floor of the ``guard`` extra, ``newest`` on what CI's
``clients`` extra installs, and every set inside every range. A floor raised
or lowered in pyproject without the matrix following fails here.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUARDED = ("celery", "kombu", "amqp", "aio-pika", "aiormq")


def _compat() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compat", ROOT / "scripts" / "compat.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def _ranges(extra: str) -> dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for requirement in project["optional-dependencies"][extra]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement)
        assert m, requirement
        low = high = None
        for spec in filter(None, (s.strip() for s in m.group(2).split(","))):
            parsed = re.fullmatch(r"(>=|<|==)\s*([0-9.]+)", spec)
            assert parsed, f"{requirement}: unexpected specifier {spec!r}"
            op, ver = parsed.groups()
            if op in (">=", "=="):
                low = _version(ver)
            if op in ("<", "=="):
                high = _version(ver)
        found[m.group(1).lower()] = (low, high)
    return found


def test_every_guarded_package_has_a_declared_range() -> None:
    ranges = _ranges("guard")
    for package in GUARDED:
        assert package in ranges, f"{package} missing from the guard extra"
        low, high = ranges[package]
        assert low is not None and high is not None, f"{package}: need a floor and a cap"


def test_oldest_set_sits_on_every_floor() -> None:
    ranges, sets = _ranges("guard"), _compat().SETS
    for package in GUARDED:
        assert _version(sets["oldest"][package]) == ranges[package][0], package


def test_newest_set_is_what_ci_installs() -> None:
    clients, sets = _ranges("clients"), _compat().SETS
    for package in GUARDED:
        if package in clients:
            assert _version(sets["newest"][package]) == clients[package][0], package


@pytest.mark.parametrize("name", ["oldest", "middle", "newest"])
def test_every_set_is_inside_every_range(name: str) -> None:
    ranges, pins = _ranges("guard"), _compat().SETS[name]
    assert set(pins) == set(GUARDED)
    for package, version in pins.items():
        low, high = ranges[package]
        assert low <= _version(version) < high, (name, package, version)


def test_a_guarded_cell_that_hangs_or_loses_work_is_a_miss() -> None:
    compat = _compat()
    kept = {"fault": "broker-freeze", "detect_s": 6.0, "resume_s": 9.5, "lost": 0,
            "published": 30, "worker_alive": True, "stranded": 0}  # fmt: skip
    assert compat.judge_cell(kept, 4.0) == []
    assert compat.judge_cell({**kept, "lost": 2}, 4.0) == ["2 lost"]
    assert compat.judge_cell({**kept, "worker_alive": False}, 4.0) == ["worker exited"]
    assert compat.judge_cell({**kept, "detect_s": None}, 4.0) == ["detect None > 8.0 s"]
    assert compat.judge_cell({**kept, "resume_s": "EXIT"}, 4.0) == ["resume EXIT > 24.0 s"]
    race = {**kept, "fault": "vip-race", "detect_s": 4.5, "fault_detail": {}}
    assert compat.judge_cell(race, 4.0) == ["detect 4.5 > 4.0 s", "race not triggered"]
