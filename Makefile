# `make demo`: set up from scratch, then run the whole default pipeline (synthetic data, offline).
# `make test`: set up from scratch, then run the whole test suite.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lint bench bench-real clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/dvc repro
	$(BIN)/transmodal timings
	@echo "Table 5 of the demo (metrics/ablation.md: sequence top-1 on the test split, mean of the seeds):"
	@grep '^|' metrics/ablation.md

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check transmodal stages tests benchmarks
	$(BIN)/ruff format --check transmodal stages tests benchmarks

bench: setup
	$(BIN)/python benchmarks/frames.py
	$(BIN)/python benchmarks/head.py --quick
	$(BIN)/python benchmarks/stitching.py

bench-real: setup
	$(BIN)/python benchmarks/real_size.py
	$(BIN)/python benchmarks/keep.py
	$(BIN)/python benchmarks/disk.py
	$(BIN)/python benchmarks/train_state.py

clean:
	rm -rf data models metrics/timings
