"""The suite's own layout: pytest (rootdir mode, no packages) needs unique test basenames.

Two ``test_x.py`` in different folders stop the *whole* run at collection
("import file mismatch"), which is how a merge once broke ``make test``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_basename_is_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
