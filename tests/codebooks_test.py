"""Tests of tff_hsq.codebooks: unit norm, determinism, the shipped presets, structure."""

import numpy as np
import pytest

from tff_hsq import codebooks


@pytest.mark.parametrize('dim,size,seed', codebooks.SHIPPED)
def test_shipped_codebooks_are_unit_norm_and_shaped(dim, size, seed):
  c = codebooks.spherical_kmeans(dim, size, seed)
  assert c.shape == (size, dim) and c.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-6)
  # No two codewords span the same line (a duplicate would waste an index).
  gram = np.abs(c @ c.T) - np.eye(size)
  assert gram.max() < 0.999


def test_shipped_codebook_equals_regeneration():
  # The shipped file is what `python -m tff_hsq.codebooks` writes; regenerating one preset here
  # checks that the data and the algorithm have not drifted apart.
  shipped = codebooks.spherical_kmeans(8, 256, 0)
  regenerated = codebooks._generate_spherical_kmeans(8, 256, 0)
  np.testing.assert_allclose(shipped, regenerated, atol=1e-5)


def test_generated_codebook_is_deterministic_and_seeded():
  a = codebooks._generate_spherical_kmeans(4, 16, 3)
  codebooks._generate_spherical_kmeans.cache_clear()
  b = codebooks._generate_spherical_kmeans(4, 16, 3)
  c = codebooks._generate_spherical_kmeans(4, 16, 4)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_kmeans_beats_random_codebook():
  # The objective k-means minimises: E[1 - max_k <c_k, u>^2] on fresh samples (seed 99, not a
  # codebook seed). A codebook of random unit vectors is the baseline it must beat.
  rng = np.random.default_rng(99)
  u = rng.standard_normal((20000, 8))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  random_codebook = rng.standard_normal((256, 8))
  random_codebook /= np.linalg.norm(random_codebook, axis=1, keepdims=True)

  def loss(c):
    return np.mean(1 - np.max((u @ c.T)**2, axis=1))

  # Measured: 0.234 (k-means) against 0.253 (random); the standard error of each is ~0.001.
  assert loss(codebooks.spherical_kmeans(8, 256, 0)) < 0.95 * loss(random_codebook)


def test_orthonormal():
  q = codebooks.make('orthonormal', 5, 5, seed=1)
  np.testing.assert_allclose(q @ q.T, np.eye(5), atol=1e-6)
  np.testing.assert_array_equal(q, codebooks.orthonormal(5, 1))
  assert not np.allclose(q, codebooks.orthonormal(5, 2))


def test_cross_polytope():
  c = codebooks.make('cross_polytope', 3, 6, seed=0)
  np.testing.assert_array_equal(
      c, [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


def test_default_kind():
  assert codebooks.default_kind(4, 4) == 'orthonormal'
  assert codebooks.default_kind(4, 8) == 'cross_polytope'
  assert codebooks.default_kind(4, 256) == 'spherical_kmeans'


@pytest.mark.parametrize('kind,dim,size,match', [
    ('orthonormal', 4, 8, 'codebook_size == dim'),
    ('cross_polytope', 4, 4, r'codebook_size == 2 \* dim'),
    ('spherical_kmeans', 8, 4, 'codebook_size >= dim'),
    ('lattice', 4, 4, 'Unknown codebook kind'),
])
def test_bad_configuration_is_rejected(kind, dim, size, match):
  with pytest.raises(ValueError, match=match):
    codebooks.make(kind, dim, size, seed=0)
