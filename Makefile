# The two commands of the README. Both create .venv on first use (torch first, so pip takes the
# pinned CPU/CUDA build instead of resolving a new one), and are quick once it exists.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEEPSPEED_VERSION ?= 0.19.8
NPROC ?= auto
CONFIG ?= recipes/ticket_router/config.yaml
PYTEST_ARGS ?=

.PHONY: train test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-run the install only when the dependency list changes. DeepSpeed (strategy: deepspeed) ships as a
# source package whose build imports torch: installed after it without build isolation, no ops compiled
# ahead (ZeRO 1/2/3 need none on CPU; CUDA ops JIT-build on first use).
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation deepspeed==$(DEEPSPEED_VERSION)
	touch $@

venv: $(VENV)/.installed

train: venv
	$(BIN)/dtrain launch --nproc-per-node $(NPROC) $(CONFIG) $(ARGS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
