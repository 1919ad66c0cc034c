"""The cluster faults' fault-matrix cells on one cluster bed, profile by profile (root, labrun).

    labrun .venv/bin/python scripts/cluster_matrix.py --out docs/data/fault-matrix-cluster.json

Same cells as ``hangproof lab run fault-matrix --faults url-failover,cluster-partition``
(:func:`~hangproof.lab.scenarios.fault_matrix.run_cell` on
:class:`~hangproof.lab.faults.cluster_bed.ClusterBed`), in profile-major order
(guarded profiles first) and with the report rewritten after every cell, so a
run cut short on a loaded 2-core box still leaves every cell it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from hangproof.lab.faults.cluster_bed import ClusterBed
from hangproof.lab.scenarios.fault_matrix import (
    DEFAULT_STALL_TIMEOUT,
    PRODUCER_RATE,
    Cell,
    run_cell,
)

FAULTS = ["url-failover", "cluster-partition"]
PROFILES = [
    "celery-prefork+harden",
    "kombu+guard",
    "celery-gevent+harden",
    "aio-pika+guard",
    "celery-prefork",
    "kombu",
    "celery-gevent",
    "aio-pika",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster_matrix")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--hang-bound", type=float, default=90.0)
    parser.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT)
    parser.add_argument("--lab-name", default="hpfcc")
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="hpfcluster-"))
    out = Path(args.out)
    report = {
        "scenario": "fault-matrix",
        "tls": False,
        "stall_timeout": args.stall_timeout,
        "hang_bound": args.hang_bound,
        "producer_rate": PRODUCER_RATE,
        "order": "profile-major (scripts/cluster_matrix.py)",
        "cells": [],
    }
    started = time.monotonic()
    bed = ClusterBed(args.lab_name)
    try:
        bed.up()
        report["bed_up_s"] = round(time.monotonic() - started, 1)
        for profile in args.profiles.split(","):
            for fault in args.faults.split(","):
                t0 = time.monotonic()
                try:
                    cell = run_cell(
                        bed, fault, profile, work, stall_timeout=args.stall_timeout,
                        hang_bound=args.hang_bound,
                    )  # fmt: skip
                except Exception as exc:
                    cell = Cell(fault, profile, resume_s="ERROR", notes=[repr(exc)[:300]])
                row = asdict(cell)
                row["cell_s"] = round(time.monotonic() - t0, 1)
                report["cells"].append(row)
                report["elapsed_s"] = round(time.monotonic() - started, 1)
                out.write_text(json.dumps(report, indent=2) + "\n")
                print(json.dumps(row), flush=True)
                if not bed.healthy():
                    report["aborted"] = "the cluster did not recover after the cell"
                    out.write_text(json.dumps(report, indent=2) + "\n")
                    return 1
    finally:
        bed.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
