"""The Colab notebooks (colab/*.ipynb) run top to bottom in the quick setting and show results.

Each notebook is executed with nbclient in a fresh kernel, with TFF_HSQ_NOTEBOOK_QUICK=1 (the
notebooks' smoke-test size). The kernel is this interpreter: the test writes a 'python3'
kernelspec whose argv is sys.executable into a temporary JUPYTER_PATH (which Jupyter searches
first), and a probe cell inserted at the top checks sys.executable and sys.prefix inside the
kernel. TFF's C++ runtime starts a worker_binary child of the kernel; the notebooks' last cell
stops it, and the test checks that none of the kernel's workers survives.
"""

import ast
import json
import math
import os
import re
import signal
import sys
import time

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

import tff_hsq  # pylint: disable=g-import-not-at-top

COLAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'colab')
CELL_TIMEOUT = 600  # seconds; a quick-mode notebook takes well under a minute in total
PROBE = 'import os, sys\nprint(repr((sys.executable, sys.prefix, os.getpid())))'

# The model of the notebooks: a 784-128-10 MLP.
_KERNEL_ENTRIES = 784 * 128
_SMALL_ENTRIES = 128 + 128 * 10 + 10
_PARAMETERS = _KERNEL_ENTRIES + _SMALL_ENTRIES


# --- Processes (Linux /proc) ---------------------------------------------------------------
def _workers_of(pid):
  return set(tff_hsq.runtime.worker_pids(pid))


# --- Running a notebook ---------------------------------------------------------------------
@pytest.fixture(scope='module', autouse=True)
def kernel_environment(tmp_path_factory):
  """A 'python3' kernelspec running this interpreter, and the quick setting, for the module."""
  root = tmp_path_factory.mktemp('jupyter')
  spec_dir = root / 'kernels' / 'python3'
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'Python 3 (tff_hsq tests)',
      'language': 'python',
  }))
  settings = {
      'JUPYTER_PATH': os.pathsep.join(filter(None, [str(root), os.environ.get('JUPYTER_PATH')])),
      'TFF_HSQ_NOTEBOOK_QUICK': '1',
      'TF_CPP_MIN_LOG_LEVEL': os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'),
  }
  saved = {name: os.environ.get(name) for name in settings}
  os.environ.update(settings)
  yield
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


class Executed:
  """A notebook after execution: its cells, and what the test saw of its kernel."""

  def __init__(self, nb, seconds, tff_workers):
    self.nb = nb
    self.seconds = seconds
    self.tff_workers = tff_workers

  def text(self, cell):
    return ''.join(o.get('text', '') for o in cell.get('outputs', [])
                   if o.get('output_type') == 'stream' and o.get('name') == 'stdout')

  def output_containing(self, marker):
    """The stdout of the one code cell whose stdout contains `marker`."""
    found = [self.text(c) for c in self.nb.cells if marker in self.text(c)]
    assert len(found) == 1, (marker, len(found))
    return found[0]

  def num_images(self):
    return sum('image/png' in o.get('data', {}) for c in self.nb.cells
               for o in c.get('outputs', []))


def execute(name):
  """Runs colab/`name` top to bottom (a cell error fails the test); returns an Executed."""
  path = os.path.join(COLAB, name)
  nb = nbformat.read(path, as_version=4)
  # The notebooks are committed without outputs (no binary blobs in the repository).
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, f'{name}: outputs committed'
  nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name='python3',
                                   resources={'metadata': {'path': COLAB}})
  seen = set()  # every worker_binary child the kernel had after some cell
  start = time.monotonic()
  try:
    with client.setup_kernel():
      kernel_pid = None
      for index, cell in enumerate(nb.cells):
        client.execute_cell(cell, index)
        if index == 0:
          executable, prefix, kernel_pid = ast.literal_eval(
              ''.join(o.get('text', '') for o in cell.outputs).strip())
          # The kernel runs this interpreter (the venv's), not whatever python3 PATH finds.
          assert executable == sys.executable
          assert os.path.realpath(prefix) == os.path.realpath(sys.prefix)
        seen |= _workers_of(kernel_pid)
      # The last cell stopped the kernel's TFF workers.
      assert not _workers_of(kernel_pid), f'{name}: worker_binary still running in the kernel'
  finally:
    seconds = time.monotonic() - start
    # After the kernel's shutdown, none of its workers may survive it (orphaned, they hold
    # pipes open). Stop only those, if any did, and fail.
    time.sleep(0.2)
    survivors = {pid for pid in seen if tff_hsq.runtime.is_worker(pid)}
    for pid in survivors:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  assert not survivors, f'{name}: worker_binary {sorted(survivors)} outlived the kernel'
  print(f'{name}: executed in {seconds:.1f} s')
  return Executed(nb, seconds, seen)


def _settings(executed):
  """(rounds, clients, clients per round) from the notebook's settings cell."""
  text = executed.output_containing('quick=')
  match = re.search(r'quick=True: (\d+) rounds, (\d+) clients, (\d+) per round', text)
  assert match, text
  return tuple(int(g) for g in match.groups())


# --- The notebooks ---------------------------------------------------------------------------
def test_quickstart_trains_three_aggregators_and_tabulates_them():
  run = execute('hsq_quickstart.ipynb')
  rounds, _, per_round = _settings(run)
  table = run.output_containing('| aggregator')
  rows = {m.group(1): [float(g) for g in m.groups()[1:]] for m in re.finditer(
      r'^\| (\S+)\s+\|\s+([\d.]+) \|\s+([\d.]+)x \|\s+([\d.]+) \|\s+([\d.]+) \|', table, re.M)}
  assert set(rows) == {'none', 'tff_compression', 'hsq_balanced'}, table
  for key, (_, _, _, accuracy) in rows.items():
    assert 0.1 < accuracy <= 1.0, key  # better than chance after the quick rounds
  # Upload: float32; TFF's 8 bits + min/max on the kernel; HSQ's measured bits_per_coordinate
  # (hsq_aggregator: 0.875 plus a float32 maximum on each tensor of >= 100 entries, float32 for
  # the 10 output biases).
  updates = rounds * per_round
  assert rows['none'][0] == 32.0
  assert rows['none'][2] == pytest.approx(updates * _PARAMETERS * 4 / 1e6, abs=1e-3)
  assert rows['tff_compression'][0] == pytest.approx(
      (8 * _KERNEL_ENTRIES + 64 + 32 * _SMALL_ENTRIES) / _PARAMETERS, abs=1e-3)
  assert rows['hsq_balanced'][0] == pytest.approx(
      (0.875 * (_PARAMETERS - 10) + 3 * 32 + 10 * 32) / _PARAMETERS, abs=2e-4)
  assert rows['hsq_balanced'][2] < rows['tff_compression'][2] / 5 < rows['none'][2] / 5
  assert run.num_images() >= 2  # the label split and the accuracy curves
  assert run.tff_workers  # TFF ran in the kernel, so the worker check above meant something


def test_differential_privacy_keeps_records_within_the_clip_and_reports_epsilon():
  run = execute('hsq_differential_privacy.ipynb')
  rounds, clients, per_round = _settings(run)
  # The clip-bound experiment: max ||decoded record|| / C per preset, without and with reclip.
  table = run.output_containing('| reclip |')
  ratios = {(m.group(1), m.group(2) == 'True'): float(m.group(3)) for m in re.finditer(
      r'^\| (\w+)\s+\| \w+\s+\| (True|False)\s+\|\s+([\d.]+) \|', table, re.M)}
  assert len(ratios) == 8, table
  for (preset, reclip), ratio in ratios.items():
    assert ratio > 0, (preset, reclip)
    if reclip or preset in ('balanced', 'high_fidelity'):
      assert ratio <= 1 + 1e-5, (preset, reclip)  # within the clip: nearest, or the guard
  assert ratios['unbiased', False] > 1.2 and ratios['log_d', False] > 10  # unguarded overshoot
  accuracies = [float(a) for a in re.findall(
      r'final test accuracy ([\d.]+)', run.output_containing('final test accuracy'))]
  assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)
  # The epsilon of this run, as tff_hsq.privacy computes it for the notebook's settings.
  line = run.output_containing('-> epsilon=')
  match = re.search(r'noise_multiplier=([\d.e+-]+), sampling_rate=([\d.e+-]+), '
                    r'rounds=(\d+), delta=([\d.e+-]+) -> epsilon=([\d.e+-]+)', line)
  assert match, line
  noise, rate, run_rounds, delta, epsilon = match.groups()
  assert float(rate) == per_round / clients and int(run_rounds) == rounds
  assert math.isfinite(float(epsilon)) and float(epsilon) > 0
  assert float(epsilon) == pytest.approx(
      tff_hsq.privacy.epsilon(float(noise), float(rate), int(run_rounds), float(delta)),
      rel=1e-9)
  # The realistic population: 10,000 clients, 100 per round, delta 1e-5.
  population = run.output_containing('z = 1.0: epsilon after')
  match = re.search(r'z = 1\.0: epsilon after (\d+) rounds = ([\d.]+)', population)
  assert float(match.group(2)) == pytest.approx(
      tff_hsq.privacy.epsilon(1.0, 0.01, int(match.group(1)), 1e-5), abs=0.006)
  assert run.num_images() >= 3  # clip bound, training curves, epsilon vs rounds
  assert run.tff_workers


def test_inside_draws_codebooks_and_measures_every_preset():
  run = execute('hsq_inside.ipynb')
  table = run.output_containing('| preset ')
  rows = {m.group(1): [float(g) for g in m.groups()[1:]] for m in re.finditer(
      r'^\| (\w+)\s+\| [\w-]+\s+\|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|',
      table, re.M)}
  assert set(rows) == set(tff_hsq.presets.PRESETS) | {'uniform_8bit'}, table
  # (bits update, NMSE update, bits gauss, NMSE gauss): the presets' documented trade-off.
  assert rows['balanced'][2] == pytest.approx(0.875, abs=2e-3)
  assert rows['high_fidelity'][2] == pytest.approx(4.0, abs=2e-3)
  for column in (1, 3):
    assert rows['high_fidelity'][column] < 0.05
    assert 0.4 < rows['balanced'][column] < 0.65
    assert rows['balanced'][column] < rows['extreme'][column] < 1
    assert rows['unbiased'][column] > 1  # unbiased: the error exceeds the signal
  assert rows['log_d'][2] < 0.01
  assert run.num_images() >= 4  # circle, sphere, sub-vector, rate-distortion
