r"""FedAvg round time through a TFF worker service on loopback (train.py --worker) vs in-process.

  python benchmarks/remote_worker.py [--rounds 10]

Runs examples/train.py (mnist5k, 20 clients, 10 per round, `balanced`) twice in one run,
alternating: in-process (TFF's default context and its own worker) and through a worker
started by examples/remote.py on 127.0.0.1. Compares the per-round seconds that train.py
reports (model building excluded, evaluation included) and checks that the metrics agree.
Writes benchmarks/results/remote_worker.md.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile

import portpicker

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from examples import remote  # pylint: disable=g-import-not-at-top
import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py


def run_train(rounds, output_dir, worker=None):
  """(seconds of the rounds, metrics.csv text) of one train.py run."""
  argv = [sys.executable, os.path.join(ROOT, 'examples', 'train.py'), f'--rounds={rounds}',
          '--aggregators=balanced', f'--output_dir={output_dir}', '--noresume']
  if worker:
    argv.append(f'--worker={worker}')
  out = subprocess.run(argv, capture_output=True, text=True, check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')).stdout
  seconds = float(re.search(r'^\| balanced .*\|\s+([\d.]+) \|$', out, re.M).group(1))
  with open(os.path.join(output_dir, 'mnist5k', 'balanced', 'metrics.csv')) as f:
    return seconds, f.read()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  port = portpicker.pick_unused_port()
  address = f'127.0.0.1:{port}'
  worker = remote.start_worker(port)
  try:
    remote.wait_until_serving(address)
    local, through = [], []
    with tempfile.TemporaryDirectory() as tmp:
      for i in range(args.repeats):
        seconds, local_csv = run_train(args.rounds, os.path.join(tmp, f'l{i}'))
        local.append(seconds)
        seconds, remote_csv = run_train(args.rounds, os.path.join(tmp, f'r{i}'), address)
        through.append(seconds)
        assert remote_csv == local_csv, 'metrics through the worker differ'
  finally:
    remote.stop_worker(worker)
  best_local, best_remote = min(local), min(through)
  lines = [
      '# FedAvg through a TFF worker on loopback (benchmarks/remote_worker.py)', '',
      f'Machine: {os.cpu_count()} cores, {platform.machine()}, Python '
      f'{platform.python_version()}. mnist5k, 20 clients, 10 per round, `balanced`, '
      f'{args.rounds} rounds, {args.repeats} alternating runs each (best shown); metrics '
      'identical both ways.', '',
      '| run | seconds per round | ratio |', '|---|---|---|',
      f'| in-process | {best_local / args.rounds:.3f} | 1.00 |',
      f'| --worker {address.split(":")[0]} | {best_remote / args.rounds:.3f} | '
      f'{best_remote / best_local:.2f} |']
  common.write_markdown('remote_worker', lines)


if __name__ == '__main__':
  main()
