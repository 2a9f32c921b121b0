r"""Run TFF computations on a TFF worker service of its own, here or on another machine.

TFF's default C++ context starts a `worker_binary` (the gRPC executor service shipped in the
tensorflow-federated wheel) on a free local port and talks to it through TFF's remote executor.
`execution_context(address)` builds the same context for a worker that is already running at
`address` (host:port), e.g. on a bigger machine:

  machine A$ python examples/remote.py --port=8000          # serves until Ctrl-C
  machine B$ python examples/train.py --worker=A:8000

What crosses the network: the serialized TFF computations (TensorFlow graphs) and their
arguments (the model state and the clients' data), and the results; no Python objects.

TFF 0.87 has no public constructor for a remote C++ context, so this assembles it from the
parts `tff.backends.native.create_sync_local_cpp_execution_context` is made of (the native
compiler, `RemoteExecutor` over a gRPC stub, `ResourceManagingExecutorFactory`,
`SyncExecutionContext`), with one difference: before every executor it checks that the worker
is reachable within `connect_timeout` seconds and raises `ConnectionError` naming the address
otherwise. TFF's context retries unavailable workers forever (waiting up to 30 s between
tries); this makes a dead worker fail the run at once instead.
"""

import os
import signal
import subprocess
import sys
import time

import grpc
# Internal TFF modules (0.87): the pieces of its local C++ context, reused for a remote one.
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import placements

# TFF's own gRPC limits for its worker: model states and client data can be large.
_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_CHANNEL_OPTIONS = [
    ('grpc.max_message_length', _MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', _MAX_MESSAGE_BYTES),
    ('grpc.max_send_message_length', _MAX_MESSAGE_BYTES),
]


def worker_binary() -> str:
  """The path of the `worker_binary` in the installed tensorflow-federated package."""
  import tensorflow_federated  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(tensorflow_federated.__file__), 'data', 'worker_binary')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No TFF worker_binary at {path}: is tensorflow-federated installed?')
  return path


def execution_context(address: str, connect_timeout: float = 30.0):
  """A synchronous TFF execution context whose computations run on the worker at `address`.

  Args:
    address: 'host:port' of a running TFF worker service.
    connect_timeout: seconds to wait for the worker before each executor is created.

  Returns:
    A context to install with `tff.framework.get_context_stack().install(context)` (a
    `with` block) or `set_default_context`.

  Raises (when a computation runs):
    ConnectionError: naming `address`, if the worker is not reachable within
      `connect_timeout` (never started, or died mid-run).
  """
  if ':' not in address:
    raise ValueError(f'A TFF worker address is host:port; got {address!r}.')
  channel = grpc.insecure_channel(address, _CHANNEL_OPTIONS)
  stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(channel)

  def executor_stack(cardinalities):
    try:
      grpc.channel_ready_future(channel).result(timeout=connect_timeout)
    except grpc.FutureTimeoutError:
      raise ConnectionError(
          f'No TFF worker service is reachable at {address} (waited {connect_timeout:g} s): '
          'start one (python examples/remote.py --port=PORT) or check the address.') from None
    cardinalities.setdefault(placements.CLIENTS, 0)
    executor = remote_executor.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return sync_execution_context.SyncExecutionContext(
      executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(
          executor_stack_fn=executor_stack),
      compiler_fn=compiler.desugar_and_transform_to_native,
      transform_args=tensorflow_computation.transform_args,
      transform_result=tensorflow_computation.transform_result)


def start_worker(port: int, log=None) -> subprocess.Popen:
  """Starts a TFF worker service on `port` (all interfaces) in its own session; returns it.

  Args:
    port: the TCP port to serve on.
    log: a file object for the worker's output (default: discarded), so that it holds no pipe
      of the caller's.
  """
  return subprocess.Popen(
      [worker_binary(), f'--port={port}', '--max_concurrent_computation_calls=-1'],
      stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
      stderr=subprocess.STDOUT if log else subprocess.DEVNULL, start_new_session=True)


def wait_until_serving(address: str, timeout: float = 60.0) -> None:
  """Blocks until the worker at `address` accepts connections; ConnectionError after timeout."""
  channel = grpc.insecure_channel(address)
  try:
    grpc.channel_ready_future(channel).result(timeout=timeout)
  except grpc.FutureTimeoutError:
    raise ConnectionError(f'The TFF worker at {address} did not start serving in '
                          f'{timeout:g} s.') from None
  finally:
    channel.close()


def stop_worker(process: subprocess.Popen, timeout: float = 10.0) -> None:
  """Stops a worker started by `start_worker`: SIGINT (what TFF sends), then SIGKILL."""
  if process.poll() is None:
    process.send_signal(signal.SIGINT)
    try:
      process.wait(timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def main(argv):
  """`python examples/remote.py --port=PORT`: serves a TFF worker until interrupted."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description='Runs a TFF worker service (worker_binary).')
  parser.add_argument('--port', type=int, required=True, help='TCP port to serve on.')
  args = parser.parse_args(argv)
  process = start_worker(args.port, log=sys.stderr)
  print(f'TFF worker service (pid {process.pid}) serving on port {args.port}; Ctrl-C stops it.',
        flush=True)

  def stop(signum, frame):
    del signum, frame
    stop_worker(process)
    sys.exit(0)

  signal.signal(signal.SIGINT, stop)
  signal.signal(signal.SIGTERM, stop)
  while process.poll() is None:
    time.sleep(0.5)
  sys.exit(f'The TFF worker exited with code {process.returncode}.')


if __name__ == '__main__':
  main(sys.argv[1:])
