"""The benchmark studies (benchmarks/*.py) run in their --quick setting and write sane results.

Each study runs as `make bench-quick` runs it: a subprocess of this interpreter with
TFF_HSQ_BENCH_RESULTS pointing at a temporary directory (so the committed benchmarks/results/
are never touched). The checks are on values that do not depend on the machine's speed: bit
counts, distortions of the math (with tolerances for the few seeds of --quick), that every row
and file is there; never on a timing threshold (the machine is shared; timings are only
checked to be positive and finite).
"""

import csv
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = ('rate_distortion', 'convergence', 'speed_memory', 'rotated')
PNG = b'\x89PNG\r\n\x1a\n'


def run_study(name, results):
  """Runs benchmarks/<name>.py --quick into `results`; returns its CSV rows (dicts)."""
  env = dict(os.environ, TFF_HSQ_BENCH_RESULTS=str(results), TF_CPP_MIN_LOG_LEVEL='2')
  # Output to files, not pipes: TFF's worker_binary inherits them and may outlive the study.
  with open(results / f'{name}.log', 'w') as log:
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', f'{name}.py'),
                           '--quick'], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          timeout=900, check=False)
  assert done.returncode == 0, (results / f'{name}.log').read_text()[-3000:]
  for ext in ('csv', 'md', 'png'):
    assert (results / f'{name}.{ext}').exists(), f'{name}.{ext} not written'
  assert (results / f'{name}.png').read_bytes()[:8] == PNG
  assert '--quick' in (results / f'{name}.md').read_text()
  with open(results / f'{name}.csv', newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  return tmp_path_factory.mktemp('bench')


def test_speed_memory(results):
  rows = run_study('speed_memory', results)
  import tff_hsq  # pylint: disable=g-import-not-at-top
  subjects = ['uncompressed_sum', 'tff_uniform_8bit'] + list(tff_hsq.presets.ALL)
  for study in ('encode_seconds', 'decode_seconds'):
    for entries in ('100000', '1000000'):
      got = {r['subject']: r for r in rows if r['study'] == study and r['entries'] == entries}
      assert sorted(got) == sorted(subjects), (study, entries)
      for subject, r in got.items():
        assert 0 < float(r['value']) < 60 and math.isfinite(float(r['ratio_to_baseline']))
      assert float(got['tff_uniform_8bit']['ratio_to_baseline']) == 1.0
      assert float(got['uncompressed_sum']['ratio_to_uncompressed_sum']) == 1.0
  rounds = {r['subject']: float(r['value']) for r in rows if r['study'] == 'fedavg_round_seconds'}
  assert set(rounds) == {'hsq_aggregator()', 'compression_aggregator()'}
  assert all(0 < t < 60 for t in rounds.values())
  memory = {r['entries']: float(r['ratio_to_baseline']) for r in rows
            if r['study'] == 'encode_peak_extra_rss_bytes' and r['subject'] == 'balanced'}
  # The memory target (issue 6): < 2x the tensor's bytes; measured 0.7-0.9x at 10M entries.
  assert set(memory) == {'1000000', '10000000'} and memory['10000000'] < 2.0


def test_rotated(results):
  rows = run_study('rotated', results)
  gaussian = {(r['method'], r['codebook'], r['scale']): r for r in rows
              if r['study'] == 'rate_distortion' and r['data'] == 'gaussian_2^20'}
  drive = gaussian['drive_1bit_sign', '-', 'unbiased']
  # DRIVE on a Gaussian vector: NMSE = pi/2 - 1 = 0.571 in expectation (Vargaftik et al.).
  assert float(drive['bits_per_coordinate']) == pytest.approx(1.0, abs=1e-4)
  assert float(drive['nmse']) == pytest.approx(math.pi / 2 - 1, rel=0.03)
  one_bit = gaussian['rotated_d8_k256', 'gaussian_kmeans', 'unbiased']
  assert float(one_bit['bits_per_coordinate']) == pytest.approx(1.0, abs=0.005)
  # Measured 0.479 (16 seeds): below DRIVE's, above the 0.45 target of issue 7.
  assert 0.44 < float(one_bit['nmse']) < 0.52
  assert float(one_bit['bias_ratio']) < 3  # ~1 when unbiased; a biased scale gives ~seeds
  projection = gaussian['rotated_d8_k256', 'gaussian_kmeans', 'projection']
  # Projection: NMSE 1 - cos^2 against the unbiased 1/cos^2 - 1.
  e = float(one_bit['nmse'])
  assert float(projection['nmse']) == pytest.approx(e / (1 + e), rel=0.05)
  speed = [r for r in rows if r['study'] == 'encode_1M']
  assert {r['method'] for r in speed} >= {'tff_uniform_8bit', 'rotated_d8_k256'}
  assert all(float(r['seconds']) > 0 for r in speed)


def test_rate_distortion(results):
  rows = run_study('rate_distortion', results)
  by_data = {}
  for r in rows:
    by_data.setdefault(r['data'], {})[r['method']] = r
  assert set(by_data) == {'gaussian_2^18', 'fashion_mnist_update'}
  assert sorted(by_data['gaussian_2^18']) == sorted(by_data['fashion_mnist_update'])
  g = {m: (float(r['bits_per_coordinate']), float(r['nmse']), float(r['bias_ratio']))
       for m, r in by_data['gaussian_2^18'].items()}
  # HSQ presets: DESIGN.md's figures (high_fidelity's shipped codebook is better than the
  # prototype's 0.032: 0.028 measured), 5%.
  for name, bits, nmse in (('high_fidelity', 4.0, 0.028), ('balanced', 0.875, 0.52),
                           ('extreme', 0.5, 0.68), ('unbiased', 2.0, 4.4),
                           ('rotated', 1.0, 0.48), ('rotated_half', 0.5, 1.39)):
    assert g[name][0] == pytest.approx(bits, abs=0.005), name
    assert g[name][1] == pytest.approx(nmse, rel=0.05), name
  # The rescaled scale: NMSE_p / (1 - NMSE_p) at the same bits.
  for name in ('high_fidelity', 'balanced', 'extreme'):
    e = g[name][1]
    assert g[f'{name}_rescaled'][0] == g[name][0]
    assert g[f'{name}_rescaled'][1] == pytest.approx(e / (1 - e), rel=0.03), name
  # Peers against closed forms on Gaussian data.
  assert g['drive'][1] == pytest.approx(math.pi / 2 - 1, rel=0.03)
  assert g['eden_1bit'][1] == pytest.approx(math.pi / 2 - 1, rel=0.03)
  assert g['eden_2bit'][1] == pytest.approx(0.133, rel=0.05)
  assert g['scaled_sign'][1] == pytest.approx(1 - 2 / math.pi, rel=0.03)
  assert g['qsgd_s1'][1] == pytest.approx(17.0, rel=0.05)
  assert g['tff_uniform_8bit'][0] == pytest.approx(8 + 64 / 2**18)
  assert g['tff_uniform_8bit'][1] < 5e-4 and g['tff_uniform_2bit'][1] > 1.0
  # Bias: a deterministic method's bias ratio is the number of seeds (3), an unbiased one's ~1.
  for name in ('balanced', 'extreme', 'high_fidelity', 'scaled_sign'):
    assert g[name][2] == pytest.approx(3.0, rel=1e-3), name
  for name in ('unbiased', 'rotated', 'drive', 'eden_2bit', 'qsgd_s1', 'tff_uniform_4bit'):
    assert g[name][2] < 2.0, name


def test_convergence(results):
  from train_runner import hsq_aggregator_mlp_bits  # pylint: disable=g-import-not-at-top
  rows = run_study('convergence', results)
  # --quick: mnist5k, seed 0, 3 rounds, none, balanced and balanced_projection, 50 examples
  # per client.
  assert {(r['dataset'], r['aggregator'], r['seed']) for r in rows} == {
      ('mnist5k', name, '0') for name in ('none', 'balanced', 'balanced_projection')}
  for name in ('none', 'balanced', 'balanced_projection'):
    mine = sorted((r for r in rows if r['aggregator'] == name), key=lambda r: int(r['round']))
    assert [int(r['round']) for r in mine] == [1, 2, 3]
    upload = [float(r['upload_mb']) for r in mine]
    bits = float(mine[-1]['bits_per_coordinate'])
    # 10 clients per round upload bits x 101,770 parameters each round.
    assert upload == pytest.approx([i * 10 * bits * 101770 / 8e6 for i in (1, 2, 3)], rel=1e-4)
    assert 0.1 < float(mine[-1]['test_accuracy']) <= 1.0  # above chance after 3 rounds
  none = [r for r in rows if r['aggregator'] == 'none']
  balanced = [r for r in rows if r['aggregator'] == 'balanced']
  projection = [r for r in rows if r['aggregator'] == 'balanced_projection']
  # The same message sizes: the scales differ only in the float32 maximum's value.
  assert [r['bits_per_coordinate'] for r in projection] == [
      r['bits_per_coordinate'] for r in balanced]
  assert [r['test_accuracy'] for r in projection] != [r['test_accuracy'] for r in balanced]
  assert float(none[0]['bits_per_coordinate']) == 32.0
  # hsq_aggregator's balanced: 0.875 bits plus a float32 maximum on the three tensors of >= 100
  # entries, the 10 output biases in float32.
  assert float(balanced[0]['bits_per_coordinate']) == pytest.approx(
      hsq_aggregator_mlp_bits('balanced'), rel=1e-5)
  # The targets table is computed even in --quick (the rows not run say so).
  md = (results / 'convergence.md').read_text()
  assert 'balanced final accuracy within 1 point of none' in md
  assert 'not run' in md  # extreme and rotated, fashion_mnist: not in --quick
