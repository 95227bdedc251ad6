PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt

.PHONY: demo test install install-test clean

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

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
