"""Tests of tff_hsq.HSQFactory in TFF's real (C++) execution context."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.compiler import building_blocks

import tff_hsq
from tff_hsq import presets

_LARGE = 24000  # Above the default threshold of 20000: compressed.


def struct_type(**fields):
  return tff.types.to_type(collections.OrderedDict(
      (name, (dtype, shape)) for name, (dtype, shape) in fields.items()))


MIXED = struct_type(
    w=(np.float32, [120, 200]), b=(np.float32, [10]), n=(np.int32, [3]),
    h=(np.float16, [_LARGE]))


def mixed_value(rng):
  return collections.OrderedDict(
      w=rng.standard_normal((120, 200)).astype(np.float32),
      b=rng.standard_normal(10).astype(np.float32),
      n=rng.integers(-5, 5, 3).astype(np.int32),
      h=rng.standard_normal(_LARGE).astype(np.float16))


def nmse(x, x_hat):
  x = np.asarray(x, np.float64)
  return np.sum((np.asarray(x_hat, np.float64) - x)**2) / np.sum(x**2)


def aggregated_client_type(process):
  """The member type of the value handed to federated_aggregate: what clients send."""

  def walk(node):
    yield node
    for child in node.children():
      yield from walk(child)

  for node in walk(process.next.to_building_block()):
    if (isinstance(node, building_blocks.Call) and
        isinstance(node.function, building_blocks.Intrinsic) and
        node.function.uri == 'federated_aggregate'):
      return node.argument.type_signature[0].member
  raise AssertionError('no federated_aggregate in the process')


# --- Types -----------------------------------------------------------------------------------
def test_type_signature_and_compact_message():
  process = tff_hsq.HSQFactory(threshold=20000).create(MIXED)
  assert process.next.type_signature.parameter[1] == tff.FederatedType(MIXED, tff.CLIENTS)
  assert process.next.type_signature.result.result == tff.FederatedType(MIXED, tff.SERVER)
  assert process.next.type_signature.result.measurements.member == tff.types.to_type(
      collections.OrderedDict(bits_per_coordinate=np.float32, compression_ratio=np.float32,
                              malformed_messages=np.int32))
  # tf.nest order (sorted keys): b, h, n, w. w (24000 entries, 1500 sub-vectors) and h are
  # sent as uint8 indices, 6-bit codes in ceil(1500 * 6 / 32) = 282 words and one max; b and n
  # as they are. No float tensor of an original large size crosses to the server.
  compact = tff.types.to_type(collections.OrderedDict(
      indices=(np.uint8, [1500]), scale_codes=(np.uint32, [282]), max_scale=np.float32))
  expected = tff.types.to_type(collections.OrderedDict(message=[
      (np.float32, [10]), compact, (np.int32, [3]), compact]))
  assert aggregated_client_type(process).is_equivalent_to(expected)


@pytest.mark.parametrize('value_type', [
    tff.SequenceType(np.float32),
    tff.FederatedType(np.float32, tff.CLIENTS),
    tff.FunctionType(np.float32, np.float32),
    np.float32,
    'float32',
])
def test_non_tensor_value_type_raises_type_error_printing_it(value_type):
  with pytest.raises(TypeError, match='value_type'):
    tff_hsq.HSQFactory().create(value_type)


def test_unknown_shape_raises_type_error():
  with pytest.raises(TypeError, match='fully defined'):
    tff_hsq.HSQFactory().create(tff.TensorType(np.float32, [None]))


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(threshold=0), ValueError, 'threshold'),
    (dict(threshold=1.5), TypeError, 'threshold'),
    (dict(measure_distortion=1), TypeError, 'measure_distortion'),
    (dict(mode='rotated_typo'), ValueError, 'mode'),
])
def test_bad_configuration(kwargs, error, match):
  with pytest.raises(error, match=match):
    tff_hsq.HSQFactory(**kwargs)


# --- Values ----------------------------------------------------------------------------------
def test_small_and_integer_tensors_are_exact_and_large_within_nmse():
  process = tff_hsq.HSQFactory.balanced(measure_distortion=True).create(MIXED)
  rng = np.random.default_rng(21)
  values = [mixed_value(rng) for _ in range(4)]
  output = process.next(process.initialize(), values)
  total = {k: sum(v[k].astype(np.float64) for v in values) for k in values[0]}
  np.testing.assert_allclose(output.result['b'], total['b'], rtol=1e-6)
  np.testing.assert_array_equal(output.result['n'], total['n'])
  assert output.result['h'].dtype == np.float16
  # Four independent clients' nearest-mode errors add: the sum's NMSE is the per-client 0.52
  # (DESIGN.md; 0.03 is the quantizer test's tolerance, plus float16 input rounding).
  assert nmse(total['w'], output.result['w']) == pytest.approx(0.52, abs=0.04)
  assert nmse(total['h'], output.result['h']) == pytest.approx(0.52, abs=0.04)
  assert output.measurements['distortion'] == pytest.approx(0.52, abs=0.04)
  assert output.measurements['malformed_messages'] == 0
  assert output.state['round'] == 1


def test_measurements_equal_bits_counted_from_shapes():
  process = tff_hsq.HSQFactory.extreme().create(MIXED)
  output = process.next(process.initialize(), [mixed_value(np.random.default_rng(22))])
  # Independent count. extreme: d = 32, K = 1024 (10-bit indices packed in uint32 words),
  # n = 6. w and h: 24000 entries -> 750 sub-vectors -> ceil(7500 / 32) = 235 index words,
  # ceil(4500 / 32) = 141 code words, one float32 max: (235 + 141 + 1) * 32 bits each.
  # b: 10 float32, n: 3 int32, sent as they are.
  bits = 2 * (235 + 141 + 1) * 32 + 10 * 32 + 3 * 32
  entries = 2 * 24000 + 10 + 3
  assert output.measurements['bits_per_coordinate'] == pytest.approx(bits / entries, rel=1e-6)
  assert output.measurements['compression_ratio'] == pytest.approx(
      32 * entries / bits, rel=1e-6)


@pytest.mark.parametrize('name', sorted(presets.PRESETS))
def test_preset_bits_per_coordinate(name):
  value_type = tff.TensorType(np.float32, [2**20])
  factory = getattr(tff_hsq.HSQFactory, name)()
  process = factory.create(value_type)
  x = np.random.default_rng(23).standard_normal(2**20).astype(np.float32)
  output = process.next(process.initialize(), [x])
  assert output.measurements['bits_per_coordinate'] == pytest.approx(
      factory.quantizer.bits_per_coordinate(2**20), rel=1e-6)
  expected = {'high_fidelity': 4.0, 'balanced': 0.875, 'extreme': 0.5, 'unbiased': 2.0,
              'log_d': 64 / 2**20}[name]
  assert output.measurements['bits_per_coordinate'] == pytest.approx(expected, rel=1e-3)


def test_unbiased_error_of_sum_shrinks_like_one_over_n():
  # N clients send the same x. With independent draws the error of (sum / N) has expectation
  # NMSE_1 / N; with shared randomness it would stay NMSE_1. NMSE_1 is averaged over 4 rounds
  # of one client; over 2,500 sub-vectors each estimate has a relative sd of ~3-4%, so the
  # band [0.7, 1.4] for the ratio is wide of chance and far from the 16 of shared randomness.
  x = np.random.default_rng(24).standard_normal(_LARGE).astype(np.float32)
  process = tff_hsq.HSQFactory.unbiased().create(tff.TensorType(np.float32, [_LARGE]))
  state = process.initialize()
  single = []
  for _ in range(4):
    output = process.next(state, [x])
    state = output.state
    single.append(nmse(x, output.result))
  n = 16
  output = process.next(state, [x] * n)
  ratio = nmse(x, output.result / n) / (np.mean(single) / n)
  assert 0.7 < ratio < 1.4
  # And fresh randomness per round: two rounds of one client differ.
  assert single[0] != single[1]


# --- Bad clients -----------------------------------------------------------------------------
@pytest.mark.parametrize('field', ['w', 'b', 'h'])
def test_non_finite_client_is_dropped_and_counted(field):
  process = tff_hsq.HSQFactory.high_fidelity().create(MIXED)
  rng = np.random.default_rng(25)
  good = [mixed_value(rng) for _ in range(2)]
  bad = mixed_value(rng)
  bad[field].reshape(-1)[3] = np.nan
  output = process.next(process.initialize(), good + [bad])
  assert output.measurements['malformed_messages'] == 1
  for k in good[0]:
    assert np.all(np.isfinite(output.result[k].astype(np.float64)))
  np.testing.assert_array_equal(output.result['n'], good[0]['n'] + good[1]['n'])
  np.testing.assert_allclose(output.result['b'], good[0]['b'] + good[1]['b'], rtol=1e-6)
  total_w = good[0]['w'] + good[1]['w']
  assert nmse(total_w, output.result['w']) < 0.05  # high_fidelity: NMSE 0.03 per client


# --- Composition -----------------------------------------------------------------------------
def mean_setup():
  value_type = tff.TensorType(np.float32, [_LARGE])
  rng = np.random.default_rng(26)
  values = [rng.standard_normal(_LARGE).astype(np.float32) + 1.0 for _ in range(3)]
  return value_type, values


def test_weighted_mean():
  value_type, values = mean_setup()
  factory = tff.aggregators.MeanFactory(value_sum_factory=tff_hsq.HSQFactory.high_fidelity())
  process = factory.create(value_type, tff.TensorType(np.float32))
  weights = [1.0, 2.0, 5.0]
  output = process.next(process.initialize(), values, weights)
  expected = sum(w * v for w, v in zip(weights, values)) / sum(weights)
  assert nmse(expected, output.result) < 0.05
  assert output.measurements['mean_value']['bits_per_coordinate'] == pytest.approx(
      4.0, abs=0.01)


def test_unweighted_mean():
  value_type, values = mean_setup()
  factory = tff.aggregators.UnweightedMeanFactory(
      value_sum_factory=tff_hsq.HSQFactory.high_fidelity())
  process = factory.create(value_type)
  output = process.next(process.initialize(), values)
  assert nmse(np.mean(values, axis=0), output.result) < 0.05


@pytest.mark.parametrize('wrapper', ['zeroing', 'clipping'])
def test_robust_wrappers(wrapper):
  value_type, values = mean_setup()
  inner = tff.aggregators.UnweightedMeanFactory(
      value_sum_factory=tff_hsq.HSQFactory.high_fidelity())
  if wrapper == 'zeroing':
    # Norms are ~sqrt(2 * 24000) ~ 219: a bound of 1000 keeps them, and zeroes a 10^4 outlier.
    factory = tff.aggregators.zeroing_factory(1000.0, inner)
    values = values + [np.full(_LARGE, 1e4, np.float32)]
    expected = np.mean(values[:3], axis=0) * 3 / 4  # the zeroed client still counts as one
  else:
    factory = tff.aggregators.clipping_factory(100.0, inner)
    clipped = [v * min(1.0, 100.0 / np.linalg.norm(v)) for v in values]
    expected = np.mean(clipped, axis=0)
  process = factory.create(value_type)
  output = process.next(process.initialize(), values)
  assert nmse(expected, output.result) < 0.05


# --- reclip ----------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['unbiased', 'log_d', 'balanced'])
def test_reclip_bounds_each_decoded_contribution_by_its_input_norm(name):
  value_type = struct_type(w=(np.float32, [_LARGE]), b=(np.float32, [10]))
  plain = getattr(tff_hsq.HSQFactory, name)().create(value_type)
  guarded = getattr(tff_hsq.HSQFactory, name)(reclip=True).create(value_type)
  rng = np.random.default_rng(27)
  value = collections.OrderedDict(w=rng.standard_normal(_LARGE).astype(np.float32),
                                  b=rng.standard_normal(10).astype(np.float32))
  norm_w = np.linalg.norm(value['w'].astype(np.float64))
  unguarded = plain.next(plain.initialize(), [value])
  output = guarded.next(guarded.initialize(), [value])
  decoded_norm = np.linalg.norm(output.result['w'].astype(np.float64))
  assert decoded_norm <= norm_w
  np.testing.assert_array_equal(output.result['b'], value['b'])  # small tensors untouched
  # One float32 norm per client more than without reclip.
  assert (output.measurements['bits_per_coordinate'] -
          unguarded.measurements['bits_per_coordinate']) * (_LARGE + 10) == pytest.approx(
          32, abs=0.01)  # float32 measurements
  if name == 'balanced':
    # Nearest mode never lengthens a vector: nothing to scale, the result is unchanged.
    assert output.measurements['reclipped_messages'] == 0
    np.testing.assert_array_equal(output.result['w'], unguarded.result['w'])
  else:
    # The inflating modes decode longer vectors (measured: unbiased 2.1x, log_d ~200x); the
    # guard scales them to exactly the input's norm (up to its float32 rounding margin).
    assert np.linalg.norm(unguarded.result['w'].astype(np.float64)) > 1.5 * norm_w
    assert output.measurements['reclipped_messages'] == 1
    assert decoded_norm == pytest.approx(norm_w, rel=1e-6)


def test_reclip_drops_a_client_whose_norm_is_not_finite():
  value_type = tff.TensorType(np.float32, [_LARGE])
  process = tff_hsq.HSQFactory.unbiased(reclip=True).create(value_type)
  x = np.ones(_LARGE, np.float32)
  bad = x.copy()
  bad[5] = np.inf
  output = process.next(process.initialize(), [x, bad])
  assert output.measurements['malformed_messages'] == 1
  assert np.linalg.norm(output.result.astype(np.float64)) <= np.sqrt(_LARGE)
