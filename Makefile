# One command each: `make demo` (set up, then train and evaluate a tiny GenLIP on CPU),
# `make test` (set up, then run the test suite). Both work on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-done
APT_PKGS := dataset-fashion-mnist
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup slurm test test-fast demo bench gpu-check lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# A one-node SLURM cluster on this host for the launch tests (root only; elsewhere they skip).
slurm:
	@if [ "$$(id -u)" = 0 ]; then bash launch/slurm_local_cluster.sh; \
	else echo "not root: skipping the local SLURM cluster (tests/launch/test_slurm.py will skip)"; fi

test: setup slurm
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not slow"

demo: setup
	$(BIN)/genlip demo --out demo_out

bench: setup
	$(BIN)/python bench/model_step.py

# On ONE GPU, under 8 minutes: every GPU path against its reference, and L/16 / g/16 throughput
# (docs/gpu_check.md). Writes bench/results/gpu_check-<gpu>-<date>.json (commit it).
gpu-check: setup
	$(BIN)/python bench/gpu_check.py

lint: setup
	$(BIN)/ruff check genlip_megatron data_tools launch tests bench

clean:
	rm -rf $(VENV) demo_out runs
