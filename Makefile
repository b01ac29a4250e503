# The two commands of the README. Both create the environment first when it is missing.
#   make run   - the workflow on the embedded default (config/config.yaml)
#   make test  - the test suite
# GPU users who already have a CUDA torch: `make run VENV_OPTS=--system-site-packages` keeps it
# (torch==2.13.0 is installed only when the environment has no torch at all).

PYTHON ?= python3
VENV ?= .venv
VENV_OPTS ?=
CORES ?= all
CONFIG ?= config/config.yaml
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint dry-run clean-results

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_OPTS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[embedded,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --rerun-incomplete

test: $(STAMP)
	$(BIN)/pytest -ra

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1

dry-run: $(STAMP)
	$(BIN)/snakemake -n --cores $(CORES) --configfile $(CONFIG)

clean-results:
	rm -rf results logs .snakemake/incomplete
