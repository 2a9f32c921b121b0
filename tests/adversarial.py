"""Adversarial and random inputs for norm-bound property tests (shared by several modules).

pytest puts this directory on sys.path (rootdir conftest), so tests import it as `adversarial`.
"""

import numpy as np

import tff_hsq


def inputs():
  """Yields (name, float64 numpy vector): random, heavy-tailed, sparse, aligned, extreme."""
  rng = np.random.default_rng(77)
  codeword = tff_hsq.Quantizer().codebook[17]
  yield 'gaussian', rng.standard_normal(1000)
  yield 'cauchy', rng.standard_cauchy(999)
  sparse = np.zeros(4096)
  sparse[rng.choice(4096, 3, replace=False)] = rng.standard_normal(3) * 1e3
  yield 'sparse', sparse
  one_hot = np.zeros(333)
  one_hot[200] = -5.0
  yield 'one_hot', one_hot
  yield 'aligned_codewords', np.tile(codeword, 40) * np.repeat(rng.uniform(-9, 9, 40), 16)
  yield 'constant', np.full(160, 0.1)
  yield 'huge', rng.standard_normal(512) * 1e30
  yield 'tiny', rng.standard_normal(512) * 1e-30
  yield 'mixed_scales', rng.standard_normal(2048) * np.repeat(10.0**rng.uniform(-8, 8, 128), 16)
  for i in range(10):
    yield f'random_{i}', rng.standard_normal(rng.integers(1, 3000)) * rng.exponential(1, 1)
