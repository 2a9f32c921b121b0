"""Seeded randomized Hadamard transform: an orthonormal rotation of R^P without a P x P matrix.

R x = H S x / sqrt(P), with H the P x P Sylvester-Hadamard matrix (entries +-1) and S a diagonal
of seeded random signs; P is a power of two. R is orthonormal (R R^T = I), costs O(P log P)
time and O(P) memory, and its k-th row is available in O(P) as S h_k / sqrt(P) with
h_k[i] = (-1)^popcount(i & k). Pure TensorFlow; no TFF import.
"""

import numpy as np
import tensorflow as tf


def padded_size(num_elements: int) -> int:
  """The smallest power of two >= num_elements (and >= 1)."""
  return 1 << max(0, int(num_elements - 1).bit_length())


def random_signs(size: int, seed: tf.Tensor) -> tf.Tensor:
  """Seeded +-1 signs: float32 [size]; `seed` is a shape-[2] integer tensor."""
  bits = tf.random.stateless_uniform([size], seed=seed, minval=0, maxval=2, dtype=tf.int32)
  return tf.cast(2 * bits - 1, tf.float32)


def hadamard(x: tf.Tensor) -> tf.Tensor:
  """Unnormalized fast Walsh-Hadamard transform H x along the last axis (Sylvester order).

  Args:
    x: float tensor [..., P] with P a power of two (static).

  Returns:
    H x, same shape and dtype. H is symmetric and H H = P I.
  """
  size = x.shape[-1]
  if size is None or size & (size - 1):
    raise ValueError(f'hadamard needs a static power-of-two last dimension; got {x.shape}.')
  outer = tf.shape(x)[:-1]
  y = tf.reshape(x, [-1, size])
  half = 1
  while half < size:
    # Butterflies of span `half`: pairs (i, i + half) inside blocks of 2 * half entries.
    pairs = tf.reshape(y, [-1, size // (2 * half), 2, half])
    low, high = pairs[:, :, 0, :], pairs[:, :, 1, :]
    y = tf.reshape(tf.stack([low + high, low - high], axis=2), [-1, size])
    half *= 2
  return tf.reshape(y, tf.concat([outer, [size]], axis=0))


def rotate(x: tf.Tensor, signs: tf.Tensor) -> tf.Tensor:
  """R x = H S x / sqrt(P) along the last axis: x float32 [..., P], signs float32 [P]."""
  return hadamard(x * signs) / np.sqrt(x.shape[-1]).astype(np.float32)


def unrotate(y: tf.Tensor, signs: tf.Tensor) -> tf.Tensor:
  """R^T y = S H y / sqrt(P), the inverse of `rotate`."""
  return hadamard(y) * signs / np.sqrt(y.shape[-1]).astype(np.float32)


def basis_vector(index: tf.Tensor, signs: tf.Tensor) -> tf.Tensor:
  """The index-th row of R (= R^T e_index) in O(P): float32 [P].

  Args:
    index: integer scalar tensor in [0, P).
    signs: float32 [P], the signs S of the rotation.
  """
  size = signs.shape[0]
  positions = tf.range(size, dtype=tf.int64)
  parity = tf.bitwise.bitwise_and(
      tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_and(positions, tf.cast(index, tf.int64))),
      tf.constant(1, tf.uint8))
  hadamard_column = 1.0 - 2.0 * tf.cast(parity, tf.float32)
  return hadamard_column * signs / np.sqrt(size).astype(np.float32)


# Largest Hadamard factor applied as a dense matrix product: H_P = H_a (x) H_b (x) ... with
# every factor <= 128, so a 2^14 block is two [128, 128] matrix products (BLAS) instead of 14
# memory-bound butterfly passes.
_MAX_FACTOR = 128


def _factors(size: int):
  factors = []
  while size > 1:
    factors.append(min(size, _MAX_FACTOR))
    size //= factors[-1]
  return factors or [1]


def hadamard_matmul(x: tf.Tensor) -> tf.Tensor:
  """H x along the last axis, like `hadamard`, as Kronecker factors of dense matrix products.

  In Sylvester order H_{ab} = H_a (x) H_b: reshaping a length-ab vector row-major to [a, b]
  turns H_{ab} x into H_a X H_b. Same result as `hadamard` up to float32 rounding.

  Args:
    x: float32 tensor [n, P], P a static power of two.
  """
  size = x.shape[-1]
  if size is None or size & (size - 1):
    raise ValueError(f'hadamard_matmul needs a static power-of-two last dimension; got {x.shape}.')
  factors = _factors(size)
  y = tf.reshape(x, [-1, size])
  after = size
  for f in factors:
    after //= f
    h = tf.constant(_sylvester(f), x.dtype)
    if after == 1:
      y = tf.matmul(tf.reshape(y, [-1, f]), h)
    else:
      y = tf.matmul(h, tf.reshape(y, [-1, f, after]))  # h broadcast over the leading axis
  return tf.reshape(y, tf.shape(x))


def _sylvester(size: int) -> np.ndarray:
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < size:
    h = np.block([[h, h], [h, -h]])
  return h
