"""Markdown tables (with the guard's promise judged per guarded cell) from fault-matrix JSON.

The promise (issue 10), per guarded cell: detect <= stall_timeout; resume <=
stall_timeout + one backoff step (``Backoff().maximum``) after heal; 0 lost;
no false ok (a publish during the fault that said ok but never ran); the
worker never exits. Stock cells are measured, not judged::

    python benchmarks/fault_matrix_doc.py docs/fault-matrix-link.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from hangproof.failure import Backoff
from hangproof.lab.scenarios.fault_matrix import PROFILES


def misses(cell: dict[str, Any], stall: float) -> list[str]:
    """Why a guarded cell misses the promise (empty: it keeps it).

    >>> c = {"detect_s": 3.0, "resume_s": 2.0, "lost": 0, "worker_alive": True,
    ...      "publish_during_fault": "error 5.1s timed out"}
    >>> misses(c, 10.0), misses({**c, "resume_s": "HANG", "lost": 2}, 10.0)
    ([], ['resume HANG', 'lost 2'])
    """
    out = []
    if cell["detect_s"] is None or cell["detect_s"] > stall:
        out.append(f"detect {cell['detect_s']}")
    resume = cell["resume_s"]
    if not isinstance(resume, int | float) or resume > stall + Backoff().maximum:
        out.append(f"resume {resume}")
    if cell["lost"]:
        out.append(f"lost {cell['lost']}")
    during = cell["publish_during_fault"]
    if during.startswith("ok") and not during.endswith("(executed)"):
        out.append("false ok")
    if during.startswith("HANG"):
        out.append("publish hangs")
    if not cell["worker_alive"]:
        out.append("worker exited")
    return out


def table(report: dict[str, Any]) -> str:
    """One markdown row per cell; guarded cells get a promise verdict."""
    stall = float(report["stall_timeout"])
    head = "| fault | profile | detect | resume | pub | exec | stranded | lost | dup | alive | publish during fault | fault evidence | promise |"
    rows = [head, "|" + "---|" * 13]
    for c in report["cells"]:
        guarded = PROFILES[c["profile"]].guarded
        verdict = (
            ("MISS: " + ", ".join(misses(c, stall)) if misses(c, stall) else "kept")
            if guarded
            else "(stock)"
        )
        detect = "-" if c["detect_s"] is None else f"{c['detect_s']} s"
        resume = c["resume_s"] if isinstance(c["resume_s"], str) else f"{c['resume_s']} s"
        evidence = json.dumps(c["fault_detail"].get("measured", {}), sort_keys=True)
        during = c["publish_during_fault"].replace("|", "/")
        rows.append(
            f"| {c['fault']} | {c['profile']} | {detect} | {resume} | {c['published']} | "
            f"{c['executed']} | {c['stranded']} | {c['lost']} | {c['duplicated']} | "
            f"{'yes' if c['worker_alive'] else 'NO'} | {during} | `{evidence}` | {verdict} |"
        )
    return "\n".join(rows)


def main(paths: list[str]) -> int:
    for path in paths:
        with open(path) as f:
            print(table(json.load(f)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
