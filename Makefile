# Two commands for a fresh machine with Python 3.11 (see README.md):
#   make demo   creates .venv if missing and runs the main job
#   make test   creates .venv if missing and runs the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Quiet TensorFlow's C++ start-up logging; Python warnings still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv datasets demo test codebooks clean

venv: $(STAMP)

# The offline datasets that Debian packages (see examples/data.py): Fashion-MNIST and the King
# James Bible. Installed once, as root, when missing.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
datasets:
	@if [ ! -e $(FASHION_MNIST) ] || ! command -v bible >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq dataset-fashion-mnist bible-kjv >/dev/null; fi

$(STAMP): requirements.txt requirements-nodeps.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP) datasets
	$(PY) examples/train.py --noresume

test: $(STAMP) datasets
	$(PY) -m pytest tests

# Regenerates the shipped k-means codebooks (tff_hsq/data/codebooks.npz); about a minute.
codebooks: $(STAMP)
	$(PY) -c 'from tff_hsq import codebooks; codebooks.write_shipped()'

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
