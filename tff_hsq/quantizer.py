"""Hyper-Sphere Quantization of one tensor, as plain TensorFlow ops (no TFF).

Dai et al., "Hyper-Sphere Quantization: Communication-Efficient SGD for Federated Learning",
arXiv 1911.04655. A float tensor of D entries is flattened, zero-padded to a multiple of the
sub-vector length d (`dim`) and cut into N = ceil(D / d) sub-vectors v. A codebook C of K
(`codebook_size`) unit-norm codewords c_k in R^d is shared by all parties. Each v is sent as a
codeword index k (log2 K bits) and a scale s (`scale_bits` bits); its decode is s * c_k.

Modes:
  nearest:    k = argmax_k |<c_k, v>|, s = <c_k, v>. Biased; `nearest_scale`:
                projection: as in the paper. |s| <= ||v||, so the decode never has a larger
                            norm than the input (scale quantization never rounds past ||v||).
                            The decode is a shrunk copy of x plus noise: <x_hat, x> =
                            ||x_hat||^2 = (1 - NMSE) ||x||^2 before scale rounding.
                rescaled:   beyond the paper: the same indices and scale codes, and the
                            per-tensor maximum scale multiplied by ||x||^2 / <x_hat, x>
                            (computed on the client from what it sends; no extra bits), so
                            that the decode's projection onto x is x itself. Removes the
                            shrinkage, which, unlike the noise, does not average out over
                            clients: in FedAvg it converges like the uncompressed mean
                            (benchmarks/convergence.py). Still deterministic, so not unbiased;
                            NMSE becomes NMSE_p / (1 - NMSE_p) (1.08 at the paper's setting)
                            and the decode can have a larger norm than the input.
  stochastic: a = C^+ v (so that sum_k a_k c_k = v); k is drawn with probability
              |a_k| / ||a||_1 and s = sign(a_k) ||a||_1. Unbiased: E[s c_k] = v.
  log_d:      the whole tensor is one sub-vector over the orthonormal basis of a seeded
              randomized Hadamard transform (never materialized); k is drawn as in stochastic
              mode, and the message is one index and one float32 scale: 64 bits per tensor.
  rotated:    beyond the paper (DRIVE-style, Vargaftik et al. 2021, with vector codewords). The
              flattened tensor is cut into blocks of B = `block_size` entries (a power of two;
              the tail block is the smallest power of two >= its entries, zero-padded). Each
              block x_b is rotated, y = R_b x_b, by a randomized Hadamard transform whose signs
              are drawn from `rotation_key`, a 64-bit key drawn from the encode seed and SENT
              in the message (so the server rebuilds R_b from the message alone), and from the
              block's position. Each length-d sub-vector y_j gets the nearest codeword k_j of
              y_j / sigma_b (sigma_b^2 = ||x_b||^2 / B; a Gaussian k-means codebook by default)
              and the block gets ONE float32 scale S_b; decode: S_b R_b^T c_hat, c_hat the
              concatenated codewords. `rotated_scale`:
                unbiased:   S = ||x_b||^2 / <y, c_hat>. E[decode] = x over a uniformly random
                            rotation (DRIVE's argument: the error is orthogonal to x and
                            symmetric); NMSE = 1 / cos^2(y, c_hat) - 1. With the randomized
                            Hadamard transform it is unbiased to within statistical noise on
                            typical inputs (measured in benchmarks/rotated.py); can increase
                            the norm.
                projection: S = <y, c_hat> / ||c_hat||^2 (least squares, shrunk by 2^-16 to
                            absorb float32 rounding): biased, NMSE = 1 - cos^2, and the decode
                            never has a larger norm than the input.
              Message: `indices` (as above, log2 K bits per sub-vector), `scales` (float32
              [num_blocks]) and `rotation_key` (int32 [2]): log2(K) / d bits per coordinate plus
              32 per block plus 64 per tensor.

Scales are sent in n-bit sign-magnitude form relative to the per-tensor maximum |s| (a float32),
so that a zero scale stays exactly zero: magnitude code q in [0, 2^(n-1) - 1], decoded as
q * max / (2^(n-1) - 1). Nearest mode rounds to the nearest level but never above ||v||;
stochastic mode rounds stochastically, which keeps it unbiased.
"""

import collections
import dataclasses
import functools
import math
from typing import Optional

import numpy as np
import tensorflow as tf

from tff_hsq import codebooks
from tff_hsq import packing
from tff_hsq import rotation

MODES = ('nearest', 'stochastic', 'log_d', 'rotated')
NEAREST_SCALES = ('projection', 'rescaled')
ROTATED_SCALES = ('unbiased', 'projection')
FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

# Sub-vectors are projected onto the codebook this many at a time, so the [N, K] projection is
# never held whole: at K = 256 a chunk's projection is 8 MiB.
_CHUNK = 8192
# Largest codebook: a k-means codebook of 4096 codewords takes minutes to fit, and larger
# ones would mostly add index bits.
_MAX_K = 4096
# Stream ids folded into the caller's seed; one per independent random draw.
_INDEX_STREAM = 1
_SCALE_STREAM = 2
_ROTATION_STREAM = 0x5EED
_KEY_STREAM = 3
# Rotated mode: default block size, the largest allowed, and the projection scale's shrink.
DEFAULT_BLOCK = 1 << 14
_MAX_BLOCK = 1 << 20
_PROJECTION_SHRINK = 1.0 - 2.0**-16


@dataclasses.dataclass(frozen=True, eq=False)
class Message:
  """An encoded tensor.

  Attributes:
    components: OrderedDict of the tensors that are sent (this is all that crosses the
      network); their names, shapes and dtypes are fixed by the Quantizer and the tensor shape:
      nearest/stochastic: `indices` (uint8 [N] if K = 256, else uint32 words of packed
      log2 K-bit indices), `scale_codes` (uint32 words of packed
      n-bit sign-magnitude codes) and `max_scale` (float32 []); log_d: `index` (uint32 []) and
      `scale` (float32 []); rotated: `indices` (as above), `scales` (float32 [num_blocks]) and
      `rotation_key` (int32 [2]).
    shape: the encoded tensor's static shape (known to the receiver from the value type).
    dtype: the encoded tensor's dtype (likewise).
  """
  components: collections.OrderedDict
  shape: tf.TensorShape
  dtype: tf.DType

  def __post_init__(self):
    # Accept anything TensorShape / as_dtype accept (tuples, numpy dtypes), store canonical.
    object.__setattr__(self, 'shape', tf.TensorShape(self.shape))
    object.__setattr__(self, 'dtype', tf.as_dtype(self.dtype))

  def num_bits(self) -> int:
    """The number of bits in `components`, from their static shapes and dtypes."""
    return message_bits(self.components)


def message_bits(components) -> int:
  """Bits of a structure of tensors or TensorSpecs, from static shapes and dtypes."""
  total = 0
  for t in tf.nest.flatten(components):
    total += int(t.shape.num_elements()) * tf.as_dtype(t.dtype).size * 8
  return total


class Quantizer:
  """Hyper-Sphere Quantization of a tensor: encode on a client, decode on the server.

  Example:
    q = Quantizer(dim=16, codebook_size=256, scale_bits=6, mode='nearest')
    message = q.encode(x, seed=tf.constant([7, 0]))
    x_hat = q.decode(message)   # same shape and dtype as x
  """

  def __init__(self,
               dim: int = 16,
               codebook_size: int = 256,
               scale_bits: int = 6,
               mode: str = 'nearest',
               codebook_seed: int = 0,
               codebook: Optional[str] = None,
               rotated_scale: str = 'unbiased',
               block_size: int = DEFAULT_BLOCK,
               nearest_scale: str = 'projection'):
    """Configures the quantizer.

    Args:
      dim: d, the sub-vector length (>= 1). Unused by log_d.
      codebook_size: K, the number of codewords: a power of two with K >= d, at most 4096.
        Unused by log_d.
      scale_bits: n, bits per scale code (sign + n - 1 magnitude bits), 2 <= n <= 16. Unused
        by log_d and rotated, which send float32 scales.
      mode: one of 'nearest', 'stochastic', 'log_d', 'rotated' (see the module docstring).
      codebook_seed: seed of the codebook (and of log_d's rotation); every party must use the
        same value.
      codebook: 'spherical_kmeans', 'orthonormal' (K = d) or 'cross_polytope' (K = 2d); by
        default orthonormal for K = d, cross-polytope for K = 2d, else spherical k-means;
        in rotated mode also 'gaussian_kmeans' (its default) or 'signed_spherical_kmeans'.
      rotated_scale: rotated mode's block scale, 'unbiased' or 'projection'.
      block_size: rotated mode's block length B: a power of two, dim <= B <= 2^20.
      nearest_scale: nearest mode's tensor scale, 'projection' (the paper's) or 'rescaled'.

    Raises:
      ValueError: naming the argument that is out of range.
    """
    if mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}; got {mode!r}.')
    for name, value in (('dim', dim), ('codebook_size', codebook_size),
                        ('scale_bits', scale_bits), ('codebook_seed', codebook_seed)):
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f'{name} must be an int; got {value!r} of type {type(value).__name__}.')
    if dim < 1:
      raise ValueError(f'dim must be >= 1; got {dim}.')
    if codebook_size < 2 or codebook_size & (codebook_size - 1) or codebook_size > _MAX_K:
      raise ValueError(
          f'codebook_size must be a power of two in [2, {_MAX_K}]; got {codebook_size}.')
    if mode != 'log_d' and codebook_size < dim:
      raise ValueError(
          f'codebook_size must be >= dim so the codewords span R^dim; got codebook_size='
          f'{codebook_size}, dim={dim}.')
    if not 2 <= scale_bits <= 16:
      raise ValueError(f'scale_bits must be in [2, 16]; got {scale_bits}.')
    if codebook_seed < 0:
      raise ValueError(f'codebook_seed must be >= 0; got {codebook_seed}.')
    if rotated_scale not in ROTATED_SCALES:
      raise ValueError(f'rotated_scale must be one of {ROTATED_SCALES}; got {rotated_scale!r}.')
    if nearest_scale not in NEAREST_SCALES:
      raise ValueError(f'nearest_scale must be one of {NEAREST_SCALES}; got {nearest_scale!r}.')
    if nearest_scale != 'projection' and mode != 'nearest':
      raise ValueError(f'nearest_scale={nearest_scale!r} is for nearest mode; got mode={mode!r}.')
    if mode == 'rotated':
      if dim & (dim - 1):
        raise ValueError(f'dim must be a power of two in rotated mode; got {dim}.')
      if (not isinstance(block_size, (int, np.integer)) or isinstance(block_size, bool) or
          block_size & (block_size - 1) or not dim <= block_size <= _MAX_BLOCK):
        raise ValueError(
            f'block_size must be a power of two in [dim, {_MAX_BLOCK}]; got {block_size!r}.')
    self._rotated_scale = rotated_scale
    self._nearest_scale = nearest_scale
    self._block_size = int(block_size)
    self._dim = int(dim)
    self._codebook_size = int(codebook_size)
    self._scale_bits = int(scale_bits)
    self._mode = mode
    self._codebook_seed = int(codebook_seed)
    if mode == 'rotated':
      self._codebook_kind = codebook or 'gaussian_kmeans'
    else:
      self._codebook_kind = codebook or codebooks.default_kind(self._dim, self._codebook_size)
    if mode != 'log_d':
      # Builds (or loads) the codebook now, so that a bad kind fails at construction.
      self._codebook = codebooks.make(self._codebook_kind, self._dim, self._codebook_size,
                                      self._codebook_seed)

  @property
  def dim(self) -> int:
    return self._dim

  @property
  def codebook_size(self) -> int:
    return self._codebook_size

  @property
  def scale_bits(self) -> int:
    return self._scale_bits

  @property
  def mode(self) -> str:
    return self._mode

  @property
  def codebook_seed(self) -> int:
    return self._codebook_seed

  @property
  def rotated_scale(self) -> str:
    return self._rotated_scale

  @property
  def nearest_scale(self) -> str:
    return self._nearest_scale

  @property
  def block_size(self) -> int:
    return self._block_size

  @property
  def codebook(self) -> np.ndarray:
    """The codewords as rows: float32 [codebook_size, dim] (not defined for log_d).

    Unit norm, except rotated mode's default `gaussian_kmeans` codebook.
    """
    if self._mode == 'log_d':
      raise AttributeError('log_d mode has no explicit codebook (it is a Hadamard basis).')
    return self._codebook

  @property
  def unbiased(self) -> bool:
    """Whether E[decode(encode(x))] = x over the encode seed."""
    if self._mode == 'rotated':
      return self._rotated_scale == 'unbiased'
    return self._mode in ('stochastic', 'log_d')

  @property
  def norm_non_increasing(self) -> bool:
    """Whether ||decode(encode(x))|| <= ||x|| always (up to float32 rounding)."""
    if self._mode == 'rotated':
      return self._rotated_scale == 'projection'
    return self._mode == 'nearest' and self._nearest_scale == 'projection'

  def __repr__(self):
    rotated = (f', rotated_scale={self._rotated_scale!r}, block_size={self._block_size}'
               if self._mode == 'rotated' else '')
    rescaled = (f', nearest_scale={self._nearest_scale!r}'
                if self._nearest_scale != 'projection' else '')
    return (f'Quantizer(dim={self._dim}, codebook_size={self._codebook_size}, '
            f'scale_bits={self._scale_bits}, mode={self._mode!r}, '
            f'codebook_seed={self._codebook_seed}, codebook={self._codebook_kind!r}{rotated}'
            f'{rescaled})')

  # ----------------------------------------------------------------------------------------
  # Encode.

  def encode(self, x, seed) -> Message:
    """Encodes a float tensor.

    Args:
      x: a float tensor (float16, bfloat16, float32 or float64) of static shape. Non-finite
        entries make the whole message malformed (it decodes to zeros), never a crash.
      seed: shape-[2] integer tensor, as tf.random.stateless_* take. Same seed, same message.
        Unused by nearest mode, which is deterministic.

    Returns:
      A Message.

    Raises:
      TypeError: if x is not a floating-point tensor.
      ValueError: if x's shape is not fully defined.
    """
    x = tf.convert_to_tensor(x)
    if x.dtype not in FLOAT_DTYPES:
      raise TypeError(
          'Quantizer.encode needs a floating-point tensor '
          f'({", ".join(d.name for d in FLOAT_DTYPES)}); '
          f'got dtype {x.dtype.name}.')
    if not x.shape.is_fully_defined():
      raise ValueError(f'Quantizer.encode needs a fully defined shape; got {x.shape}.')
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    # For float32 input neither the cast nor the reshape copies: the codebook modes read x in
    # chunks and never hold a second full-size copy (peak extra memory < 2x x's bytes).
    flat = tf.reshape(tf.cast(x, tf.float32), [-1])
    if self._mode == 'log_d':
      components = self._encode_log_d(flat, seed)
    elif self._mode == 'rotated':
      components = self._encode_rotated(flat, seed)
    else:
      components = self._encode_codebook(flat, seed)
    return Message(components, x.shape, x.dtype)

  def assign(self, x, seed):
    """Chooses a codeword and an unquantized scale for every sub-vector of x.

    The first half of the codebook modes' encode, shared with the secure-aggregation encoder
    (which quantizes scales on a fixed grid instead of one relative to the tensor's maximum).

    Args:
      x: float tensor of static shape (any float dtype; read as float32). Non-finite entries
        are read as zero and reported in `finite`.
      seed: shape-[2] integer tensor (unused by nearest mode).

    Returns:
      (indices, scales, norms, finite): int32 [N] codeword indices, float32 [N] scales s
      (nearest: <c_k, v>; stochastic: sign(a_k) ||a||_1), float32 [N] sub-vector norms ||v||
      and bool [] (all of x finite), for the N = ceil(D / dim) zero-padded sub-vectors v.

    Raises:
      ValueError: in log_d mode, which has no codebook.
    """
    if self._mode in ('log_d', 'rotated'):
      raise ValueError(
          f'Quantizer.assign needs a per-sub-vector-scale codebook mode; not {self._mode}.')
    flat = tf.reshape(tf.cast(tf.convert_to_tensor(x), tf.float32), [-1])
    return self._assign(flat, tf.cast(tf.convert_to_tensor(seed), tf.int64))

  def _assign(self, flat, seed):
    d = self._dim
    num_elements = flat.shape[0]
    num_vectors = -(-num_elements // d)
    chunk = min(_CHUNK, num_vectors)
    num_chunks = -(-num_vectors // chunk)
    chunk_entries = chunk * d
    stochastic = self._mode == 'stochastic'
    if stochastic:
      # a = C^+ v is a linear map; computed in float64 once, applied in float32.
      projection_t = tf.constant(
          np.linalg.pinv(self._codebook.T.astype(np.float64)).T.astype(np.float32))  # [d, K]
    else:
      projection_t = tf.constant(self._codebook.T)  # [d, K]
    index_seed = _fold(seed, _INDEX_STREAM)

    def project(i):
      """Sub-vectors [i * chunk, (i + 1) * chunk): indices, scales, norms, all finite?"""
      piece = flat[i * chunk_entries:(i + 1) * chunk_entries]
      piece = tf.pad(piece, [[0, chunk_entries - tf.shape(piece)[0]]])  # zero tail
      is_finite = tf.math.is_finite(piece)
      v = tf.reshape(tf.where(is_finite, piece, tf.zeros_like(piece)), [chunk, d])
      p = tf.matmul(v, projection_t)  # [chunk, K]
      if stochastic:
        cumulative = tf.cumsum(tf.abs(p), axis=1)
        l1 = cumulative[:, -1]
        u = tf.random.stateless_uniform([chunk], _fold(index_seed, i))
        # Inverse-CDF draw: the first k whose cumulative weight reaches u * ||a||_1.
        k = tf.reduce_sum(tf.cast(cumulative < (u * l1)[:, None], tf.int32), axis=1)
        k = tf.minimum(k, self._codebook_size - 1)
        s = tf.sign(tf.gather(p, k, axis=1, batch_dims=1)) * l1
      else:
        k = tf.argmax(tf.abs(p), axis=1, output_type=tf.int32)
        s = tf.gather(p, k, axis=1, batch_dims=1)
      return k, s, _norm(v), tf.reduce_all(is_finite)

    k, s, norm, chunk_finite = tf.map_fn(
        project, tf.range(num_chunks),
        fn_output_signature=(tf.int32, tf.float32, tf.float32, tf.bool),
        parallel_iterations=1)
    return (tf.reshape(k, [-1])[:num_vectors], tf.reshape(s, [-1])[:num_vectors],
            tf.reshape(norm, [-1])[:num_vectors], tf.reduce_all(chunk_finite))

  def _encode_codebook(self, flat, seed):
    n = self._scale_bits
    num_vectors = -(-flat.shape[0] // self._dim)
    k, s, norm, finite = self._assign(flat, seed)

    levels = float(2**(n - 1) - 1)
    max_scale = tf.reduce_max(tf.abs(s))
    magnitude = tf.math.divide_no_nan(tf.abs(s) * levels, max_scale)
    if self._mode == 'nearest':
      # Round to the nearest level, but never to a level above ||v||: the decode must not
      # have a larger norm than the input (DP's clip bound relies on it).
      # In float64: a float32 norm * levels / max can land just below an integer it equals.
      ceiling = tf.floor(tf.math.divide_no_nan(
          tf.cast(norm, tf.float64) * levels, tf.cast(max_scale, tf.float64)))
      q = tf.minimum(tf.round(magnitude), tf.cast(ceiling, tf.float32))
    else:
      u = tf.random.stateless_uniform([num_vectors], _fold(seed, _SCALE_STREAM))
      q = tf.floor(magnitude + u)
    q = tf.cast(tf.clip_by_value(q, 0.0, levels), tf.int64)
    negative = tf.logical_and(s < 0, q > 0)
    codes = q + tf.cast(negative, tf.int64) * (1 << (n - 1))
    if self._nearest_scale == 'rescaled':
      max_scale = _rescaled(max_scale, q, s, norm, levels)
    return collections.OrderedDict(
        indices=self._pack_indices(k),
        scale_codes=packing.pack(codes, n),
        max_scale=tf.where(finite, max_scale, np.float32(np.nan)))

  def _encode_log_d(self, flat, seed):
    finite = tf.reduce_all(tf.math.is_finite(flat))
    flat = tf.where(tf.math.is_finite(flat), flat, tf.zeros_like(flat))
    size = rotation.padded_size(flat.shape[0])
    signs = self._rotation_signs(size)
    a = rotation.rotate(tf.pad(flat, [[0, size - flat.shape[0]]]), signs)
    # float64 for the running sum: over 2^20+ terms float32 would misplace the draw.
    cumulative = tf.cumsum(tf.abs(tf.cast(a, tf.float64)))
    l1 = cumulative[-1]
    u = tf.random.stateless_uniform([], _fold(seed, _INDEX_STREAM), dtype=tf.float64)
    k = tf.minimum(tf.reduce_sum(tf.cast(cumulative < u * l1, tf.int32)), size - 1)
    scale = tf.sign(a[k]) * tf.cast(l1, tf.float32)
    return collections.OrderedDict(
        index=tf.cast(k, tf.uint32),
        scale=tf.where(finite, scale, np.float32(np.nan)))

  # --- rotated mode ---------------------------------------------------------------------------
  def _block_layout(self, num_elements: int):
    """(number of full blocks, tail block length or 0) for a tensor of num_elements."""
    full = num_elements // self._block_size
    tail = num_elements - full * self._block_size
    return full, (rotation.padded_size(max(tail, self._dim)) if tail else 0)

  def _block_signs(self, key: tf.Tensor, num_blocks: int, size: int, part: int) -> tf.Tensor:
    """float32 [num_blocks, size] rotation signs of part 0 (full blocks) or 1 (the tail).

    A function of the sent `rotation_key`, the codebook seed and the block's position only,
    so the server draws the same signs from the message.
    """
    base = _fold(_fold(tf.cast(key, tf.int64), self._codebook_seed), part)
    bits = tf.random.stateless_uniform([num_blocks, size], seed=base, minval=0, maxval=2,
                                       dtype=tf.int32)
    return tf.cast(2 * bits - 1, tf.float32)

  def _rotated_parts(self, flat: tf.Tensor):
    """Splits flat float32 [D] into (full blocks [F, B], tail block [1, T]) (zero-padded)."""
    full, tail = self._block_layout(flat.shape[0])
    parts = []
    if full:
      parts.append(tf.reshape(flat[:full * self._block_size], [full, self._block_size]))
    if tail:
      rest = flat[full * self._block_size:]
      parts.append(tf.reshape(tf.pad(rest, [[0, tail - rest.shape[0]]]), [1, tail]))
    return parts

  def _encode_rotated(self, flat, seed):
    d = self._dim
    finite_entries = tf.math.is_finite(flat)
    finite = tf.reduce_all(finite_entries)
    flat = tf.where(finite_entries, flat, tf.zeros_like(flat))
    key = tf.random.stateless_uniform([2], _fold(seed, _KEY_STREAM), minval=None, maxval=None,
                                      dtype=tf.int32)
    codebook = tf.constant(self._codebook)  # [K, d]
    half_norms = 0.5 * np.sum(self._codebook.astype(np.float64)**2, axis=1)
    # argmax_k <v, c_k> - sigma ||c_k||^2 / 2 as one product: [v, sigma] @ [C^T; -h].
    augmented = tf.constant(np.concatenate(
        [self._codebook.T, -half_norms[np.newaxis, :]], axis=0).astype(np.float32))  # [d+1, K]
    squared_norms = tf.constant(2.0 * half_norms)  # float64 [K]
    indices, scales = [], []
    for part, z in enumerate(self._rotated_parts(flat)):
      num_blocks, size = z.shape
      # Each block divided by its largest magnitude: the rotation then neither overflows nor
      # underflows in float32, whatever the input's magnitude. The scale takes it back.
      peak = tf.reduce_max(tf.abs(z), axis=1)  # [n]
      z = tf.math.divide_no_nan(z, peak[:, None])
      y = rotation.hadamard_matmul(z * self._block_signs(key, num_blocks, size, part))
      y = y / np.float32(np.sqrt(size))
      energy = tf.reduce_sum(tf.square(tf.cast(z, tf.float64)), axis=1)  # ||z_b||^2
      sigma = tf.cast(tf.sqrt(energy / size), tf.float32)
      per_block = size // d
      v = tf.reshape(y, [num_blocks * per_block, d])
      v_sigma = tf.reshape(tf.repeat(sigma[:, None], per_block, axis=1), [-1, 1])
      k = self._nearest(tf.concat([v, v_sigma], axis=1), augmented)
      chosen = tf.gather(codebook, k)  # [N, d]
      dots = tf.reshape(tf.reduce_sum(tf.cast(v * chosen, tf.float64), axis=1),
                        [num_blocks, per_block])
      inner = tf.reduce_sum(dots, axis=1)  # <y, c_hat>
      c_norm2 = tf.reduce_sum(
          tf.reshape(tf.gather(squared_norms, k), [num_blocks, per_block]), axis=1)
      if self._rotated_scale == 'unbiased':
        scale = tf.math.divide_no_nan(energy, inner)
      else:
        # Least squares, never past ||z|| / ||c_hat|| (Cauchy-Schwarz, float64), then shrunk
        # by 2^-16: the float32 rotations of encode and decode cannot lengthen the decode
        # beyond the input's norm.
        ls = tf.math.divide_no_nan(tf.abs(inner), c_norm2)
        cap = tf.math.divide_no_nan(tf.sqrt(energy), tf.sqrt(c_norm2))
        scale = tf.sign(inner) * tf.minimum(ls, cap) * _PROJECTION_SHRINK
      indices.append(k)
      scales.append(tf.cast(scale * tf.cast(peak, tf.float64), tf.float32))
    scales = tf.concat(scales, axis=0)
    return collections.OrderedDict(
        indices=self._pack_indices(tf.concat(indices, axis=0)),
        scales=tf.where(finite, scales, np.float32(np.nan)),
        rotation_key=key)

  def _nearest(self, v_aug: tf.Tensor, augmented: tf.Tensor) -> tf.Tensor:
    """int32 [N]: argmax of v_aug @ augmented per row, _CHUNK rows at a time."""
    num = v_aug.shape[0]
    chunk = min(_CHUNK, num)
    num_chunks = -(-num // chunk)
    if num_chunks == 1:
      return tf.argmax(tf.matmul(v_aug, augmented), axis=1, output_type=tf.int32)
    padded = tf.pad(v_aug, [[0, num_chunks * chunk - num], [0, 0]])
    pieces = tf.reshape(padded, [num_chunks, chunk, v_aug.shape[1]])
    k = tf.map_fn(
        lambda piece: tf.argmax(tf.matmul(piece, augmented), axis=1, output_type=tf.int32),
        pieces, fn_output_signature=tf.int32, parallel_iterations=1)
    return tf.reshape(k, [-1])[:num]

  def _decode_rotated(self, message: Message, valid: tf.Tensor) -> tf.Tensor:
    c = message.components
    d = self._dim
    num_elements = message.shape.num_elements()
    full, tail = self._block_layout(num_elements)
    sizes = ([(full, self._block_size)] if full else []) + ([(1, tail)] if tail else [])
    num_vectors = sum(n * size // d for n, size in sizes)
    k = self._unpack_indices(c['indices'], num_vectors)
    codewords = tf.gather(tf.constant(self._codebook), k)  # [N, d]
    scales = tf.where(valid, c['scales'], tf.zeros_like(c['scales']))
    out, vector, block = [], 0, 0
    for part, (n, size) in enumerate(sizes):
      num = n * size // d
      c_hat = tf.reshape(codewords[vector:vector + num], [n, size])
      y = c_hat * scales[block:block + n, None]
      x = rotation.hadamard_matmul(y) * self._block_signs(c['rotation_key'], n, size, part)
      out.append(tf.reshape(x / np.float32(np.sqrt(size)), [-1]))
      vector += num
      block += n
    return tf.concat(out, axis=0)

  def _rotation_signs(self, size: int) -> tf.Tensor:
    return rotation.random_signs(
        size, tf.constant([self._codebook_seed, _ROTATION_STREAM], tf.int64))

  def _index_bits(self) -> int:
    return int(math.log2(self._codebook_size))

  def _pack_indices(self, k: tf.Tensor) -> tf.Tensor:
    bits = self._index_bits()
    if bits == 8:
      return tf.cast(k, tf.uint8)
    return packing.pack(k, bits)

  def _unpack_indices(self, indices: tf.Tensor, num_vectors: int) -> tf.Tensor:
    bits = self._index_bits()
    if bits == 8:
      return tf.cast(indices, tf.int64)
    return packing.unpack(indices, bits, num_vectors)

  # ----------------------------------------------------------------------------------------
  # Decode.

  def decode(self, message: Message) -> tf.Tensor:
    """Decodes a Message to a tensor of its shape and dtype.

    A malformed message (a non-finite or negative maximum scale, a non-finite scale, a log_d
    index >= P, a non-finite rotated block scale) decodes to zeros instead of raising; `is_valid` tells which messages those are.
    Codebook indices cannot be out of range: their fields are exactly log2 K bits wide.

    Raises:
      ValueError: if the components' shapes or dtypes are not those this Quantizer sends for
        `message.shape` (a message from another configuration).
    """
    self._check_components(message)
    num_elements = message.shape.num_elements()
    valid = self.is_valid(message)
    c = message.components
    if self._mode == 'log_d':
      size = rotation.padded_size(num_elements)
      index = tf.minimum(tf.cast(c['index'], tf.int64), size - 1)
      scale = tf.where(valid, c['scale'], 0.0)
      flat = scale * rotation.basis_vector(index, self._rotation_signs(size))
    elif self._mode == 'rotated':
      flat = self._decode_rotated(message, valid)
    else:
      n = self._scale_bits
      num_vectors = -(-num_elements // self._dim)
      k = self._unpack_indices(c['indices'], num_vectors)
      codes = packing.unpack(c['scale_codes'], n, num_vectors)
      magnitude = tf.cast(tf.bitwise.bitwise_and(codes, (1 << (n - 1)) - 1), tf.float32)
      sign = 1.0 - 2.0 * tf.cast(tf.bitwise.right_shift(codes, n - 1), tf.float32)
      step = tf.where(valid, c['max_scale'], 0.0) / float(2**(n - 1) - 1)
      scale = sign * magnitude * step
      flat = tf.reshape(tf.gather(tf.constant(self._codebook), k) * scale[:, None], [-1])
    flat = flat[:num_elements]
    return tf.cast(tf.reshape(flat, message.shape), message.dtype)

  def is_valid(self, message: Message) -> tf.Tensor:
    """bool []: False for a message `decode` turns into zeros (see `decode`)."""
    c = message.components
    if self._mode == 'log_d':
      size = rotation.padded_size(message.shape.num_elements())
      return tf.logical_and(
          tf.math.is_finite(c['scale']), tf.cast(c['index'], tf.int64) < size)
    if self._mode == 'rotated':
      return tf.reduce_all(tf.math.is_finite(c['scales']))
    # Index fields are exactly log2 K bits wide, so every codeword index is in range.
    return tf.logical_and(tf.math.is_finite(c['max_scale']), c['max_scale'] >= 0.0)

  def _check_components(self, message: Message):
    expected = self.message_spec(message.shape)
    got = message.components
    if (list(got.keys()) != list(expected.keys()) or any(
        not expected[name].is_compatible_with(got[name]) for name in expected)):
      raise ValueError(
          f'The message does not match {self!r} for a tensor of shape {message.shape}: '
          f'expected {dict(expected)}, got '
          f'{ {name: (t.shape, t.dtype) for name, t in got.items()} }.')

  # ----------------------------------------------------------------------------------------
  # Sizes.

  def message_spec(self, shape) -> collections.OrderedDict:
    """The TensorSpecs of the components `encode` sends for a tensor of `shape`."""
    return _message_spec(self, tuple(tf.TensorShape(shape).as_list()))

  def bits_per_coordinate(self, num_elements: int) -> float:
    """Bits of the encoded message of a `num_elements`-entry tensor, per entry.

    Counted from the message `encode` actually builds (traced, not run), so it cannot
    disagree with what is sent.
    """
    spec = self.message_spec([num_elements])
    return message_bits(spec) / num_elements

  def __eq__(self, other):
    return isinstance(other, Quantizer) and repr(self) == repr(other)

  def __hash__(self):
    return hash(repr(self))


@functools.lru_cache(maxsize=256)
def _message_spec(quantizer: Quantizer, shape: tuple) -> collections.OrderedDict:
  encode = tf.function(
      lambda x: quantizer.encode(x, tf.constant([0, 0], tf.int64)).components, autograph=False)
  concrete = encode.get_concrete_function(tf.TensorSpec(shape, tf.float32))
  return collections.OrderedDict(
      (name, tf.TensorSpec(t.shape, t.dtype)) for name, t in concrete.structured_outputs.items())


def _rescaled(max_scale, q, s, norm, levels):
  """Nearest mode's rescaled maximum: max_scale * ||x||^2 / <x_hat, x>.

  Args:
    max_scale: float32 [], the largest |s|.
    q: int64 [N], the magnitude codes sent.
    s: float32 [N], the unquantized scales <c_k, v> (sign(s) is the sign sent when q > 0).
    norm: float32 [N], the sub-vector norms ||v||.
    levels: the largest magnitude code, 2^(n-1) - 1.

  Returns:
    float32 []. <x_hat, x> = sum_j (q_j max / levels) |s_j|, because x_hat's sub-vector j is
    sign(s_j) q_j max / levels * c_k and <c_k, v_j> = s_j. max_scale itself when x_hat = 0 or
    the rescaled value would not be a finite float32.
  """
  max64 = tf.cast(max_scale, tf.float64)
  dot = tf.reduce_sum(tf.cast(q, tf.float64) * tf.abs(tf.cast(s, tf.float64))) * max64 / levels
  energy = tf.reduce_sum(tf.square(tf.cast(norm, tf.float64)))
  rescaled = tf.cast(max64 * tf.math.divide_no_nan(energy, dot), tf.float32)
  return tf.where(tf.logical_and(dot > 0, tf.math.is_finite(rescaled)), rescaled, max_scale)


def _norm(v: tf.Tensor) -> tf.Tensor:
  """Row norms of float32 [n, d]: float32 [n], within half a float32 step of the true norm.

  Computed in float64 because float32 squares overflow above ~1.8e19; stored in float32 to
  keep the encoder's [N] temporaries small. (Rounding down instead would break exactness: a
  scale that equals its sub-vector's norm would lose a whole quantization level.)
  """
  return tf.cast(tf.norm(tf.cast(v, tf.float64), axis=1), tf.float32)


def _fold(seed: tf.Tensor, stream: int) -> tf.Tensor:
  """The seed of random stream `stream` under `seed` (TF's stateless fold-in, a hash)."""
  return tf.random.experimental.stateless_fold_in(seed, stream)
