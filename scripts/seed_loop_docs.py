#!/usr/bin/env python3
"""docs/seed-loop.md's time-to-wedge tables from raw seed-loop JSON (see hangproof.lab.scenarios.seed_loop_docs).

scripts/seed_loop_docs.py collect runs/*.json --commit SHA --out docs/data/seed-loop-runs.json
scripts/seed_loop_docs.py render docs/data/seed-loop-runs.json --out docs/seed-loop.md
"""

import sys

from hangproof.lab.scenarios.seed_loop_docs import main

if __name__ == "__main__":
    sys.exit(main())
