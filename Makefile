PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt

.PHONY: demo test test-numerics test-install mutation install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(PIP) torch==2.13.0
	$(PIP) -e .

install-test: install
	$(PIP) -e '.[test]'

demo: install
	$(BIN)/mmbalance demo --out runs/demo

# Two worker processes (pytest-xdist), one thread each: CI's 2 cores; about 4 min here (226 s on
# 2026-11-30) against about 10 min in one process. Plain `pytest` still runs in one process.
test: install-test
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rs -n 2

# The numerics-sensitive tests again on other kernels than the machine's best: ATen's portable
# ones and MKL's compatible code path. A test that passes only under one CPU's rounding fails
# here (a test held on AMD's AVX-512 and failed on a Xeon's). CI runs it after `make test`.
test-numerics: install-test
	ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rs -n 2 -m "numerics and not slow"

# A fresh venv with only the declared dependencies (no extras): every module imports and a
# WAV-reading loader runs. Slow (a pip install); CI runs it after `make test`.
test-install: install-test
	$(BIN)/python -m pytest -q -m slow tests/test_install.py

# Mutation testing (mutmut, pinned in constraints.txt) of losses/, methods/, data/arrays.py and
# the checkpoint code, each with the fast tests that cover it; results in .mutation/<module>/.
# One module: make mutation MODULES=losses. Kill rates: docs/testing.md.
MODULES ?= losses methods arrays rundir
mutation: install-test
	$(PIP) -e '.[dev]'
	$(BIN)/python tests/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) runs
