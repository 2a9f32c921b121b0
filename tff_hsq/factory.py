"""HSQFactory: Hyper-Sphere Quantization as a `tff.aggregators` factory.

One round of the process `HSQFactory(...).create(value_type)` builds:

  state@SERVER --map--> round number --broadcast--> CLIENTS
  value@CLIENTS --map(encode)--> compact message@CLIENTS
  messages --federated_aggregate(accumulate = decode + add, merge = add)--> sum@SERVER
  state --map(round + 1)--> new state@SERVER

Clients encode every float tensor of at least `threshold` entries with `tff_hsq.Quantizer`; the
value that crosses from CLIENTS to SERVER is the message (uint8 / uint32 indices, packed uint32
scale codes, one float32 per tensor), never a float tensor of the original size. Smaller tensors
and non-float tensors are sent as they are and summed exactly. The server decodes each client's
message inside the accumulate step, as TFF's `EncodedSumFactory` does, so partial sums merge
and the aggregation can run hierarchically.

A client whose message is malformed (a non-finite scale, an out-of-range index) or whose
uncompressed float tensors are not finite contributes zero to every tensor of the sum and is
counted in the `malformed_messages` measurement: one bad client never crashes a round nor
turns the sum into NaN.

With `reclip=True` each client also sends the L2 norm of its compressed tensors (one float32,
rounded down), and the server scales each decoded contribution down to at most that norm
before adding it. No client's decoded contribution is then longer than its input, in every
mode: the property DP's clip bound rests on (`tff_hsq.learning.dp_hsq_aggregator`).
"""

import collections
import math
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_hsq import presets
from tff_hsq import quantizer as quantizer_lib

_ROUND_TYPE = tff.TensorType(np.int64)
# Machine epsilon of each float dtype a tensor may have (the spacing of floats just above 1).
_EPSILON = {tf.float16: 2.0**-10, tf.bfloat16: 2.0**-7, tf.float32: 2.0**-23, tf.float64: 2.0**-52}


class HSQFactory(tff.aggregators.UnweightedAggregationFactory):
  """Sums client values placed at CLIENTS, each HSQ-encoded on its client.

  Measurements of the created process (an OrderedDict at SERVER):
    bits_per_coordinate: float32, bits of the message a client sends (every tensor counted,
      uncompressed ones included) divided by the number of entries of the value.
    compression_ratio: float32, 32 x entries / message bits (against sending float32).
    malformed_messages: int32, clients of this round whose contribution was dropped as zero.
    reclipped_messages: int32, only with `reclip=True`: clients whose decoded contribution
      was longer than their input and was scaled down to its norm.
    distortion: float32, only with `measure_distortion=True`: the mean over clients of the
      client's NMSE ||decode(encode(x)) - x||^2 / ||x||^2 over its compressed tensors. Each
      client then computes its own decode and sends this one extra float32, which the bit
      counts above do not include (it is a diagnostic, not part of the protocol).
  """

  def __init__(self,
               dim: int = 16,
               codebook_size: int = 256,
               scale_bits: int = 6,
               mode: str = 'nearest',
               threshold: int = 20000,
               codebook_seed: int = 0,
               measure_distortion: bool = False,
               codebook: Optional[str] = None,
               reclip: bool = False,
               rotated_scale: str = 'unbiased',
               block_size: int = quantizer_lib.DEFAULT_BLOCK,
               nearest_scale: str = 'projection'):
    """Configures the factory; see `tff_hsq.Quantizer` for the quantizer's arguments.

    Args:
      dim: sub-vector length d.
      codebook_size: number of codewords K.
      scale_bits: bits per scale code n.
      mode: 'nearest', 'stochastic', 'log_d' or 'rotated'.
      threshold: float tensors with at least this many entries are HSQ-encoded; smaller ones
        (biases, norms) are sent uncompressed and summed exactly. >= 1.
      codebook_seed: seed of the codebook, shared by clients and server.
      measure_distortion: also report the clients' mean NMSE (costs a decode per client).
      codebook: codebook kind (see `tff_hsq.Quantizer`).
      reclip: bound every client's decoded contribution by the norm of its input (one extra
        float32 per client, counted in the bits): needed inside differential privacy by the
        modes that can increase a norm (stochastic ~3.3x, log_d, rotated with the unbiased
        scale); harmless for nearest.
      rotated_scale: rotated mode only: 'unbiased' or 'projection' (see `tff_hsq.Quantizer`).
      block_size: rotated mode only: the rotation block length, a power of two.
      nearest_scale: nearest mode only: 'projection' (the paper's; never increases a norm) or
        'rescaled' (removes the projection's shrinkage; what `hsq_aggregator` uses).

    Raises:
      ValueError, TypeError: for an argument out of range, naming it.
    """
    if not isinstance(threshold, (int, np.integer)) or isinstance(threshold, bool):
      raise TypeError(f'threshold must be an int; got {threshold!r}.')
    if threshold < 1:
      raise ValueError(f'threshold must be >= 1; got {threshold}.')
    for name, flag in (('measure_distortion', measure_distortion), ('reclip', reclip)):
      if not isinstance(flag, bool):
        raise TypeError(f'{name} must be a bool; got {flag!r}.')
    self._quantizer = quantizer_lib.Quantizer(
        dim=dim, codebook_size=codebook_size, scale_bits=scale_bits, mode=mode,
        codebook_seed=codebook_seed, codebook=codebook, rotated_scale=rotated_scale,
        block_size=block_size, nearest_scale=nearest_scale)
    self._threshold = int(threshold)
    self._measure_distortion = measure_distortion
    self._reclip = reclip

  @property
  def quantizer(self) -> quantizer_lib.Quantizer:
    return self._quantizer

  @property
  def threshold(self) -> int:
    return self._threshold

  @property
  def reclip(self) -> bool:
    return self._reclip

  def __repr__(self):
    return (f'HSQFactory({self._quantizer!r}, threshold={self._threshold}, '
            f'measure_distortion={self._measure_distortion}, reclip={self._reclip})')

  # --- Presets ----------------------------------------------------------------------------
  @classmethod
  def _preset(cls, name, **kwargs):
    return cls(**presets.get(name), **kwargs)

  @classmethod
  def high_fidelity(cls, **kwargs) -> 'HSQFactory':
    """d = 4, K = 256, n = 8, nearest: 4.0 bits/coordinate (8x), NMSE 0.03. Near-lossless.

    Args:
      **kwargs: `threshold`, `codebook_seed`, `measure_distortion`, `reclip`.
    """
    return cls._preset('high_fidelity', **kwargs)

  @classmethod
  def balanced(cls, **kwargs) -> 'HSQFactory':
    """The paper's d = 16, K = 256, n = 6, nearest: 0.875 bits/coordinate (36x), NMSE 0.52.

    Biased but norm-non-increasing. Args: as `high_fidelity`.
    """
    return cls._preset('balanced', **kwargs)

  @classmethod
  def extreme(cls, **kwargs) -> 'HSQFactory':
    """d = 32, K = 1024, n = 6, nearest: 0.5 bits/coordinate (64x), NMSE 0.68.

    Args: as `high_fidelity`.
    """
    return cls._preset('extreme', **kwargs)

  @classmethod
  def unbiased(cls, **kwargs) -> 'HSQFactory':
    """d = 8, K = 256, n = 8, stochastic: 2.0 bits/coordinate (16x), NMSE 4.4 per client.

    Unbiased: the error of a sum of N clients' updates is ~4.4 / N of its energy when the
    clients agree. Args: as `high_fidelity`.
    """
    return cls._preset('unbiased', **kwargs)

  @classmethod
  def log_d(cls, **kwargs) -> 'HSQFactory':
    """One uint32 index and one float32 scale per tensor: 64 bits per tensor, unbiased.

    The far end of HSQ's trade-off: NMSE ~ 2P/pi per client for a tensor padded to P entries,
    useful only averaged over very many clients. Args: as `high_fidelity`.
    """
    return cls._preset('log_d', **kwargs)

  @classmethod
  def rotated(cls, scale: str = 'unbiased', bits: float = 1.0, block_size: int = 2**14,
              **kwargs) -> 'HSQFactory':
    """Rotated HSQ (beyond the paper): Hadamard-rotated blocks, one float32 scale per block.

    bits = 1.0: d = 8, K = 256 (NMSE ~0.48 unbiased on Gaussian data, DRIVE's 1-bit 0.57);
    0.75: d = 16, K = 4096; 0.5: d = 16, K = 256. Plus 32 bits per 2^14-entry block and a
    64-bit rotation key per tensor.

    Args:
      scale: 'unbiased' (DRIVE-style, unbiased over the rotation; can increase a norm, so
        DP needs `reclip=True`) or 'projection' (least squares: biased, never increases a norm).
      bits: 1.0, 0.75 or 0.5 bits per coordinate (the presets 'rotated',
        'rotated_three_quarters', 'rotated_half').
      block_size: the rotation block length, a power of two.
      **kwargs: `threshold`, `codebook_seed`, `measure_distortion`, `reclip`, `codebook`.
    """
    names = {1.0: 'rotated', 0.75: 'rotated_three_quarters', 0.5: 'rotated_half'}
    if bits not in names:
      raise ValueError(f'bits must be one of {sorted(names)}; got {bits!r}.')
    return cls._preset(names[bits], rotated_scale=scale, block_size=block_size, **kwargs)

  # --- The process ------------------------------------------------------------------------
  def create(self, value_type) -> tff.templates.AggregationProcess:
    """Builds the aggregation process for `value_type`.

    Args:
      value_type: a `tff.TensorType` or a (nested) `tff.StructType` of them, with fully
        defined shapes.

    Returns:
      A `tff.templates.AggregationProcess` whose `next` takes (state@SERVER,
      value_type@CLIENTS) and returns the sum at SERVER.

    Raises:
      TypeError: if `value_type` is not a tensor or structure of tensors with fully defined
        shapes; the message prints the type.
    """
    check_value_type(value_type)
    specs = tff.types.type_to_tf_tensor_specs(value_type)
    leaves = tf.nest.flatten(specs)
    # One quantizer (or None: sent as is) per tensor, in tf.nest.flatten order.
    quantizers = [
        self._quantizer if _compressed(spec, self._threshold) else None for spec in leaves
    ]
    measure_distortion = self._measure_distortion
    reclip = self._reclip
    compressed_dtypes = [spec.dtype for spec, q in zip(leaves, quantizers) if q is not None]
    # With reclip, a decoded contribution is scaled when it exceeds (1 - margin) x the sent
    # norm, to that bound: the cast back to a dtype of machine epsilon eps grows entries by
    # at most eps / 2, so a margin of 2 eps keeps the result strictly within the sent norm.
    margin = 2 * max([_EPSILON[d] for d in compressed_dtypes], default=0.0)

    @tff.tensorflow.computation
    def initial_state():
      return collections.OrderedDict(round=tf.constant(0, tf.int64))

    @tff.federated_computation
    def init_fn():
      return tff.federated_eval(initial_state, tff.SERVER)

    state_type = init_fn.type_signature.result.member

    @tff.tensorflow.computation(state_type)
    def round_of(state):
      return state['round']

    @tff.tensorflow.computation(state_type)
    def next_state(state):
      return collections.OrderedDict(round=state['round'] + 1)

    @tff.tensorflow.computation(value_type, _ROUND_TYPE)
    def encode(value, round_num):
      # Clients must draw independently (their errors then average out in the sum), and a
      # client has no id here: a stateful draw gives each client its own entropy, combined
      # with the broadcast round number so that no seed is reused across rounds.
      entropy = tf.random.uniform([], minval=0, maxval=2**62, dtype=tf.int64)
      seed = tf.stack([round_num, entropy])
      sent = []
      errors, energies = [], []
      squares = []
      for i, (x, q) in enumerate(zip(tf.nest.flatten(value), quantizers)):
        if q is None:
          sent.append(x)
          continue
        message = q.encode(x, tf.random.experimental.stateless_fold_in(seed, i))
        sent.append(message.components)
        if reclip:
          squares.append(tf.reduce_sum(tf.square(tf.cast(x, tf.float64))))
        if measure_distortion:
          x64 = tf.cast(x, tf.float64)
          errors.append(tf.reduce_sum(tf.square(tf.cast(q.decode(message), tf.float64) - x64)))
          energies.append(tf.reduce_sum(tf.square(x64)))
      client = collections.OrderedDict(message=sent)
      if reclip:
        # Rounded down to float32 so that the bound never exceeds the true norm.
        norm = tf.cast(tf.sqrt(tf.add_n(squares or [tf.constant(0, tf.float64)])), tf.float32)
        client['norm'] = tf.math.nextafter(norm, tf.zeros_like(norm))
      if measure_distortion:
        client['distortion'] = tf.cast(
            tf.math.divide_no_nan(tf.add_n(errors or [tf.constant(0, tf.float64)]),
                                  tf.add_n(energies or [tf.constant(0, tf.float64)])),
            tf.float32)
      return client

    client_type = encode.type_signature.result
    # Everything a client sends counts, except the diagnostic distortion.
    sent_specs = tff.types.type_to_tf_tensor_specs(client_type)
    message_bits = quantizer_lib.message_bits(
        [spec for name, spec in sent_specs.items() if name != 'distortion'])
    num_elements = sum(spec.shape.num_elements() for spec in leaves)

    def decode_client(message):
      """(flat list of decoded tensors, bool: the client's message is well formed)."""
      decoded, valid = [], []
      for spec, q, part in zip(leaves, quantizers, message):
        if q is None:
          decoded.append(part)
          if spec.dtype.is_floating:
            valid.append(tf.reduce_all(tf.math.is_finite(part)))
        else:
          encoded = quantizer_lib.Message(part, spec.shape, spec.dtype)
          decoded.append(q.decode(encoded))
          valid.append(q.is_valid(encoded))
      return decoded, tf.reduce_all(valid) if valid else tf.constant(True)

    def bound_norm(decoded, norm):
      """Scales the decoded compressed tensors jointly to a norm <= `norm`; (tensors, scaled?)."""
      norm = tf.cast(norm, tf.float64)
      squares = [tf.reduce_sum(tf.square(tf.cast(x, tf.float64)))
                 for x, q in zip(decoded, quantizers) if q is not None]
      decoded_norm = tf.sqrt(tf.add_n(squares or [tf.constant(0, tf.float64)]))
      limit = norm * (1.0 - margin)
      scaled = decoded_norm > limit
      factor = tf.where(scaled, tf.math.divide_no_nan(limit, decoded_norm), 1.0)
      bounded = [
          tf.cast(tf.cast(x, tf.float64) * factor, x.dtype) if q is not None else x
          for x, q in zip(decoded, quantizers)
      ]
      return bounded, scaled

    @tff.tensorflow.computation
    def zero():
      return collections.OrderedDict(
          sum=[tf.zeros(spec.shape, spec.dtype) for spec in leaves],
          malformed=tf.constant(0, tf.int32),
          reclipped=tf.constant(0, tf.int32),
          distortion=tf.constant(0.0, tf.float64),
          clients=tf.constant(0, tf.int32))

    accumulator_type = zero.type_signature.result

    @tff.tensorflow.computation(accumulator_type, client_type)
    def accumulate(acc, client):
      decoded, valid = decode_client(client['message'])
      scaled = tf.constant(False)
      if reclip:
        norm = client['norm']
        valid = tf.logical_and(valid, tf.logical_and(tf.math.is_finite(norm), norm >= 0.0))
        decoded, scaled = bound_norm(decoded, tf.where(valid, norm, 0.0))
      contribution = [tf.where(valid, x, tf.zeros_like(x)) for x in decoded]
      distortion = (tf.cast(client['distortion'], tf.float64) if measure_distortion
                    else tf.constant(0.0, tf.float64))
      return collections.OrderedDict(
          sum=[a + c for a, c in zip(acc['sum'], contribution)],
          malformed=acc['malformed'] + tf.cast(tf.logical_not(valid), tf.int32),
          reclipped=acc['reclipped'] + tf.cast(tf.logical_and(valid, scaled), tf.int32),
          distortion=acc['distortion'] + tf.where(valid, distortion, tf.zeros_like(distortion)),
          clients=acc['clients'] + tf.cast(valid, tf.int32))

    @tff.tensorflow.computation(accumulator_type, accumulator_type)
    def merge(a, b):
      return tf.nest.map_structure(tf.add, a, b)

    @tff.tensorflow.computation(accumulator_type)
    def report(acc):
      measurements = collections.OrderedDict(
          bits_per_coordinate=tf.constant(message_bits / num_elements, tf.float32),
          compression_ratio=tf.constant(32.0 * num_elements / message_bits, tf.float32),
          malformed_messages=acc['malformed'])
      if reclip:
        measurements['reclipped_messages'] = acc['reclipped']
      if measure_distortion:
        measurements['distortion'] = tf.cast(
            tf.math.divide_no_nan(acc['distortion'], tf.cast(acc['clients'], tf.float64)),
            tf.float32)
      return collections.OrderedDict(
          sum=tf.nest.pack_sequence_as(specs, acc['sum']), measurements=measurements)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      round_num = tff.federated_broadcast(tff.federated_map(round_of, state))
      messages = tff.federated_map(encode, (value, round_num))
      aggregate = tff.federated_aggregate(messages, zero(), accumulate, merge, report)
      return tff.templates.MeasuredProcessOutput(
          state=tff.federated_map(next_state, state),
          result=aggregate.sum,
          measurements=aggregate.measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)


def _compressed(spec: tf.TensorSpec, threshold: int) -> bool:
  return spec.dtype.is_floating and spec.shape.num_elements() >= threshold


def check_value_type(value_type):
  """TypeError, printing the type, unless value_type is a structure of fixed-shape tensors."""
  if not (isinstance(value_type, (tff.TensorType, tff.StructType)) and
          tff.types.is_structure_of_tensors(value_type)):
    raise TypeError(
        'HSQFactory aggregates a tff.TensorType or a structure of them; got value_type '
        f'{value_type!r} ({type(value_type).__name__}).')
  for spec in tf.nest.flatten(tff.types.type_to_tf_tensor_specs(value_type)):
    if not spec.shape.is_fully_defined():
      raise TypeError(
          f'HSQFactory needs fully defined tensor shapes; got {spec.shape} in value_type '
          f'{value_type}.')
