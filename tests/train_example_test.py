"""The training entry point (examples/train.py): runs, writes its outputs, resumes after a kill."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from examples import train
from train_runner import hsq_aggregator_mlp_bits
from train_runner import run_main
import tff_hsq

_SMALL = ['--rounds=2', '--clients=6', '--clients_per_round=3']


def table(out):
  """{aggregator: (bits/coord, ratio, upload MB, accuracy)} from the final table."""
  return {m.group(1): m.groups()[1:] for m in re.finditer(
      r'^\| (\S+)\s+\|\s+([\d.]+) \|\s+([\d.]+)x \|\s+([\d.]+) \|\s+([\d.]+) \|', out, re.M)}


def read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


# capfd, not capsys: TFF starts its worker_binary with the process's stdout, which must then be
# a real file (capsys's stand-in has no fileno and the first computation fails).
def test_train_prints_the_final_table_and_writes_its_outputs(capfd, tmp_path):
  run_main(_SMALL + ['--aggregators=none,tff_compression,balanced', f'--output_dir={tmp_path}'])
  rows = table(capfd.readouterr().out)
  assert set(rows) == {'none', 'tff_compression', 'balanced'}
  # 101,770 parameters; 3 clients x 2 rounds upload 6 updates.
  assert float(rows['none'][0]) == 32.0
  assert float(rows['none'][2]) == pytest.approx(6 * 101770 * 4 / 1e6, abs=1e-3)
  # balanced (hsq_aggregator: tensors of >= 100 entries encoded): 0.875 bits on the 100,352 +
  # 1,280 + 128 entries of the three large tensors plus a float32 maximum each, float32 for
  # the 10 output biases.
  balanced_bits = float(rows['balanced'][0])
  expected = hsq_aggregator_mlp_bits('balanced')
  assert (101760 * 0.875 + 3 * 32 + 10 * 32) / 101770 == pytest.approx(expected, abs=2e-4)
  assert balanced_bits == pytest.approx(expected, abs=5e-4)  # the table prints 3 decimals
  for name, (_, _, _, accuracy) in rows.items():
    assert 0.1 < float(accuracy) <= 1.0, name  # learned something in 2 rounds
  run_dir = tmp_path / 'mnist5k' / 'balanced'
  metrics = read_csv(run_dir / 'metrics.csv')
  assert [int(r['key']) for r in metrics] == [1, 2]
  assert float(metrics[-1]['test_accuracy']) == pytest.approx(float(rows['balanced'][3]),
                                                              abs=1e-4)
  assert float(metrics[-1]['upload_mb']) == pytest.approx(float(rows['balanced'][2]), abs=1e-3)
  assert sorted(os.listdir(run_dir / 'checkpoints')) == ['program_state_1', 'program_state_2']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(run_dir / 'tensorboard'))
  with open(tmp_path / 'mnist5k' / 'accuracy.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_train_with_dp_and_secure_aggregation(capfd, tmp_path):
  run_main(_SMALL + ['--aggregators=dp_hsq,secure_hsq', '--noise_multiplier=0.2',
                     f'--output_dir={tmp_path}'])
  out = capfd.readouterr().out
  rows = table(out)
  # dp_hsq: balanced plus one float32 norm per client; secure_hsq: one (16 + ceil(log2 3))
  # -bit integer per kernel entry, the 1,418 small entries as 32 + 2-bit integers.
  assert float(rows['dp_hsq'][0]) == pytest.approx(
      (100352 * 0.875 + 1418 * 32 + 32) / 101770, abs=2e-3)
  assert float(rows['secure_hsq'][0]) == pytest.approx((100352 * 18 + 1418 * 34) / 101770,
                                                       abs=2e-3)
  assert 0.1 < float(rows['secure_hsq'][3]) <= 1.0
  # 3 of 6 clients per round for 2 rounds at z = 0.2: the accountant's epsilon, printed.
  epsilon = tff_hsq.privacy.epsilon(0.2, 0.5, 2, 1e-5)
  assert f'client-level ({epsilon:.2f}, 1e-05)-DP after 2 rounds' in out


def test_a_killed_run_resumes_to_the_same_results(tmp_path):
  argv = ['--rounds=4', '--clients=6', '--clients_per_round=3', '--aggregators=balanced']
  killed_dir, clean_dir = tmp_path / 'killed', tmp_path / 'clean'
  metrics_path = killed_dir / 'mnist5k' / 'balanced' / 'metrics.csv'
  with open(tmp_path / 'killed.log', 'w') as log:
    # Its own session, so that killing the group ends the script and the TFF worker it
    # started, and nothing else.
    process = subprocess.Popen(
        [sys.executable, train.__file__, *argv, f'--output_dir={killed_dir}'],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
      deadline = time.monotonic() + 300
      while not (metrics_path.exists() and len(read_csv(metrics_path)) >= 2):
        assert process.poll() is None, 'the run ended before it could be killed'
        assert time.monotonic() < deadline, 'no second round within 300 s'
        time.sleep(0.2)
    finally:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  assert len(read_csv(metrics_path)) < 4  # killed mid-way
  run_main(argv + [f'--output_dir={killed_dir}'])  # resumes
  run_main(argv + [f'--output_dir={clean_dir}'])  # uninterrupted
  resumed = read_csv(metrics_path)
  assert [int(r['key']) for r in resumed] == [1, 2, 3, 4]
  assert resumed == read_csv(clean_dir / 'mnist5k' / 'balanced' / 'metrics.csv')


def test_unknown_aggregator_is_a_usage_error():
  with pytest.raises(Exception, match='bogus'):
    run_main(['--aggregators=none,bogus'])
  with pytest.raises(Exception, match='bogus'):
    run_main(['--aggregator=bogus'])  # the singular spelling is an alias


@pytest.mark.parametrize('dataset,extra', [
    ('fashion_mnist', ['--max_examples_per_client=200']),
    ('kjv', ['--max_examples_per_client=8', '--seq_len=32', '--batch_size=4']),
])
def test_two_rounds_on_each_offline_dataset(capfd, tmp_path, dataset, extra):
  run_main(_SMALL + extra + [f'--dataset={dataset}', '--aggregators=balanced',
                             f'--output_dir={tmp_path}'])
  out = capfd.readouterr().out
  rows = table(out)
  accuracy = float(rows['balanced'][3])
  if dataset == 'kjv':
    assert '66 clients' in out  # one per book
    assert 0.0 < accuracy <= 1.0  # per-character accuracy after 2 short rounds
  else:
    assert 0.1 < accuracy <= 1.0
    assert '10000 held-out test examples' in out
  assert len(read_csv(tmp_path / dataset / 'balanced' / 'metrics.csv')) == 2
  assert os.path.exists(tmp_path / dataset / 'accuracy.png')


def test_emnist_without_its_file_fails_fast_naming_it(tmp_path):
  start = time.monotonic()
  with pytest.raises(FileNotFoundError, match='emnist_all.sqlite'):
    run_main(['--dataset=emnist', f'--data_dir={tmp_path}', f'--output_dir={tmp_path}'])
  assert time.monotonic() - start < 5  # no download attempt
