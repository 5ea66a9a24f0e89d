# deephash: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deephash-installed
# The torch/torchvision pair installed first when none is present (a matching pair is required:
# a mismatched torchvision fails to import). Override for another CUDA/CPU build, e.g.
#   make install TORCH_SPEC="torch==2.5.1 torchvision==0.20.1"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
export WANDB_SILENT ?= true

.DEFAULT_GOAL := help
.PHONY: help install demo test test-full bench bench-gpu reproduce reproduce-smoke lint format clean

help: ## list the targets (coloured only on a terminal)
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; fi; \
	grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) \
	| awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-16s%s %s\n", on, $$1, off, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev,dashboard]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install deephash with its dev and dashboard extras

demo: $(STAMP) ## train, index and evaluate on the bundled digits (offline, CPU, a few minutes)
	$(PY) -m deephash.train experiment=demo

test: $(STAMP) ## run the test suite (offline, < 15 minutes on 2 cores; skips tests marked slow)
	WANDB_MODE=offline $(PY) -m pytest -q $(PYTEST_ARGS)

test-full: $(STAMP) ## run every test, the slow ones included
	WANDB_MODE=offline $(PY) -m pytest -q -m "" $(PYTEST_ARGS)

bench: $(STAMP) ## speed and memory benchmarks at 1M items (~30 min on 2 cores; BENCH_ARGS="--n-database 100000")
	@mkdir -p bench
	$(PY) -m deephash.bench retrieval --out bench/retrieval.json $(BENCH_ARGS)
	$(PY) -m deephash.bench memory --out bench/memory.json $(BENCH_ARGS)
	$(PY) -m deephash.bench sublinear --out bench/sublinear.json
	$(PY) -m deephash.bench train --out bench/train.json
	$(PY) -m deephash.bench eval --out bench/eval.json
	$(PY) -m deephash.bench decode --out bench/decode.json

bench-gpu: $(STAMP) ## the GPU figures on a machine with a CUDA GPU (search, training, decoding; ~10 min)
	@mkdir -p bench
	$(PY) -m deephash.bench retrieval --device cuda --bits 128 --out bench/retrieval_cuda.json $(BENCH_ARGS)
	$(PY) -m deephash.bench train --device cuda --precision bf16-mixed --channels-last --out bench/train_cuda.json
	$(PY) -m deephash.bench decode --device cuda --out bench/decode_cuda.json

reproduce: $(STAMP) ## regenerate the paper's results (datasets, ImageNet weights, ideally a GPU; MNIST-only without weights)
	$(PY) -m experiments.reproduce $(REPRODUCE_ARGS)

reproduce-smoke: $(STAMP) ## the reproduction pipeline, every stage, on the bundled digits (CPU, < 10 minutes)
	$(PY) -m experiments.reproduce --smoke $(REPRODUCE_ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove run outputs and caches (keeps .venv and data)
	rm -rf outputs multirun reports wandb bench .pytest_cache .ruff_cache bench.json
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
