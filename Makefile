# The two commands a fresh Debian 12 machine needs (see README.md).
# Each installs what is missing first, idempotently.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean-lab compat

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/hangproof demo

test: setup
	@scripts/test.sh

# The compat matrix: every supported version set in its own venv (.compat/);
# COMPAT_ARGS="--sets oldest,newest" for a subset, "--no-smoke" without root.
compat: setup
	$(PY) scripts/compat.py $(COMPAT_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-lab: setup
	$(VENV)/bin/hangproof lab down --all
