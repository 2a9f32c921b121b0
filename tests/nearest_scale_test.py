"""Tests of nearest mode's `nearest_scale='rescaled'` (the scale hsq_aggregator uses).

The rescaled encode sends the projection encode's indices and scale codes, and a per-tensor
maximum multiplied by c = ||x||^2 / <x_hat_p, x> (x_hat_p: the projection decode), so its decode
is exactly c x_hat_p: checked against c computed independently in NumPy. Random inputs use
NumPy seeds that are not codebook seeds.
"""

import numpy as np
import pytest
import tensorflow as tf

import adversarial
import tff_hsq
from tff_hsq import presets

SEED = tf.constant([3, 4], tf.int64)
NEAREST = ['high_fidelity', 'balanced', 'extreme']


def pair(name, **kwargs):
  config = dict(presets.get(name), **kwargs)
  return (tff_hsq.Quantizer(**config),
          tff_hsq.Quantizer(**dict(config, nearest_scale='rescaled')))


def decode(q, x):
  return q.decode(q.encode(tf.constant(x), SEED)).numpy().astype(np.float64)


@pytest.mark.parametrize('name', NEAREST)
@pytest.mark.parametrize('data', ['gaussian', 'sparse', 'heavy_tailed'])
def test_decode_is_the_projection_decode_times_the_norm_ratio(name, data):
  rng = np.random.default_rng(99)
  x = {
      'gaussian': rng.standard_normal(50_000),
      'sparse': rng.standard_normal(50_000) * (rng.random(50_000) < 0.01),
      'heavy_tailed': rng.standard_cauchy(50_000),
  }[data].astype(np.float32)
  projection, rescaled = pair(name)
  p = decode(projection, x)
  r = decode(rescaled, x)
  x64 = x.astype(np.float64)
  c = np.sum(x64**2) / np.dot(p, x64)
  assert c > 1.0  # the projection decode is shrunk
  # float32 rounding of the rescaled maximum and of the decode: a few ulp.
  np.testing.assert_allclose(r, c * p, rtol=2e-6, atol=1e-30)
  # Hence <x_hat, x> = ||x||^2: the decode's projection onto x is x.
  np.testing.assert_allclose(np.dot(r, x64), np.sum(x64**2), rtol=1e-5)


def test_messages_differ_only_in_the_maximum_scale():
  x = np.random.default_rng(5).standard_normal(20_000).astype(np.float32)
  projection, rescaled = pair('balanced')
  a = projection.encode(tf.constant(x), SEED).components
  b = rescaled.encode(tf.constant(x), SEED).components
  assert list(a) == list(b)
  np.testing.assert_array_equal(a['indices'].numpy(), b['indices'].numpy())
  np.testing.assert_array_equal(a['scale_codes'].numpy(), b['scale_codes'].numpy())
  assert b['max_scale'].numpy() > a['max_scale'].numpy()
  assert (rescaled.bits_per_coordinate(x.size) == projection.bits_per_coordinate(x.size))


def test_gaussian_nmse_is_projection_nmse_over_one_minus_it():
  # With c = 1 / (1 - e), ||c p - x||^2 = ||x||^2 (c - 1) exactly when <p, x> = ||p||^2; scale
  # rounding breaks that equality slightly, so the tolerance is 3%.
  x = np.random.default_rng(2718).standard_normal(2**18).astype(np.float32)
  projection, rescaled = pair('balanced')
  x64 = x.astype(np.float64)
  e_p = np.sum((decode(projection, x) - x64)**2) / np.sum(x64**2)
  e_r = np.sum((decode(rescaled, x) - x64)**2) / np.sum(x64**2)
  assert e_p == pytest.approx(0.52, rel=0.05)
  assert e_r == pytest.approx(e_p / (1 - e_p), rel=0.03)


ADVERSARIAL = dict(adversarial.inputs())


@pytest.mark.parametrize('name', sorted(ADVERSARIAL))
def test_adversarial_inputs_keep_the_identity(name):
  # Sparse, one-hot, codeword-aligned, 1e30, 1e-30, mixed scales: finite decodes whose
  # projection onto x is x.
  x = ADVERSARIAL[name].astype(np.float32)
  _, rescaled = pair('balanced')
  r = decode(rescaled, x)
  x64 = x.astype(np.float64)
  assert np.all(np.isfinite(r)), name
  np.testing.assert_allclose(np.dot(r, x64), np.sum(x64**2), rtol=1e-4)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_input_is_malformed_not_a_crash(bad):
  x = np.ones(4096, np.float32)
  x[7] = bad
  _, rescaled = pair('balanced')
  message = rescaled.encode(tf.constant(x), SEED)
  assert not rescaled.is_valid(message).numpy()
  np.testing.assert_array_equal(rescaled.decode(message).numpy(), np.zeros(4096))


def test_zeros_decode_to_zeros():
  _, rescaled = pair('balanced')
  np.testing.assert_array_equal(decode(rescaled, np.zeros(1000, np.float32)), np.zeros(1000))


def test_properties_and_configuration():
  projection, rescaled = pair('balanced')
  assert projection.norm_non_increasing and not rescaled.norm_non_increasing
  assert not rescaled.unbiased
  assert rescaled.nearest_scale == 'rescaled' and projection.nearest_scale == 'projection'
  assert "nearest_scale='rescaled'" in repr(rescaled) and projection != rescaled
  with pytest.raises(ValueError, match='nearest_scale must be one of'):
    tff_hsq.Quantizer(nearest_scale='unbiased')
  with pytest.raises(ValueError, match="nearest_scale='rescaled' is for nearest mode"):
    tff_hsq.Quantizer(mode='stochastic', nearest_scale='rescaled')


def test_hsq_aggregator_rescales_nearest_presets_only():
  def quantizer_of(aggregator):
    # With zeroing=False, hsq_aggregator is MeanFactory(value_sum_factory=HSQFactory(...)).
    hsq = aggregator._value_sum_factory  # pylint: disable=protected-access
    assert isinstance(hsq, tff_hsq.HSQFactory)
    return hsq.quantizer

  for name in NEAREST:
    assert quantizer_of(tff_hsq.learning.hsq_aggregator(name, zeroing=False)).nearest_scale == 'rescaled'
  assert quantizer_of(tff_hsq.learning.hsq_aggregator(
      'balanced', zeroing=False, nearest_scale='projection')).nearest_scale == 'projection'
  assert quantizer_of(tff_hsq.learning.hsq_aggregator('unbiased', zeroing=False)).mode == 'stochastic'
