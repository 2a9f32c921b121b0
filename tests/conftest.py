"""Shared test set-up: quiet TensorFlow logging; stop TFF's worker when the session ends."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  # TFF's C++ context leaves its worker_binary running after exit, holding pytest's stdout;
  # CI reading that pipe would wait for it forever.
  from tff_hsq import runtime  # pylint: disable=g-import-not-at-top
  runtime.stop_local_workers()
