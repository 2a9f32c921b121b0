# Two commands for a fresh machine with Python 3.11 (see README.md):
#   make demo   creates .venv if missing and runs the main job
#   make test   creates .venv if missing and runs the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Quiet TensorFlow's C++ start-up logging; Python warnings still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv demo test codebooks clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(PY) examples/train.py

test: $(STAMP)
	$(PY) -m pytest tests

# Regenerates the shipped k-means codebooks (tff_hsq/data/codebooks.npz); about a minute.
codebooks: $(STAMP)
	$(PY) -c 'from tff_hsq import codebooks; codebooks.write_shipped()'

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
