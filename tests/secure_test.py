"""Tests of tff_hsq.secure.SecureHSQFactory in TFF's C++ execution context."""

import collections
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.compiler import building_blocks

from tff_hsq import codebooks
from tff_hsq.secure import SecureHSQFactory


# Secure sums need TFF's test context (see the secure_sum_context fixture in conftest.py).
pytestmark = pytest.mark.usefixtures('secure_sum_context')


def struct_type(**fields):
  return tff.types.to_type(collections.OrderedDict(
      (name, (dtype, shape)) for name, (dtype, shape) in fields.items()))


def walk(node):
  yield node
  for child in node.children():
    yield from walk(child)


def intrinsic_calls(process):
  """(uri, argument type) of every intrinsic call in the process's `next`."""
  return [(node.function.uri, node.argument.type_signature)
          for node in walk(process.next.to_building_block())
          if isinstance(node, building_blocks.Call) and
          isinstance(node.function, building_blocks.Intrinsic)]


def clipped(rng, shape, norm):
  """A Gaussian array of `shape` scaled to L2 norm `norm` (float32)."""
  x = rng.standard_normal(shape)
  return (x * norm / np.linalg.norm(x)).astype(np.float32)


def numpy_decode(x, codebook, bound, levels):
  """One client's decode, independently: nearest codeword per sub-vector, floored scale.

  x: float32 [D]; codebook: float32 [K, d]. Returns float64 [D]: q * step * c_k per
  sub-vector, q = sign(s) * floor(min(|s| * L / B, L)), s = <c_k, v>, k = argmax |<c, v>|.
  """
  d = codebook.shape[1]
  v = np.pad(x, (0, -x.size % d)).reshape(-1, d)
  projection = v @ codebook.T  # float32, as the encoder projects
  k = np.argmax(np.abs(projection), axis=1)
  s = projection[np.arange(len(k)), k].astype(np.float64)
  q = np.sign(s) * np.floor(np.minimum(np.abs(s) * levels / bound, levels))
  decoded = (q * (bound / levels))[:, None] * codebook[k].astype(np.float64)
  return decoded.reshape(-1)[:x.size]


# --- The protocol ----------------------------------------------------------------------------
def test_value_path_to_server_is_secure_sum_only():
  value_type = struct_type(w=(np.float32, [200]), b=(np.float32, [5]))
  process = SecureHSQFactory(threshold=100).create(value_type)
  assert process.next.type_signature.result.result == tff.FederatedType(value_type, tff.SERVER)
  measurements = process.next.type_signature.result.measurements.member
  assert tff.structure.name_list(measurements) == [
      'bits_per_coordinate', 'compression_ratio', 'malformed_messages', 'secure_sum']
  assert tff.structure.name_list(measurements.secure_sum) == ['integers', 'floats', 'malformed']
  calls = intrinsic_calls(process)
  uris = {uri for uri, _ in calls}
  assert 'federated_secure_sum_bitwidth' in uris
  # Nothing reaches the server through a plain aggregation.
  assert not uris & {'federated_aggregate', 'federated_sum', 'federated_mean',
                     'federated_weighted_mean', 'federated_collect'}
  # The integer message of w: 25 sub-vectors of d = 8, one int32 per entry (cross-polytope),
  # goes through a secure sum.
  integer_message = tff.FederatedType(tff.StructType([(None, tff.TensorType(np.int32, [200]))]),
                                      tff.CLIENTS)
  assert any(uri == 'federated_secure_sum_bitwidth' and arg[0].is_equivalent_to(integer_message)
             for uri, arg in calls)


def test_non_float_tensor_is_rejected_naming_bounds():
  with pytest.raises(TypeError, match='int32.*bounds'):
    SecureHSQFactory().create(struct_type(w=(np.float32, [10]), n=(np.int32, [3])))


@pytest.mark.parametrize('value_type', [
    tff.SequenceType(np.float32), tff.FunctionType(np.float32, np.float32), 'float32'])
def test_non_tensor_value_type_raises_type_error_printing_it(value_type):
  with pytest.raises(TypeError, match='value_type'):
    SecureHSQFactory().create(value_type)


# --- Values ----------------------------------------------------------------------------------
@pytest.mark.parametrize('dim,codebook_size', [(8, 16), (4, 256)])
def test_secure_sum_equals_plain_sum_and_numpy(dim, codebook_size):
  # Deterministic configuration: nearest codewords, scales floored. With 8 scale bits
  # (|s| * L / B < 127) a float32 rounding difference between TF's and NumPy's projection
  # moves |s| * L / B across a level only with chance ~1e-5 per sub-vector, so the
  # independent NumPy computation floors to the same levels.
  kwargs = dict(dim=dim, codebook_size=codebook_size, scale_bound=2.0, scale_bits=8,
                unbiased=False, threshold=64)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UserWarning)  # the histogram warning (tested below)
    secure = SecureHSQFactory(**kwargs)
    plain = SecureHSQFactory(secure=False, **kwargs)
  value_type = tff.TensorType(np.float32, [90])  # 90 entries: the last sub-vector is padded
  rng = np.random.default_rng(31)
  values = [clipped(rng, 90, 2.0 * r) for r in (1.0, 0.5, 0.1)]
  secure_process = secure.create(value_type)
  secure_out = secure_process.next(secure_process.initialize(), values)
  plain_process = plain.create(value_type)
  plain_out = plain_process.next(plain_process.initialize(), values)
  np.testing.assert_array_equal(secure_out.result, plain_out.result)
  codebook = secure.quantizer.codebook
  if dim == 8:
    np.testing.assert_array_equal(codebook, codebooks.cross_polytope(8))
  expected = sum(numpy_decode(x, codebook, 2.0, 127) for x in values)
  # atol for entries that cancel across clients to ~0, where rtol means nothing.
  np.testing.assert_allclose(secure_out.result, expected, rtol=1e-5, atol=1e-7)
  assert secure_out.measurements['malformed_messages'] == 0


def test_unbiased_scales_average_to_nearest_projection():
  # d = 8 cross-polytope, 4 scale bits: L = 7, step = B / 7 ~ 0.143 for B = 1. x has 4
  # sub-vectors with one dominant entry each, whose |s| / step has fractional part 0.4-0.6,
  # so a floored scale is off by >= 0.4 step. M = 100 identical clients draw independent
  # roundings; the mean's error per entry has sd <= step / (2 sqrt(M)) = step / 20, so the
  # tolerance step / 4 is 5 sd (any seed: the client entropy is not seeded). Clients sharing
  # their randomness would all round alike and miss by >= 0.4 step.
  x = np.zeros(32, np.float32)
  x[[1, 10, 20, 31]] = np.array([2.4, -3.5, 4.6, -1.5]) / 7.0
  x[[2, 12, 22, 30]] = 0.05  # smaller entries: not chosen, so decoded as zero
  step = 1.0 / 7
  projection = np.where(np.abs(x) > 0.1, x, 0.0)
  value_type = tff.TensorType(np.float32, [32])
  num_clients = 100
  process = SecureHSQFactory(scale_bits=4, threshold=32).create(value_type)
  output = process.next(process.initialize(), [x] * num_clients)
  mean = output.result / num_clients
  np.testing.assert_array_equal(mean[projection == 0], 0.0)
  np.testing.assert_allclose(mean, projection, rtol=0, atol=step / 4)
  floored = SecureHSQFactory(scale_bits=4, threshold=32, unbiased=False).create(value_type)
  biased = floored.next(floored.initialize(), [x]).result
  assert np.min(np.abs(biased - projection)[projection != 0]) > 0.39 * step


@pytest.mark.parametrize('codebook_size', [16, 256])
def test_integers_stay_within_bounds_at_extremes(codebook_size):
  bound, dim = 2.0, 8
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UserWarning)
    factory = SecureHSQFactory(dim=dim, codebook_size=codebook_size, scale_bound=bound,
                               threshold=64)
  levels = factory.levels
  rng = np.random.default_rng(32)
  one_hot = np.zeros(64, np.float32)
  one_hot[13] = bound
  inputs = collections.OrderedDict(
      at_bound=clipped(rng, 64, bound),
      far_above=clipped(rng, 64, 1e6 * bound),
      one_hot=one_hot,
      minus_one_hot=-one_hot,
      zeros=np.zeros(64, np.float32))
  for name, x in inputs.items():
    integers = factory.encode(x, tf.constant([7, 8], tf.int64)).numpy()
    assert integers.dtype == np.int32
    assert integers.shape == (8 * (dim if codebook_size == 2 * dim else codebook_size),)
    assert np.max(np.abs(integers)) <= levels, name
  # A scale at the bound lands exactly on the top level (for the cross-polytope at e_13).
  if codebook_size == 16:
    top = factory.encode(one_hot, tf.constant([7, 8], tf.int64)).numpy()
    assert top[13] == levels and np.count_nonzero(top) == 1
    assert factory.encode(-one_hot, tf.constant([7, 8], tf.int64)).numpy()[13] == -levels
  # Far above the bound, the largest scale is clipped to the top level.
  far = factory.encode(inputs['far_above'], tf.constant([7, 8], tf.int64)).numpy()
  assert np.max(np.abs(far)) == levels
  np.testing.assert_array_equal(factory.encode(inputs['zeros'], tf.constant([7, 8])), 0)

  process = factory.create(tff.TensorType(np.float32, [64]))
  output = process.next(process.initialize(), list(inputs.values()))
  assert np.all(np.isfinite(output.result))
  assert output.measurements['secure_sum']['integers']['secure_upper_clipped_count'] == 0
  assert output.measurements['secure_sum']['integers']['secure_lower_clipped_count'] == 0
  zero = process.next(output.state, [inputs['zeros']] * 2)
  np.testing.assert_array_equal(zero.result, 0.0)
  assert zero.state['round'] == 2


def test_non_finite_client_is_zeroed_and_counted():
  value_type = struct_type(w=(np.float32, [64]), b=(np.float32, [4]))
  process = SecureHSQFactory(unbiased=False, threshold=64).create(value_type)
  rng = np.random.default_rng(33)

  def value():
    return collections.OrderedDict(w=clipped(rng, 64, 1.0), b=clipped(rng, 4, 0.5))

  good = [value(), value()]
  reference = process.next(process.initialize(), good)
  for field in ('w', 'b'):
    bad = value()
    bad[field][1] = np.nan
    output = process.next(process.initialize(), [good[0], bad, good[1]])
    assert output.measurements['malformed_messages'] == 1
    np.testing.assert_array_equal(output.result['w'], reference.result['w'])
    np.testing.assert_array_equal(output.result['b'], reference.result['b'])
    assert reference.measurements['malformed_messages'] == 0
  # The float secure sum quantizes b to 32 bits over [-B, B]: exact to ~1e-9 * B.
  np.testing.assert_allclose(reference.result['b'], good[0]['b'] + good[1]['b'], atol=1e-6)


# --- Configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs,error,match', [
    (dict(scale_bits=1), ValueError, 'scale_bits'),
    (dict(scale_bits=25), ValueError, 'scale_bits'),
    (dict(scale_bits=8.0), TypeError, 'scale_bits'),
    (dict(scale_bits=24, max_clients=2**39 + 1), ValueError,
     'lower scale_bits or max_clients'),
    (dict(mode='log_d'), ValueError, 'log_d'),
    (dict(mode='rotated'), ValueError, "mode='rotated' has no compact secure form"),
    (dict(mode='typo'), ValueError, 'mode'),
    (dict(scale_bound=0.0), ValueError, 'scale_bound'),
    (dict(scale_bound=float('inf')), ValueError, 'scale_bound'),
    (dict(scale_bound='1'), TypeError, 'scale_bound'),
    (dict(threshold=0), ValueError, 'threshold'),
    (dict(max_clients=0), ValueError, 'max_clients'),
    (dict(unbiased=1), TypeError, 'unbiased'),
    (dict(secure='yes'), TypeError, 'secure'),
    (dict(dim=8, codebook_size=4096), ValueError, 'histogram.*cross-polytope'),
    (dict(dim=8, codebook_size=24), ValueError, 'power of two'),
])
def test_bad_configuration(kwargs, error, match):
  with pytest.raises(error, match=match):
    SecureHSQFactory(**kwargs)


def test_wide_sums_are_sent_as_int64():
  # 24 + ceil(log2(2^38)) = 62 bits: the widest sum that fits; 21 + 10 = 31 still fits int32.
  assert SecureHSQFactory(scale_bits=24, max_clients=2**38).integer_dtype == tf.int64
  assert SecureHSQFactory(scale_bits=21, max_clients=1024).integer_dtype == tf.int32
  # 24 + 10 = 34 bits: int64 through the secure sum, still exact. The cross-polytope's scales
  # are the entries themselves, so NumPy reproduces them bit for bit.
  factory = SecureHSQFactory(scale_bits=24, max_clients=1024, unbiased=False, threshold=16)
  assert factory.integer_dtype == tf.int64
  process = factory.create(tff.TensorType(np.float32, [16]))
  rng = np.random.default_rng(35)
  values = [clipped(rng, 16, 1.0) for _ in range(2)]
  output = process.next(process.initialize(), values)
  expected = sum(numpy_decode(x, codebooks.cross_polytope(8), 1.0, 2**23 - 1) for x in values)
  np.testing.assert_allclose(output.result, expected, rtol=1e-6)


@pytest.mark.parametrize('threshold', [64, 1000])
def test_mixed_float_dtypes_keep_their_dtype(threshold):
  # threshold 64: h is compressed, b is not; 1000: both are small floats, no integer sum.
  value_type = struct_type(h=(np.float16, [64]), b=(np.float64, [3]))
  process = SecureHSQFactory(unbiased=False, threshold=threshold).create(value_type)
  assert (tff.structure.name_list(
      process.next.type_signature.result.measurements.member.secure_sum) ==
          (['integers', 'floats', 'malformed'] if threshold == 64 else ['floats', 'malformed']))
  rng = np.random.default_rng(36)
  values = [collections.OrderedDict(h=clipped(rng, 64, 1.0).astype(np.float16),
                                    b=rng.uniform(-0.3, 0.3, 3)) for _ in range(2)]
  output = process.next(process.initialize(), values)
  assert output.result['h'].dtype == np.float16 and output.result['b'].dtype == np.float64
  np.testing.assert_allclose(output.result['b'], values[0]['b'] + values[1]['b'], atol=1e-6)
  total_h = values[0]['h'].astype(np.float64) + values[1]['h']
  if threshold == 64:
    expected = sum(numpy_decode(v['h'].astype(np.float32), codebooks.cross_polytope(8), 1.0,
                                32767) for v in values)
    np.testing.assert_allclose(output.result['h'], expected, rtol=1e-3, atol=1e-4)
  else:
    np.testing.assert_allclose(output.result['h'], total_h, rtol=1e-3, atol=1e-4)


def test_histogram_codebook_warns_with_its_factor():
  with pytest.warns(UserWarning, match='256-bin histogram: 64x'):
    SecureHSQFactory(dim=4, codebook_size=256)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # cross-polytope and orthonormal (K = d): 1x, no warning
    SecureHSQFactory(dim=8, codebook_size=16)
    SecureHSQFactory(dim=8, codebook_size=8)


# --- Composition and measurements ------------------------------------------------------------
def test_weighted_mean_with_secure_weights():
  # Each sub-vector of d = 8 has one nonzero entry, which the cross-polytope represents
  # exactly: the only error is the scale rounding, < step per client and sub-vector, so the
  # weighted mean is off by < sum(w) * step / sum(w) = step per entry. The weighted values
  # (norm <= 5 x 1) stay inside B = 8. The weight sum is quantized to 32 bits over
  # [0, 2^20 - 1]: a relative error ~3e-5 on the sum 8.
  bound = 8.0
  value_sum = SecureHSQFactory(scale_bound=bound, threshold=64)
  factory = tff.aggregators.MeanFactory(
      value_sum_factory=value_sum,
      weight_sum_factory=tff.aggregators.SecureSumFactory(
          upper_bound_threshold=float(2**20 - 1), lower_bound_threshold=0.0))
  process = factory.create(tff.TensorType(np.float32, [64]), tff.TensorType(np.float32))
  rng = np.random.default_rng(34)
  values = []
  for _ in range(3):
    x = np.zeros(64, np.float32)
    x[np.arange(8) * 8 + rng.integers(0, 8, 8)] = rng.uniform(-1, 1, 8) / np.sqrt(8)
    values.append(x)
  weights = [1.0, 2.0, 5.0]
  output = process.next(process.initialize(), values, weights)
  expected = sum(w * v for w, v in zip(weights, values)) / sum(weights)
  step = value_sum.step
  np.testing.assert_allclose(output.result, expected, rtol=1e-4, atol=step)
  assert np.max(np.abs(output.result - expected)) > 0  # really quantized
  assert output.measurements['mean_value']['malformed_messages'] == 0


def test_bits_per_coordinate_counted_from_shapes():
  value_type = struct_type(w=(np.float32, [100]), b=(np.float32, [10]))
  factory = SecureHSQFactory(threshold=50)  # d = 8, K = 16, 16 scale bits, 1000 clients
  process = factory.create(value_type)
  output = process.next(process.initialize(), [
      collections.OrderedDict(w=np.zeros(100, np.float32), b=np.zeros(10, np.float32))])
  # w: 100 entries -> 13 sub-vectors -> 104 integers of ceil(log2(2 * 32767 + 1)) = 16 bits;
  # b: 10 floats, which TFF's float secure sum quantizes to 32 bits; plus ceil(log2(1000))
  # = 10 bits of headroom for every one of them.
  bits = 104 * (16 + 10) + 10 * (32 + 10)
  assert output.measurements['bits_per_coordinate'] == pytest.approx(bits / 110, rel=1e-6)
  assert output.measurements['compression_ratio'] == pytest.approx(32 * 110 / bits, rel=1e-6)
  # A histogram codebook, d = 4, K = 256, 8 scale bits, 100 clients: w -> 25 sub-vectors x
  # 256 bins of 8 + 7 bits (the same function gives the measurement).
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UserWarning)
    histogram = SecureHSQFactory(dim=4, codebook_size=256, scale_bits=8, max_clients=100,
                                 threshold=50)
  assert histogram.bits_per_coordinate(value_type) == pytest.approx(
      (25 * 256 * (8 + 7) + 10 * (32 + 7)) / 110)
