#!/usr/bin/env python3
"""Regenerate a fault-matrix run's markdown from its raw JSON (see hangproof.lab.scenarios.fault_matrix_docs).

scripts/fault_matrix_docs.py docs/fault-matrix-run.json --out docs/fault-matrix-run.md
"""

import sys

from hangproof.lab.scenarios.fault_matrix_docs import main

if __name__ == "__main__":
    sys.exit(main())
