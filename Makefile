# emoserve developer tasks. `make setup` creates .venv; everything else uses it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MIRROR ?= ../shared/models

.PHONY: setup run test lint typecheck reliability bench clean

setup: $(BIN)/emoserve

$(BIN)/emoserve: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned so pip takes the CPU wheel and never resolves a CUDA build
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[cpu,train,dev]"
	touch $@

# Pull the default detector (from the mirror when present, else its official source), then serve.
run: setup
	$(BIN)/emoserve models pull yunet-2023mar $(if $(wildcard $(MIRROR)),--mirror $(MIRROR))
	$(BIN)/emoserve serve

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy service model_store training clients tests

# Fuzzing, overload and fault injection against a real server (loopback only, bounded); writes docs/reliability.md
reliability: setup
	$(BIN)/python bench/reliability.py

bench: setup
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_http.py
	$(BIN)/python bench/bench_stream.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
