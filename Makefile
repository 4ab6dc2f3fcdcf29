# emoserve developer tasks. `make setup` creates .venv; everything else uses it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Where pip finds torch for `setup`. Empty: pip's configured index, which on the public PyPI gives
# the CUDA build of torch 2.13.0 on Linux (several GB); https://download.pytorch.org/whl/cpu gives the
# CPU wheel (what the training job needs here).
TORCH_INDEX ?=
SETUP_MARK := $(VENV)/.installed-dev
SERVE_MARK := $(VENV)/.installed-serve

.PHONY: setup serve-setup run test lint typecheck reliability bench bench-peer sdk-check release-artifacts clean

# Everything: the package (editable) with the train (torch) and dev (pytest, ruff, mypy) extras.
setup: $(SETUP_MARK)

$(SETUP_MARK): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, by itself, so its index is the one chosen here (see TORCH_INDEX)
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==2.13.0"
	$(BIN)/pip install -q -e ".[train,dev]"
	touch $@ $(SERVE_MARK)

# Serving only: the package with the CPU onnxruntime, no torch, no train/dev extras.
serve-setup: $(SERVE_MARK)

$(SERVE_MARK): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# The default detector and classifiers ship inside the package: no pull, no network.
run: serve-setup
	$(BIN)/emoserve serve

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy emoserve_cli service model_store training clients tests bench

# Fuzzing, overload and fault injection against a real server (loopback only, bounded); writes docs/reliability.md
reliability: setup
	$(BIN)/python bench/reliability.py

bench: setup
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_classifiers.py
	$(BIN)/python bench/bench_http.py
	$(BIN)/python bench/bench_stream.py

# The peer (`fer`: TensorFlow, Haar cascade, mini-Xception) in its own environment, then the side-by-side run
FER_VENV ?= .venv-fer
$(FER_VENV)/bin/python:
	$(PY) -m venv $(FER_VENV)
	$(FER_VENV)/bin/pip install -q --upgrade pip
	# fer's own requirements name facenet-pytorch (a CUDA torch) for its optional MTCNN: install what it imports
	$(FER_VENV)/bin/pip install -q "tensorflow-cpu==2.20.0" "opencv-contrib-python-headless==4.12.0.88" \
		"pandas==3.1.1" "requests==2.34.2" "pillow==13.0.0" "tqdm==4.70.1" "setuptools<81"
	$(FER_VENV)/bin/pip install -q --no-deps "fer==25.10.3"

bench-peer: setup $(FER_VENV)/bin/python
	$(BIN)/python bench/bench_peer.py --fer-python $(FER_VENV)/bin/python

sdk-check: setup  # the SDK alone in a fresh venv, offline and against a real server (clients/python/sdk_check.sh)
	clients/python/sdk_check.sh $(BIN)/python $(PY)

# The release artifacts of the earlier versions kept in releases/ (model_store/catalog.yaml, `releases:`),
# for the project's release page or a mirror folder: `emoserve models pull NAME@VERSION --mirror dist/releases`.
release-artifacts: serve-setup
	for d in releases/*/*/; do n=$$(basename $$(dirname $$d)); v=$$(basename $$d); \
	  EMOSERVE_MODEL_ROOT=releases $(BIN)/emoserve models pack $$n@$$v --out dist/releases || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
