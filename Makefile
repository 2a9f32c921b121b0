# Two commands for a fresh machine with Python 3.11 (see README.md):
#   make demo   creates .venv if missing and runs the main job
#   make test   creates .venv if missing and runs the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Quiet TensorFlow's C++ start-up logging; Python warnings still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv datasets demo test worker codebooks bench bench-quick clean

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

# A TFF worker service for `examples/train.py --worker=HOST:$(PORT)`; Ctrl-C stops it.
PORT ?= 8000
worker: $(STAMP)
	$(PY) examples/remote.py --port=$(PORT)

# Regenerates the shipped codebooks (tff_hsq/data/codebooks.npz); the K = 4096 Gaussian one
# takes 10-20 minutes on 2 cores.
codebooks: $(STAMP)
	$(PY) -c 'from tff_hsq import codebooks; codebooks.write_shipped()'

# The benchmark studies (benchmarks/README.md), each writing benchmarks/results/<study>.{csv,md,png}:
# rate-distortion, convergence (3 seeds, two datasets), speed and memory, rotated HSQ vs DRIVE.
# About 35 minutes on 2 cores; run on an otherwise idle machine (the timings are ratios measured in
# one run, but a busy machine still adds noise). `make bench-quick` runs each in its --quick
# setting into $(BENCH_QUICK_DIR) (what tests/benchmarks_test.py checks), a few minutes each.
BENCH_STUDIES := rate_distortion convergence speed_memory rotated
BENCH_QUICK_DIR ?= /tmp/tff_hsq_bench_quick
bench: $(STAMP) datasets
	for study in $(BENCH_STUDIES); do $(PY) benchmarks/$$study.py || exit 1; done

bench-quick: $(STAMP) datasets
	for study in $(BENCH_STUDIES); do \
	  TFF_HSQ_BENCH_RESULTS=$(BENCH_QUICK_DIR) $(PY) benchmarks/$$study.py --quick || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Bazel (Debian's bazel-bootstrap, Bazel 4.2.3), offline: see WORKSPACE. `make bazel` installs it
# when missing and points its Python toolchain at $(VENV) (tools/venv.bazelrc, git-ignored).
# `make bazel-test` builds every target and runs the tests not tagged "slow" in BUILD:
# codebooks_test, privacy_test, data_test, secure_test, learning_test, nearest_scale_test
# (about 2 minutes cold, what CI runs). The slow ones, quantizer_test, factory_test,
# train_example_test, colab_test, rotated_test, remote_test and benchmarks_test (about 15
# minutes more on 2 cores), run with `make bazel-test BAZEL_TESTS=//...`.
# bazel-4: Debian's name for exactly that Bazel (WORKSPACE's stand-ins are for Bazel 4; a
# `bazel` earlier on PATH may be npm's bazelisk, which needs the internet).
BAZEL ?= bazel-4
BAZEL_TESTS ?= --test_tag_filters=-slow //...

.PHONY: bazel bazel-test

bazel: $(STAMP)
	@command -v $(BAZEL) >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq bazel-bootstrap >/dev/null; }
	tools/bazel_venv.sh $(VENV)

bazel-test: bazel datasets
	$(BAZEL) test $(BAZEL_TESTS)
