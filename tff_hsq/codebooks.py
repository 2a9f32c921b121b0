"""Seeded codebooks of unit-norm codewords for Hyper-Sphere Quantization.

A codebook is a float32 NumPy array of shape [K, d] (`codebook_size` x `dim`) whose rows are the
codewords c_k, each of unit L2 norm (except `gaussian_kmeans`). Client and server must hold the
identical array, so every codebook here is a deterministic function of (dim, codebook_size, seed):

* `spherical_kmeans`: Lloyd iterations on Gaussian samples projected onto the unit sphere, for
  the objective HSQ's nearest mode actually minimises, E[1 - max_k <c_k, u>^2] (u uniform on
  S^{d-1}). Since the scale carries the sign, c and -c are the same codeword, so samples are
  assigned by |<c_k, u>| and each codeword is updated to the principal eigenvector of its
  cluster's scatter matrix (the line that best fits the cluster), not to the cluster mean.
* `orthonormal`: a seeded random orthonormal basis (K = d).
* `cross_polytope`: the 2d vectors +-e_i (K = 2d), a structured codebook whose decode is a
  signed scatter of scales, which is what secure aggregation needs.
* `gaussian_kmeans` (for the `rotated` mode): plain Lloyd / k-means on standard Gaussian samples
  in R^d, E||g - c(g)||^2 with c(g) the nearest codeword. After a randomized Hadamard rotation a
  block's sub-vectors are close to i.i.d. N(0, sigma^2 I), sigma^2 = ||x_block||^2 / B; with the
  block scale factored out (sub-vectors divided by sigma) this is the rotated mode's objective:
  its unbiased NMSE is (D/d) / (1 - D/d) and its projection NMSE is D/d, D the k-means error.
  The codewords are signed points, not lines, and not of unit norm.
* `signed_spherical_kmeans` (the rotated mode's alternative): the K/2 lines of
  `spherical_kmeans(d, K/2)` taken with both signs, K unit-norm points (rotated mode has no
  per-sub-vector sign). Measured against `gaussian_kmeans` in benchmarks/rotated.py: the
  Gaussian codebook has the lower NMSE at every shipped rate and is the rotated default.

Generating a k-means codebook runs floating-point reductions whose last bits can depend on the
BLAS library, and a flipped near-tie would change the codebook. The presets' codebooks are
therefore shipped as package data (`tff_hsq/data/codebooks.npz`, written by `write_shipped`,
`make codebooks`) and loaded, not regenerated, so every machine holds the same bits.
"""

import functools
import os

import numpy as np

KINDS = ('spherical_kmeans', 'orthonormal', 'cross_polytope', 'gaussian_kmeans',
         'signed_spherical_kmeans')

# (dim, codebook_size, seed) of the codebooks shipped as package data: every k-means codebook
# that a preset of HSQFactory uses, with the default seed.
SHIPPED = ((4, 256, 0), (8, 256, 0), (16, 256, 0), (32, 1024, 0))
# Likewise the Gaussian k-means codebooks of the rotated presets (K = 4096 takes minutes).
SHIPPED_GAUSSIAN = ((8, 256, 0), (16, 256, 0), (16, 4096, 0))

_DATA_FILE = os.path.join(os.path.dirname(__file__), 'data', 'codebooks.npz')
_SAMPLES_PER_CODEWORD = 128
_MAX_SAMPLES = 1 << 19
_ITERATIONS = 40
# Gaussian k-means: more samples per codeword (its cells are smaller in probability than the
# sphere's, and the fit is what the rotated mode's NMSE rests on), within a 2^20 budget.
_GAUSSIAN_SAMPLES_PER_CODEWORD = 1024
_GAUSSIAN_MAX_SAMPLES = 1 << 20
_GAUSSIAN_ITERATIONS = 40


def default_kind(dim: int, codebook_size: int) -> str:
  """The codebook kind used when none is named: structured where K allows, else k-means."""
  if codebook_size == dim:
    return 'orthonormal'
  if codebook_size == 2 * dim:
    return 'cross_polytope'
  return 'spherical_kmeans'


def make(kind: str, dim: int, codebook_size: int, seed: int) -> np.ndarray:
  """Returns the codebook `kind` for (dim, codebook_size, seed): float32 [codebook_size, dim].

  Raises:
    ValueError: if `kind` is unknown or does not admit `codebook_size` for `dim`.
  """
  if kind not in KINDS:
    raise ValueError(f'Unknown codebook kind {kind!r}; expected one of {KINDS}.')
  if kind == 'orthonormal':
    if codebook_size != dim:
      raise ValueError(
          f'An orthonormal codebook has codebook_size == dim; got codebook_size='
          f'{codebook_size}, dim={dim}.')
    return orthonormal(dim, seed)
  if kind == 'cross_polytope':
    if codebook_size != 2 * dim:
      raise ValueError(
          f'A cross-polytope codebook has codebook_size == 2 * dim; got codebook_size='
          f'{codebook_size}, dim={dim}.')
    return cross_polytope(dim)
  if kind == 'gaussian_kmeans':
    return gaussian_kmeans(dim, codebook_size, seed)
  if kind == 'signed_spherical_kmeans':
    if codebook_size < 2 * dim:
      raise ValueError(
          f'A signed spherical k-means codebook needs codebook_size >= 2 * dim; got '
          f'codebook_size={codebook_size}, dim={dim}.')
    lines = spherical_kmeans(dim, codebook_size // 2, seed)
    return np.concatenate([lines, -lines])
  return spherical_kmeans(dim, codebook_size, seed)


def orthonormal(dim: int, seed: int) -> np.ndarray:
  """A seeded random orthonormal basis as rows: float32 [dim, dim]."""
  rng = np.random.Generator(np.random.PCG64(seed))
  q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
  # Fixing the signs by diag(r) makes the basis Haar-distributed and independent of the QR
  # implementation's sign convention.
  q = q * np.sign(np.diag(r))[np.newaxis, :]
  return np.ascontiguousarray(q.T, dtype=np.float32)


def cross_polytope(dim: int) -> np.ndarray:
  """The 2*dim vertices of the cross-polytope, [e_0, -e_0, e_1, -e_1, ...]: float32 [2*dim, dim]."""
  eye = np.eye(dim, dtype=np.float32)
  return np.stack([eye, -eye], axis=1).reshape(2 * dim, dim)


def spherical_kmeans(dim: int, codebook_size: int, seed: int) -> np.ndarray:
  """The seeded spherical k-means codebook: float32 [codebook_size, dim], unit-norm rows.

  Shipped presets are loaded from package data; other configurations are generated (a few
  seconds for K = 1024) and memoised for the life of the process.
  """
  shipped = _load_shipped()
  key = _key(dim, codebook_size, seed)
  if key in shipped:
    return shipped[key]
  return _generate_spherical_kmeans(dim, codebook_size, seed)


def gaussian_kmeans(dim: int, codebook_size: int, seed: int) -> np.ndarray:
  """The seeded k-means codebook of N(0, I_dim): float32 [codebook_size, dim] (not unit norm).

  Shipped configurations are loaded from package data; others are generated and memoised.
  """
  shipped = _load_shipped()
  key = _gaussian_key(dim, codebook_size, seed)
  if key in shipped:
    return shipped[key]
  return _generate_gaussian_kmeans(dim, codebook_size, seed)


def _key(dim: int, codebook_size: int, seed: int) -> str:
  return f'kmeans_d{dim}_k{codebook_size}_s{seed}'


def _gaussian_key(dim: int, codebook_size: int, seed: int) -> str:
  return f'gaussian_kmeans_d{dim}_k{codebook_size}_s{seed}'


@functools.lru_cache(maxsize=None)
def _load_shipped() -> dict:
  if not os.path.exists(_DATA_FILE):
    return {}
  with np.load(_DATA_FILE) as data:
    return {name: data[name] for name in data.files}


@functools.lru_cache(maxsize=16)
def _generate_spherical_kmeans(dim: int, codebook_size: int, seed: int) -> np.ndarray:
  """Lloyd's algorithm for lines through the origin (antipodal spherical k-means)."""
  if codebook_size < dim:
    raise ValueError(
        f'A k-means codebook needs codebook_size >= dim to span R^dim; got codebook_size='
        f'{codebook_size}, dim={dim}.')
  rng = np.random.Generator(np.random.PCG64(seed))
  num_samples = min(_SAMPLES_PER_CODEWORD * codebook_size, _MAX_SAMPLES)
  samples = rng.standard_normal((num_samples, dim))
  samples /= np.linalg.norm(samples, axis=1, keepdims=True)
  codebook = samples[rng.choice(num_samples, codebook_size, replace=False)].copy()
  for _ in range(_ITERATIONS):
    assignment = _assign(samples, codebook)
    counts = np.bincount(assignment, minlength=codebook_size)
    ordered = samples[np.argsort(assignment, kind='stable')]
    clusters = np.split(ordered, np.cumsum(counts)[:-1])
    scatter = np.stack([c.T @ c for c in clusters])
    _, eigenvectors = np.linalg.eigh(scatter)
    principal = eigenvectors[:, :, -1]
    # An empty cluster keeps its codeword; it may win samples back in the next iteration.
    codebook = np.where(counts[:, np.newaxis] > 0, principal, codebook)
  # A canonical sign per codeword (largest-magnitude entry positive) so that the result does
  # not depend on the eigen-solver's sign convention.
  pivot = np.argmax(np.abs(codebook), axis=1)
  codebook *= np.sign(codebook[np.arange(codebook_size), pivot])[:, np.newaxis]
  codebook /= np.linalg.norm(codebook, axis=1, keepdims=True)
  return codebook.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _generate_gaussian_kmeans(dim: int, codebook_size: int, seed: int) -> np.ndarray:
  """Lloyd's algorithm (squared error) on seeded standard Gaussian samples."""
  if codebook_size < 2:
    raise ValueError(f'A k-means codebook needs codebook_size >= 2; got {codebook_size}.')
  # A stream apart from spherical k-means' samples of the same seed.
  rng = np.random.Generator(np.random.PCG64([seed, 1]))
  num_samples = min(_GAUSSIAN_SAMPLES_PER_CODEWORD * codebook_size, _GAUSSIAN_MAX_SAMPLES)
  samples = rng.standard_normal((num_samples, dim)).astype(np.float32)
  codebook = samples[rng.choice(num_samples, codebook_size, replace=False)].astype(np.float64)
  for _ in range(_GAUSSIAN_ITERATIONS):
    half_norms = 0.5 * np.sum(codebook**2, axis=1)
    assignment = _assign_nearest(samples, codebook.astype(np.float32),
                                 half_norms.astype(np.float32))
    counts = np.bincount(assignment, minlength=codebook_size)
    sums = np.stack([np.bincount(assignment, weights=samples[:, j], minlength=codebook_size)
                     for j in range(dim)], axis=1)
    # An empty cell keeps its codeword; it may win samples back in the next iteration.
    codebook = np.where(counts[:, np.newaxis] > 0,
                        sums / np.maximum(counts, 1)[:, np.newaxis], codebook)
  return codebook.astype(np.float32)


def _assign_nearest(samples, codebook, half_norms):
  """argmin_k ||u - c_k||^2 = argmax_k <u, c_k> - ||c_k||^2 / 2, in row blocks."""
  rows = max(1, (1 << 23) // codebook.shape[0])
  return np.concatenate([
      np.argmax(samples[i:i + rows] @ codebook.T - half_norms, axis=1)
      for i in range(0, samples.shape[0], rows)
  ])


def _assign(samples: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  """argmax_k |<c_k, u>| per sample, in row blocks so the projection stays below ~64 MiB."""
  rows = max(1, (1 << 23) // codebook.shape[0])
  return np.concatenate([
      np.argmax(np.abs(samples[i:i + rows] @ codebook.T), axis=1)
      for i in range(0, samples.shape[0], rows)
  ])


def write_shipped(path: str = _DATA_FILE) -> None:
  """Generates every codebook in SHIPPED and SHIPPED_GAUSSIAN and writes them to `path`."""
  arrays = {_key(d, k, s): _generate_spherical_kmeans(d, k, s) for d, k, s in SHIPPED}
  arrays.update({_gaussian_key(d, k, s): _generate_gaussian_kmeans(d, k, s)
                 for d, k, s in SHIPPED_GAUSSIAN})
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(path, **arrays)
  _load_shipped.cache_clear()

