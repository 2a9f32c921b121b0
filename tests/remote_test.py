"""Training through a TFF worker service of its own (examples/remote.py, train.py --worker)."""

import os
import subprocess
import sys
import time

import portpicker
import pytest

from examples import remote
from examples import train
from train_runner import run_main

_ARGV = ['--clients=6', '--clients_per_round=3', '--aggregators=balanced']


def read_csv(path):
  with open(path) as f:
    return f.read().splitlines()


@pytest.fixture
def worker(tmp_path):
  """Starts TFF worker services on free loopback ports; stops every one at the end."""
  started = []

  def start():
    port = portpicker.pick_unused_port()
    log = open(tmp_path / f'worker_{port}.log', 'w')
    process = remote.start_worker(port, log=log)
    started.append((process, log))
    address = f'127.0.0.1:{port}'
    remote.wait_until_serving(address)
    return process, address

  yield start
  for process, log in started:
    remote.stop_worker(process)
    log.close()
    assert process.poll() is not None


def metrics_path(output_dir):
  return output_dir / 'mnist5k' / 'balanced' / 'metrics.csv'


def test_training_through_a_worker_equals_the_in_process_run(worker, tmp_path, capfd):
  _, address = worker()
  run_main(_ARGV + ['--rounds=2', f'--worker={address}', f'--output_dir={tmp_path / "remote"}'])
  run_main(_ARGV + ['--rounds=2', f'--output_dir={tmp_path / "local"}'])
  # Same C++ runtime, same seeds, deterministic balanced preset: the same metrics, bit for bit
  # (test accuracy, loss, bits and upload of both rounds).
  remote_rows = read_csv(metrics_path(tmp_path / 'remote'))
  assert len(remote_rows) == 3  # header + 2 rounds
  assert remote_rows == read_csv(metrics_path(tmp_path / 'local'))
  assert '| balanced' in capfd.readouterr().out


def test_no_worker_at_the_address_fails_fast_naming_it(tmp_path):
  address = f'127.0.0.1:{portpicker.pick_unused_port()}'  # nobody serves there
  start = time.monotonic()
  with pytest.raises(ConnectionError, match=address):
    run_main(_ARGV + ['--rounds=1', f'--worker={address}', '--worker_timeout=2',
                      f'--output_dir={tmp_path}'])
  assert time.monotonic() - start < 30


def test_a_dead_worker_fails_the_run_and_a_new_worker_resumes_it(worker, tmp_path):
  first, address = worker()
  output_dir = tmp_path / 'interrupted'
  argv = _ARGV + ['--rounds=4', '--worker_timeout=5', f'--output_dir={output_dir}']
  with open(tmp_path / 'train.log', 'w') as log:
    run = subprocess.Popen([sys.executable, train.__file__, *argv, f'--worker={address}'],
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
      deadline = time.monotonic() + 300
      while not (metrics_path(output_dir).exists() and
                 len(read_csv(metrics_path(output_dir))) >= 3):
        assert run.poll() is None, 'the run ended before its worker could be killed'
        assert time.monotonic() < deadline, 'no second round within 300 s'
        time.sleep(0.2)
      first.kill()  # the worker dies mid-run
      killed_at = time.monotonic()
      code = run.wait(timeout=120)  # fails fast, no hang
      failed_after = time.monotonic() - killed_at
    finally:
      if run.poll() is None:
        os.killpg(run.pid, 9)
        run.wait()
  with open(tmp_path / 'train.log') as f:
    out = f.read()
  assert code != 0
  assert f'No TFF worker service is reachable at {address}' in out
  assert failed_after < 60
  done = len(read_csv(metrics_path(output_dir))) - 1
  assert 2 <= done < 4
  # A new worker on another port: the rerun resumes from the last checkpoint and ends where an
  # uninterrupted in-process run ends.
  _, new_address = worker()
  run_main(argv + [f'--worker={new_address}'])
  run_main(_ARGV + ['--rounds=4', f'--output_dir={tmp_path / "uninterrupted"}'])
  resumed = read_csv(metrics_path(output_dir))
  assert len(resumed) == 5
  assert resumed == read_csv(metrics_path(tmp_path / 'uninterrupted'))
