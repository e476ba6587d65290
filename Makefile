# Two commands do all the set-up:  `make demo`  and  `make test`.
# Both create .venv with the pinned CPU stack and the ONNX extra (so the export tests run) on
# first use, and again when either requirements file changes (Python 3.10 or 3.11:
# mxnet 1.9.1 needs numpy<1.24, which has no wheels for 3.12+).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3.10 || command -v python3)
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench bench-quick clean help

help:
	@echo "make demo   - set up .venv and train a small CIFAR-10 network on the bundled sample (~2 min)"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make bench  - run the benchmark suite (~10-15 min; writes bench/results/results.{md,json,png})"
	@echo "make bench-quick - the same, short runs (~3-5 min)"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-onnx.txt
	@$(PY) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 8) <= v < (3, 12) else "gluon_transfer needs Python 3.8-3.11 (mxnet 1.9.1 needs numpy<1.24); found %d.%d at $(PY). Set PY=/path/to/python3.11" % v)'
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-onnx.txt
	@touch $@

# Each demo run gets a new folder runs/demo/<model>-<date>; runs/demo/latest points at the newest.
demo: $(STAMP)
	$(PYTHON) train_cifar.py --demo

test: $(STAMP)
	$(PYTHON) -m pytest -q

test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PYTHON) bench/run_all.py

bench-quick: $(STAMP)
	$(PYTHON) bench/run_all.py --quick

# Never removes runs/: training runs are the user's files.
clean:
	rm -rf .pytest_cache
