"""Markdown tables, with the guard's promise judged per guarded cell, from fault-matrix JSON.

    python scripts/matrix_promise.py docs/data/fault-matrix-cluster-*.json

The promise (issue 10), for profiles with ``+harden``/``+guard``:
detect <= stall_timeout; resume <= stall_timeout + one backoff step (the
policy's maximum step, 5 s) after heal; 0 lost; no false ok (a publish during
the fault that said ok but was never executed nor left queued); the worker
alive. A publish that fails is judged against ``publish_timeout``
(stall_timeout / 2) plus 0.5 s for scheduling. Stock cells are measured, not
judged.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

BACKOFF_STEP = 5.0  # Policy().backoff.maximum
PUBLISH_SLACK = 0.5


def verdict(cell: dict[str, Any], stall: float) -> str:
    """``ok`` or the list of promises the cell misses (stock cells: ``-``)."""
    if not cell["profile"].endswith(("+harden", "+guard")):
        return "-"
    misses = []
    if cell["detect_s"] is None or cell["detect_s"] > stall:
        misses.append("detect")
    resume = cell["resume_s"]
    if not isinstance(resume, int | float) or resume > stall + BACKOFF_STEP:
        misses.append(f"resume ({resume})")
    if cell["lost"]:
        misses.append(f"lost {cell['lost']}")
    if not cell["worker_alive"]:
        misses.append("exited")
    during = cell["publish_during_fault"]
    m = re.match(r"(ok|error) (\d+(?:\.\d+)?)s", during)
    if during.startswith("HANG") or not m:
        misses.append("publish hang")
    elif m.group(1) == "ok" and "(executed)" not in during and not cell["stranded"]:
        misses.append("false ok")
    elif float(m.group(2)) > stall / 2 + PUBLISH_SLACK:
        misses.append(f"publish {m.group(1)} after {m.group(2)} s")
    return "ok" if not misses else "MISS: " + ", ".join(misses)


def table(report: dict[str, Any]) -> str:
    stall = float(report["stall_timeout"])
    head = "| fault | profile | detect | resume | pub | exec | stranded | lost | dup | alive | publish during fault | promise |"
    rows = [head, "|" + "---|" * 12]
    for c in report["cells"]:
        detect = "-" if c["detect_s"] is None else f"{c['detect_s']} s"
        resume = c["resume_s"] if isinstance(c["resume_s"], str) else f"{c['resume_s']} s"
        during = c["publish_during_fault"].replace("|", "/")[:90]
        rows.append(
            f"| {c['fault']} | {c['profile']} | {detect} | {resume} | {c['published']} | "
            f"{c['executed']} | {c['stranded']} | {c['lost']} | {c['duplicated']} | "
            f"{'yes' if c['worker_alive'] else 'NO'} | {during} | {verdict(c, stall)} |"
        )
    return "\n".join(rows)


def main(paths: list[str]) -> int:
    for path in paths:
        report = json.loads(Path(path).read_text())
        print(f"`{path}` (stall_timeout {report['stall_timeout']} s):\n")
        print(table(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
