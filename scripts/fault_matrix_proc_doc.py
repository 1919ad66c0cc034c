"""Markdown for docs/fault-matrix-proc.md from a fault-matrix ``--json`` run.

    python scripts/fault_matrix_proc_doc.py docs/data/fault-matrix-proc.json

One row per cell, plus the promise for guarded cells (issue 10): detect <=
stall_timeout (client-freeze: counted from the SIGCONT, i.e. detect - hold,
since a frozen process can notice nothing), resume <= stall_timeout + one
backoff step (Backoff().delay(0)), 0 lost, no false ok (the publish during
the fault said ok but the task never ran), the worker alive, and the
consumer back (the task published after heal executed). Stock cells are
shown, not judged.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from hangproof.failure import Backoff

#: Faults the client cannot notice while they last: detection counts from heal.
DETECT_FROM_HEAL = {"client-freeze"}


def after_sigcont(cell: dict[str, Any]) -> float | None:
    """client-freeze: detection counted from the SIGCONT (inject start + sigstop_after + frozen)."""
    d = cell.get("fault_detail") or {}
    if cell["detect_s"] is None:
        return None
    frozen = d.get("sigstop_after_s", 0.0) + d.get("frozen_s", cell["hold_s"])
    return round(cell["detect_s"] - frozen, 1)


def misses(cell: dict[str, Any], stall: float) -> list[str]:
    """Why a guarded cell misses the promise (empty: it keeps it)."""
    out = []
    detect = cell["detect_s"]
    if detect is not None and cell["fault"] in DETECT_FROM_HEAL:
        detect = after_sigcont(cell)
    if detect is None:
        out.append("never detected")
    elif detect > stall:
        out.append(f"detect {detect}s > {stall:g}s")
    bound = stall + Backoff().delay(0)
    resume = cell["resume_s"]
    if not isinstance(resume, int | float):
        out.append(f"resume {resume}")
    elif resume > bound:
        out.append(f"resume {resume}s > {bound:g}s")
    if cell["lost"]:
        out.append(f"{cell['lost']} lost")
    during = cell["publish_during_fault"]
    if during.startswith("ok") and "(executed)" not in during:
        out.append("false ok")
    if not cell["worker_alive"]:
        out.append("worker exited")
    return out


def markdown(report: dict[str, Any]) -> str:
    stall = float(report["stall_timeout"])
    head = "| fault | profile | detect | resume | pub | exec | stranded | lost | dup | alive | publish during fault | fault evidence | promise |"
    rows = [head, "|" + "---|" * 13]
    for c in report["cells"]:
        d = c.get("fault_detail") or {}
        evidence = ", ".join(
            f"{k}={d[k]}"
            for k in (
                "stopped",
                "heartbeats",
                "frozen_s",
                "dropped_by_broker",
                "channel_closed_by_broker",
                "deleted",
                "consumers_at_heal",
                "closed",
            )
            if k in d
        )
        detect = "-" if c["detect_s"] is None else f"{c['detect_s']}s"
        if c["detect_s"] is not None and c["fault"] in DETECT_FROM_HEAL:
            detect += f" ({after_sigcont(c)}s after SIGCONT)"
        resume = c["resume_s"] if isinstance(c["resume_s"], str) else f"{c['resume_s']}s"
        if c["profile"].endswith(("+harden", "+guard")):
            miss = misses(c, stall)
            promise = "kept" if not miss else "MISS: " + "; ".join(miss)
        else:
            promise = "(stock: measured)"
        cells = [c["fault"], c["profile"], detect, str(resume), str(c["published"]),
                 str(c["executed"]), str(c["stranded"]), str(c["lost"]), str(c["duplicated"]),
                 "yes" if c["worker_alive"] else "NO", c["publish_during_fault"].replace("|", "/"),
                 evidence, promise]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)))
