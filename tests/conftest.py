"""Shared test set-up: quiet TensorFlow logging, a secure-sum context, stopping TFF's worker."""

import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


@pytest.fixture(scope='module')
def secure_sum_context():
  """Installs an execution context that runs secure sums, for the tests of one module.

  TFF's default C++ context cannot run federated_secure_sum_bitwidth ("Cannot embed a
  federated value"). Its test context runs on the same C++ runtime but compiles the secure
  intrinsics to plain sums (which check that every input fits its bit width).
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  context = tff.backends.test.create_sync_test_cpp_execution_context()
  with tff.framework.get_context_stack().install(context):
    yield


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  # TFF's C++ context leaves its worker_binary running after exit, holding pytest's stdout;
  # CI reading that pipe would wait for it forever.
  from tff_hsq import runtime  # pylint: disable=g-import-not-at-top
  runtime.stop_local_workers()
