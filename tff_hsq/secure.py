"""SecureHSQFactory: Hyper-Sphere Quantization summed through secure aggregation.

Secure aggregation reveals only the sum of the clients' values, so it cannot sum HSQ's compact
messages (a codeword index and a scale per sub-vector): they do not add. But HSQ's decode,
v_hat = s * c_k, is linear in a representation that does add. Each client turns its message
into an integer vector whose sum over clients decodes exactly to the sum of the clients'
decodes, and sends that vector through `tff.aggregators.SecureSumFactory` with constant bounds:

  state@SERVER --map--> round number --broadcast--> CLIENTS
  value@CLIENTS --map(choose codewords, quantize scales, scatter)--> int vectors@CLIENTS
  int vectors --SecureSumFactory(bounds -L, L)--> integer sums@SERVER --map(decode)--> sum

Scales live on a fixed grid of `scale_bound` B: a scale s becomes the integer
q = sign(s) * round(min(|s|, B) / step), step = B / L, L = 2^(n-1) - 1 for `scale_bits` n, with
stochastic rounding (`unbiased=True`: E[q * step] = s) or rounding down, so |q| <= L holds for
every client by construction. Values are meant to be L2-clipped to norm <= B
beforehand (e.g. with `tff.aggregators.clipping_factory`); in nearest mode every |s| is then
at most B. Larger scales are clipped to B.

The integer vector of a tensor of D entries, N = ceil(D / d) sub-vectors:
  * cross-polytope codebook (K = 2d codewords +-e_i, the default for K = 2d): N * d integers,
    the signed scale at the coordinate its codeword points along: as long as the value. The sum
    decodes as sum * step.
  * any other codebook (spherical k-means, orthonormal): a K-bin histogram per sub-vector,
    N * K integers, q_j in bin k_j of sub-vector j; the sum decodes as H_sum @ C * step. That is
    K / d times more integers than the value has entries (64x for d = 4, K = 256, far more
    bits than sending the value as float32), and the factory warns whenever K > d.

Float tensors with fewer than `threshold` entries are summed through a float SecureSumFactory
with bounds [-B, B] (TFF quantizes them to 32 bits itself), as float32 (every float dtype is
cast, the result cast back). Non-float tensors are rejected: secure summation needs a bound
for them, which this factory does not know.

A client whose value has a non-finite entry sends only zeros (integers and small floats) and
is counted in the `malformed_messages` measurement (itself securely summed): one bad client
never crashes a round nor turns the sum into NaN.

Simulation: TFF's default C++ execution context cannot run `federated_secure_sum_bitwidth`
(it fails with "Cannot embed a federated value"). Run simulations in
`tff.backends.test.set_sync_test_cpp_execution_context()`, the same C++ runtime with secure
sums compiled to plain sums, or build the factory with `secure=False`.
"""

import collections
import math
import warnings
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_hsq import codebooks
from tff_hsq import factory as factory_lib
from tff_hsq import quantizer as quantizer_lib

_ROUND_TYPE = tff.TensorType(np.int64)
# The seed stream of the scale rounding draw, folded into a tensor's seed. Quantizer.assign
# folds its own (index) stream 1 into the same seed; 2 keeps the two draws independent.
_SCALE_STREAM = 2
# Scale bits of the grid: 24 keeps step = B / L well inside float32's 24-bit mantissa.
_MAX_SCALE_BITS = 24
# federated_secure_sum_bitwidth sums integers of up to 62 bits plus headroom in int64.
_MAX_SUM_BITS = 62
# TFF's float secure sum quantizes every float to an integer in [0, 2^32 - 1].
_FLOAT_SECURE_BITS = 32
# A learned codebook of 4096 codewords takes minutes to fit and makes a histogram of
# K / d integers per value entry (128 at d = 32): never worth it.
_MAX_HISTOGRAM_K = 4096


class SecureHSQFactory(tff.aggregators.UnweightedAggregationFactory):
  """Sums client values placed at CLIENTS: HSQ-quantized, through secure aggregation.

  The server learns only the sum of the clients' integer vectors (and of their small float
  tensors), from which it decodes the sum of the clients' HSQ decodes exactly.

  Measurements of the created process (an OrderedDict at SERVER):
    bits_per_coordinate: float32, the bits a client's contribution occupies in the secure sum
      per entry of the value: every integer of the integer vectors (padding and histogram
      bins included) at w_int + h bits, every small float entry at 32 + h bits, divided by
      the number of value entries. w_int = ceil(log2(2L + 1)) (= scale_bits) is the input
      bitwidth SecureSumFactory uses for integers in [-L, L], 32 the one it uses for floats,
      and h = ceil(log2(max_clients)) the headroom the sum of max_clients inputs needs in the
      modular field. Not counted: the per-round scalars (the malformed flag and
      SecureSumFactory's own summand and clip counts, 1-bit inputs each), which do not grow
      with the value.
    compression_ratio: float32, 32 / bits_per_coordinate (against sending float32).
    malformed_messages: int32, clients of this round whose value was not finite, sent as zero.
    secure_sum: the inner sums' measurements, OrderedDict with `integers` (if any tensor is
      compressed), `floats` (if any is not) and `malformed`.
  """

  def __init__(self,
               dim: int = 8,
               codebook_size: int = 16,
               scale_bound: float = 1.0,
               scale_bits: int = 16,
               mode: str = 'nearest',
               unbiased: bool = True,
               threshold: int = 20000,
               codebook_seed: int = 0,
               codebook: Optional[str] = None,
               max_clients: int = 1000,
               secure: bool = True):
    """Configures the factory; see `tff_hsq.Quantizer` for dim, codebook_size, mode, codebook.

    Args:
      dim: sub-vector length d.
      codebook_size: number of codewords K. The default K = 2d gives the cross-polytope
        codebook, whose integer vector is as long as the value; other codebooks send a K-bin
        histogram per sub-vector (K / d times longer, with a warning).
      scale_bound: B > 0, the constant bound on every scale magnitude (clip values to L2 norm
        <= B beforehand); also the bound of the small float tensors.
      scale_bits: n in [2, 24]: scales are integers in [-L, L], L = 2^(n-1) - 1.
      mode: 'nearest' or 'stochastic' (log_d has no codebook). In stochastic mode
        |s| = ||C^+ v||_1 can exceed ||v|| (up to sqrt(d) ||v|| for the cross-polytope), so
        scale_bound must cover that, or clipped scales bias the result.
      unbiased: stochastic rounding of scales, E[q * step] = s (for |s| <= B); else their
        magnitude is rounded down, which never increases a norm and is deterministic.
      threshold: float tensors with at least this many entries are HSQ-quantized; smaller
        ones are securely summed as floats. >= 1.
      codebook_seed: seed of the codebook, shared by clients and server.
      codebook: codebook kind (see `tff_hsq.Quantizer`).
      max_clients: the most clients a round sums (>= 1); sets the secure sum's headroom.
      secure: True sums through `tff.aggregators.SecureSumFactory`; False through
        `tff.aggregators.SumFactory` (same integers, no secure aggregation: for comparisons).

    Raises:
      ValueError, TypeError: for an argument out of range, naming it and what to change.
    """
    for name, value in (('scale_bits', scale_bits), ('threshold', threshold),
                        ('max_clients', max_clients)):
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f'{name} must be an int; got {value!r} of type {type(value).__name__}.')
    for name, value in (('unbiased', unbiased), ('secure', secure)):
      if not isinstance(value, bool):
        raise TypeError(f'{name} must be a bool; got {value!r}.')
    if (not isinstance(scale_bound, (int, float, np.integer, np.floating)) or
        isinstance(scale_bound, bool)):
      raise TypeError(f'scale_bound must be a float; got {scale_bound!r}.')
    if not (math.isfinite(scale_bound) and scale_bound > 0):
      raise ValueError(f'scale_bound must be a finite number > 0; got {scale_bound}.')
    if not 2 <= scale_bits <= _MAX_SCALE_BITS:
      raise ValueError(f'scale_bits must be in [2, {_MAX_SCALE_BITS}]; got {scale_bits}.')
    if threshold < 1:
      raise ValueError(f'threshold must be >= 1; got {threshold}.')
    if max_clients < 1:
      raise ValueError(f'max_clients must be >= 1; got {max_clients}.')
    levels = 2**(scale_bits - 1) - 1
    # ceil(log2(m)) for an integer m >= 1 is (m - 1).bit_length(), exact where floats may not
    # be. SecureSumFactory gives integers in [-L, L] the bitwidth ceil(log2(2L + 1)).
    integer_bits = (2 * levels).bit_length()
    headroom_bits = (max_clients - 1).bit_length()
    sum_bits = integer_bits + headroom_bits
    if sum_bits > _MAX_SUM_BITS:
      raise ValueError(
          f'The secure sum of max_clients={max_clients} integers of scale_bits={scale_bits} '
          f'bits needs {sum_bits} bits, more than {_MAX_SUM_BITS}: lower scale_bits or '
          'max_clients.')
    if mode == 'log_d':
      raise ValueError(
          "mode='log_d' has no codebook, so its message has no integer form that sums; use "
          "mode='nearest' or 'stochastic'.")
    if mode == 'rotated':
      # Its decode S_b R_b^T c_hat is linear, but R_b is drawn per client from the key in the
      # message and S_b is a float32 per block: the integer form would be the rotated
      # coordinates themselves on a fixed grid, one integer per entry, as cross-polytope's.
      raise ValueError(
          "mode='rotated' has no compact secure form: every client rotates with its own key "
          'and sends float32 block scales, so its messages only sum after decoding. Use '
          "mode='nearest' with the cross-polytope codebook (the default).")
    kind = codebook or codebooks.default_kind(dim, codebook_size)
    # Checked before the Quantizer builds the codebook: a 4096-codeword k-means takes minutes.
    if (kind == 'spherical_kmeans' and isinstance(codebook_size, (int, np.integer)) and
        codebook_size >= _MAX_HISTOGRAM_K):
      raise ValueError(
          f'A {codebook_size}-codeword {kind} codebook would send every sub-vector as a '
          f'{codebook_size}-bin histogram: use codebook_size < {_MAX_HISTOGRAM_K}, or the '
          'cross-polytope codebook (codebook_size = 2 * dim), whose integers are as many as '
          'the value has entries.')
    # The Quantizer is used for its codebook and codeword choice (`assign`) only; its own scale
    # codes are not sent, so any valid scale_bits will do.
    self._quantizer = quantizer_lib.Quantizer(
        dim=dim, codebook_size=codebook_size, scale_bits=min(scale_bits, 16), mode=mode,
        codebook_seed=codebook_seed, codebook=codebook)
    # The Quantizer has checked that a cross-polytope codebook is [e0, -e0, e1, -e1, ...].
    self._cross_polytope = kind == 'cross_polytope'
    self._scale_bound = float(scale_bound)
    self._scale_bits = int(scale_bits)
    self._unbiased = unbiased
    self._threshold = int(threshold)
    self._max_clients = int(max_clients)
    self._secure = secure
    self._levels = levels
    self._integer_bits = integer_bits
    self._headroom_bits = headroom_bits
    # Integers whose sum (SecureSumFactory shifts them to [0, 2L] and adds up to max_clients)
    # fits in int32 are sent as int32; wider ones as int64, so no sum can wrap.
    self._integer_dtype = tf.int32 if sum_bits <= 31 else tf.int64
    q = self._quantizer
    if not self._cross_polytope and q.codebook_size > q.dim:
      warnings.warn(
          f'SecureHSQFactory: the {q.codebook_size}-codeword codebook is not the '
          f'cross-polytope, so each {q.dim}-entry sub-vector is sent as a '
          f'{q.codebook_size}-bin histogram: {q.codebook_size / q.dim:g}x as many integers '
          'as the value has entries. Use codebook_size = 2 * dim for a cross-polytope '
          'codebook (1x).', UserWarning, stacklevel=2)

  @property
  def quantizer(self) -> quantizer_lib.Quantizer:
    """The Quantizer whose codebook and codeword choice are used."""
    return self._quantizer

  @property
  def levels(self) -> int:
    """L: scale integers lie in [-L, L]."""
    return self._levels

  @property
  def step(self) -> float:
    """The scale grid's step B / L."""
    return self._scale_bound / self._levels

  @property
  def integer_dtype(self) -> tf.DType:
    """tf.int32, or tf.int64 where the sum of max_clients integers could overflow int32."""
    return self._integer_dtype

  def __repr__(self):
    return (f'SecureHSQFactory({self._quantizer!r}, scale_bound={self._scale_bound}, '
            f'scale_bits={self._scale_bits}, unbiased={self._unbiased}, '
            f'threshold={self._threshold}, max_clients={self._max_clients}, '
            f'secure={self._secure})')

  # --- The integer form of one tensor ------------------------------------------------------
  def integer_length(self, num_elements: int) -> int:
    """The length of the integer vector of a `num_elements`-entry tensor: N*d or N*K."""
    q = self._quantizer
    num_vectors = -(-num_elements // q.dim)
    return num_vectors * (q.dim if self._cross_polytope else q.codebook_size)

  def encode(self, x, seed) -> tf.Tensor:
    """The integer vector a client sends for a float tensor x.

    Args:
      x: float tensor of static shape, D entries.
      seed: shape-[2] integer tensor, as tf.random.stateless_* take.

    Returns:
      `integer_dtype` [integer_length(D)], every entry in [-L, L]; all zeros if x has a
      non-finite entry.
    """
    integers, finite = self._encode(x, seed)
    return tf.where(finite, integers, tf.zeros_like(integers))

  def _encode(self, x, seed):
    """(integer vector, bool []: it is well formed, i.e. x and all its scales are finite)."""
    q = self._quantizer
    x = tf.convert_to_tensor(x)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    k, s, _, finite = q.assign(x, seed)
    # A huge finite x can still overflow a projection to Inf or NaN.
    finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(s)))
    s = tf.where(tf.math.is_finite(s), s, tf.zeros_like(s))
    # |s| / step = |s| * L / B, in float64 and in this order: |s| * L is then exact (24 + 23
    # bits), so |s| = B, or any |s| with |s| * L / B an integer, lands exactly on its level.
    magnitude = tf.minimum(
        tf.abs(tf.cast(s, tf.float64)) * self._levels / self._scale_bound, self._levels)
    if self._unbiased:
      u = tf.random.stateless_uniform(
          tf.shape(magnitude), tf.random.experimental.stateless_fold_in(seed, _SCALE_STREAM),
          dtype=tf.float64)
      magnitude = tf.floor(magnitude + u)
    else:
      magnitude = tf.floor(magnitude)
    level = tf.cast(tf.clip_by_value(magnitude, 0.0, self._levels), self._integer_dtype)
    signed = tf.where(s < 0, -level, level)
    num_vectors = tf.shape(k, out_type=tf.int64)[0]
    rows = tf.range(num_vectors, dtype=tf.int64)
    k = tf.cast(k, tf.int64)
    if self._cross_polytope:
      # Codeword k is (-1)^k e_{k // 2}: its scale goes, signed, to that coordinate.
      position = rows * q.dim + k // 2
      # tf.equal, not ==: TFF traces in graph mode, where == on tensors compares identity.
      signed = tf.where(tf.equal(k % 2, 0), signed, -signed)
    else:
      position = rows * q.codebook_size + k
    integers = tf.scatter_nd(
        position[:, None], signed, [self.integer_length(x.shape.num_elements())])
    return integers, finite

  def decode(self, integer_sum, shape, dtype) -> tf.Tensor:
    """Decodes a sum of `encode` outputs (of any number of clients) to a tensor.

    Args:
      integer_sum: integer tensor [integer_length(D)], D the entries of `shape`.
      shape: the tensor's static shape.
      dtype: the tensor's float dtype.

    Returns:
      `dtype` tensor of `shape`: the sum of the clients' HSQ decodes q * step * c_k.
    """
    q = self._quantizer
    shape = tf.TensorShape(shape)
    num_elements = shape.num_elements()
    # float64: integer sums beyond 2^24 stay exact until the final cast.
    total = tf.cast(integer_sum, tf.float64) * self.step
    if not self._cross_polytope:
      histogram = tf.reshape(total, [-1, q.codebook_size])
      total = tf.matmul(histogram, tf.constant(q.codebook, tf.float64))
    flat = tf.reshape(total, [-1])[:num_elements]
    return tf.cast(tf.reshape(flat, shape), dtype)

  def bits_per_coordinate(self, value_type) -> float:
    """The measurement `bits_per_coordinate` of the process for `value_type` (see the class)."""
    factory_lib.check_value_type(value_type)
    leaves = _leaves(value_type)
    bits = 0
    for spec in leaves:
      n = spec.shape.num_elements()
      if self._compressed(spec):
        bits += self.integer_length(n) * (self._integer_bits + self._headroom_bits)
      else:
        bits += n * (_FLOAT_SECURE_BITS + self._headroom_bits)
    return bits / sum(spec.shape.num_elements() for spec in leaves)

  def _compressed(self, spec) -> bool:
    return spec.shape.num_elements() >= self._threshold

  # --- The process -------------------------------------------------------------------------
  def _sum_factory(self, upper, lower):
    if self._secure:
      return tff.aggregators.SecureSumFactory(
          upper_bound_threshold=upper, lower_bound_threshold=lower)
    return tff.aggregators.SumFactory()

  def create(self, value_type) -> tff.templates.AggregationProcess:
    """Builds the aggregation process for `value_type`.

    Args:
      value_type: a `tff.TensorType` or a (nested) `tff.StructType` of float tensors with
        fully defined shapes.

    Returns:
      A `tff.templates.AggregationProcess` whose `next` takes (state@SERVER,
      value_type@CLIENTS) and returns the sum at SERVER. State: OrderedDict(round=int64,
      inner=the inner sums' states).

    Raises:
      TypeError: if `value_type` is not a structure of float tensors with fully defined
        shapes; the message prints the type.
    """
    factory_lib.check_value_type(value_type)
    specs = tff.types.type_to_tf_tensor_specs(value_type)
    leaves = tf.nest.flatten(specs)
    for spec in leaves:
      if not spec.dtype.is_floating:
        raise TypeError(
            f'SecureHSQFactory sums float tensors only; got a {spec.dtype.name} tensor in '
            f'value_type {value_type}. Secure summation needs bounds for the integers it '
            'adds, which this factory knows only for its own: sum non-float tensors with '
            'their own tff.aggregators.SecureSumFactory.')
    compressed = [i for i, spec in enumerate(leaves) if self._compressed(spec)]
    small = [i for i, spec in enumerate(leaves) if not self._compressed(spec)]

    @tff.tensorflow.computation(value_type, _ROUND_TYPE)
    def encode(value, round_num):
      # As in HSQFactory: client-local entropy makes clients draw independently, the broadcast
      # round number makes seeds differ across rounds.
      entropy = tf.random.uniform([], minval=0, maxval=2**62, dtype=tf.int64)
      seed = tf.stack([round_num, entropy])
      flat = tf.nest.flatten(value)
      integers, finite = [], []
      for i in compressed:
        vector, ok = self._encode(flat[i], tf.random.experimental.stateless_fold_in(seed, i))
        integers.append(vector)
        finite.append(ok)
      # SecureSumFactory takes one dtype: float32. TFF rounds to a 32-bit grid over [-B, B]
      # anyway; float64 tensors lose about a digit (7-8 significant digits, not 8-9).
      floats = [tf.cast(flat[i], tf.float32) for i in small]
      finite.extend(tf.reduce_all(tf.math.is_finite(f)) for f in floats)
      ok = tf.reduce_all(tf.stack(finite))
      message = collections.OrderedDict()
      if integers:
        message['integers'] = [tf.where(ok, v, tf.zeros_like(v)) for v in integers]
      if floats:
        message['floats'] = [tf.where(ok, f, tf.zeros_like(f)) for f in floats]
      message['malformed'] = tf.cast(tf.logical_not(ok), tf.int32)
      return message

    message_type = encode.type_signature.result
    inner = collections.OrderedDict()
    if compressed:
      inner['integers'] = self._sum_factory(self._levels, -self._levels).create(
          message_type['integers'])
    if small:
      inner['floats'] = self._sum_factory(self._scale_bound, -self._scale_bound).create(
          message_type['floats'])
    inner['malformed'] = self._sum_factory(1, 0).create(message_type['malformed'])

    bits_per_coordinate = self.bits_per_coordinate(value_type)

    @tff.tensorflow.computation
    def initial_round():
      return tf.constant(0, tf.int64)

    @tff.federated_computation
    def init_fn():
      return tff.federated_zip(collections.OrderedDict(
          round=tff.federated_eval(initial_round, tff.SERVER),
          inner=collections.OrderedDict(
              (name, process.initialize()) for name, process in inner.items())))

    @tff.tensorflow.computation(_ROUND_TYPE)
    def next_round(round_num):
      return round_num + 1

    sums_type = collections.OrderedDict(
        (name, process.next.type_signature.result.result.member)
        for name, process in inner.items() if name != 'malformed')

    @tff.tensorflow.computation(tff.types.to_type(sums_type))
    def decode(sums):
      decoded = [None] * len(leaves)
      for i, integer_sum in zip(compressed, sums.get('integers', [])):
        decoded[i] = self.decode(integer_sum, leaves[i].shape, leaves[i].dtype)
      for i, float_sum in zip(small, sums.get('floats', [])):
        decoded[i] = tf.cast(float_sum, leaves[i].dtype)
      return tf.nest.pack_sequence_as(specs, decoded)

    @tff.tensorflow.computation
    def bit_counts():
      return collections.OrderedDict(
          bits_per_coordinate=tf.constant(bits_per_coordinate, tf.float32),
          compression_ratio=tf.constant(32.0 / bits_per_coordinate, tf.float32))

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      round_num = tff.federated_broadcast(state.round)
      messages = tff.federated_map(encode, (value, round_num))
      outputs = collections.OrderedDict(
          (name, process.next(state.inner[name], messages[name]))
          for name, process in inner.items())
      sums = tff.federated_zip(collections.OrderedDict(
          (name, output.result) for name, output in outputs.items() if name != 'malformed'))
      counts = tff.federated_eval(bit_counts, tff.SERVER)
      measurements = tff.federated_zip(collections.OrderedDict(
          bits_per_coordinate=counts.bits_per_coordinate,
          compression_ratio=counts.compression_ratio,
          malformed_messages=outputs['malformed'].result,
          secure_sum=collections.OrderedDict(
              (name, output.measurements) for name, output in outputs.items())))
      new_state = tff.federated_zip(collections.OrderedDict(
          round=tff.federated_map(next_round, state.round),
          inner=collections.OrderedDict(
              (name, output.state) for name, output in outputs.items())))
      return tff.templates.MeasuredProcessOutput(
          state=new_state, result=tff.federated_map(decode, sums), measurements=measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)


def _leaves(value_type):
  return tf.nest.flatten(tff.types.type_to_tf_tensor_specs(value_type))
