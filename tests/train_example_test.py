"""The main job (examples/train.py) runs, in this process, on a small setting."""

import re

from absl import flags
import pytest

from examples import train
import tff_hsq


# capfd, not capsys: TFF starts its worker_binary with the process's stdout, which must then be
# a real file (capsys's stand-in has no fileno and the first computation fails).
def test_train_prints_the_final_table(capfd):
  flags.FLAGS(['train', '--rounds=2', '--clients=6', '--clients_per_round=3',
               '--aggregators=none,tff_compression,balanced'])
  try:
    train.main([])
  finally:
    flags.FLAGS.unparse_flags()
  out = capfd.readouterr().out
  rows = {m.group(1): m.groups()[1:] for m in re.finditer(
      r'^\| (\S+)\s+\|\s+([\d.]+) \|\s+([\d.]+)x \|\s+([\d.]+) \|\s+([\d.]+) \|', out, re.M)}
  assert set(rows) == {'none', 'tff_compression', 'balanced'}
  # 101,770 parameters; 3 clients x 2 rounds upload 6 updates.
  assert float(rows['none'][0]) == 32.0
  assert float(rows['none'][2]) == pytest.approx(6 * 101770 * 4 / 1e6, abs=1e-3)
  # balanced: 0.875 bits on the 100,352-entry kernel, float32 for the 1,418 others.
  balanced_bits = float(rows['balanced'][0])
  assert balanced_bits == pytest.approx((100352 * 0.875 + 1418 * 32) / 101770, abs=2e-3)
  for name, (_, _, _, accuracy) in rows.items():
    assert 0.1 < float(accuracy) <= 1.0, name  # learned something in 2 rounds


def test_train_with_dp_and_secure_aggregation(capfd):
  flags.FLAGS(['train', '--rounds=2', '--clients=6', '--clients_per_round=3',
               '--aggregators=dp_hsq,secure_hsq', '--noise_multiplier=0.2'])
  try:
    train.main([])
  finally:
    flags.FLAGS.unparse_flags()
  out = capfd.readouterr().out
  rows = {m.group(1): m.groups()[1:] for m in re.finditer(
      r'^\| (\S+)\s+\|\s+([\d.]+) \|\s+([\d.]+)x \|\s+([\d.]+) \|\s+([\d.]+) \|', out, re.M)}
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


def test_unknown_aggregator_is_a_usage_error():
  flags.FLAGS(['train', '--aggregators=none,bogus'])
  try:
    with pytest.raises(Exception, match='bogus'):
      train.main([])
  finally:
    flags.FLAGS.unparse_flags()
