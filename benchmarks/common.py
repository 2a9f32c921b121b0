"""What the benchmark studies share: interleaved timing and writing results/ files."""

import collections
import os
import time

import numpy as np

# Where the studies write; the tests point it elsewhere (TFF_HSQ_BENCH_RESULTS) so that their
# --quick runs never overwrite the committed results.
RESULTS = os.environ.get('TFF_HSQ_BENCH_RESULTS') or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'results')


def median_times(fns, repeats):
  """Interleaved timing: one call of each fn per pass; returns the median seconds of each."""
  times = collections.defaultdict(list)
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def write_markdown(name, lines):
  """Writes `lines` to results/<name>.md and prints them."""
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, f'{name}.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))
