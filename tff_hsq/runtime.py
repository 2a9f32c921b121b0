"""Stops the TFF worker processes that this Python process started.

TFF's default C++ execution context runs its computations in a `worker_binary` child process
that it only stops when its service manager is garbage-collected, which interpreter exit does
not guarantee. The orphaned worker then keeps the parent's stdout/stderr open, so a shell
pipeline such as `python train.py | tail` never ends. `stop_local_workers` ends exactly the
worker children of this process; `stop_local_workers_at_exit` schedules that for exit.
"""

import atexit
import os
import signal
import time

_registered = False


def _children(pid: int):
  """Pids of the direct children of `pid` (Linux /proc), whichever thread started them.

  TFF starts its worker from an executor thread, and /proc lists a child under the thread
  that forked it, so every task of the process is read.
  """
  children = []
  try:
    tasks = os.listdir(f'/proc/{pid}/task')
  except OSError:
    return children
  for task in tasks:
    try:
      with open(f'/proc/{pid}/task/{task}/children') as f:
        children.extend(int(child) for child in f.read().split())
    except OSError:
      pass
  return children


def is_worker(pid: int) -> bool:
  """Whether process `pid` runs TFF's `worker_binary` (False once it has exited)."""
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      argv = f.read().split(b'\0')
  except OSError:
    return False
  return bool(argv) and os.path.basename(argv[0]) == b'worker_binary'


def worker_pids(pid: int) -> list:
  """Pids of the TFF `worker_binary` processes that are direct children of process `pid`."""
  return [child for child in _children(pid) if is_worker(child)]


def stop_local_workers(timeout: float = 10.0) -> list:
  """Interrupts, then if needed kills, this process's TFF worker children; returns their pids.

  Only processes whose parent is this process and whose program is TFF's `worker_binary` are
  touched. Call it when this process is done with TFF computations: TFF's service manager
  does not expect its worker to go away and fails its next computation if it has.
  """
  workers = worker_pids(os.getpid())
  for pid in workers:
    _signal(pid, signal.SIGINT)  # What TFF itself sends: the worker shuts down its server.
  deadline = time.monotonic() + timeout
  for pid in workers:
    while not _reaped(pid):
      if time.monotonic() > deadline:
        _signal(pid, signal.SIGKILL)
        deadline = float('inf')
      time.sleep(0.02)
  return workers


def stop_local_workers_at_exit() -> None:
  """Registers `stop_local_workers` to run at interpreter exit (once)."""
  global _registered
  if not _registered:
    atexit.register(stop_local_workers)
    _registered = True


def _signal(pid: int, signum: int) -> None:
  try:
    os.kill(pid, signum)
  except ProcessLookupError:
    pass


def _reaped(pid: int) -> bool:
  try:
    done, _ = os.waitpid(pid, os.WNOHANG)
  except ChildProcessError:
    return True  # Already reaped (e.g. by subprocess.Popen.wait).
  return done == pid
