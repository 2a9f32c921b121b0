"""Tests of the rotated mode of tff_hsq.Quantizer (issue 7) and its presets.

Random inputs use NumPy seeds that are not codebook seeds; statistical tolerances are stated
next to each assertion.
"""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

import adversarial
import tff_hsq
from tff_hsq import codebooks
from tff_hsq import presets

SEED = tf.constant([7, 11], tf.int64)


def rotated(**kwargs):
  config = dict(dim=8, codebook_size=256, mode='rotated')
  config.update(kwargs)
  return tff_hsq.Quantizer(**config)


def encode_fn(q):
  return tf.function(lambda x, seed: q.encode(x, seed).components, autograph=False)


def decode(q, components, x):
  return q.decode(tff_hsq.Message(components, x.shape, x.dtype)).numpy()


def nmse(x, x_hat):
  x = np.asarray(x, np.float64)
  return np.sum((np.asarray(x_hat, np.float64) - x)**2) / np.sum(x**2)


# --- Unbiasedness ----------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['gaussian', 'laplace'])
def test_unbiased_scale_mean_of_decodes_converges_like_one_over_m(name):
  # E||mean_M - x||^2 = ||bias||^2 + E||x_hat - x||^2 / M. Over M = 200 seeds the ratio
  # (error of the mean) / (single-decode error / M) is near 1 when unbiased; x has 4096
  # entries in 4 blocks of 1024, so the ratio's relative sd is a few percent and [0.75, 1.3]
  # is wide of chance. The projection scale (biased, NMSE ~0.32 of which most is bias) gives
  # a ratio of tens, which shows that the test can see a bias.
  rng = np.random.default_rng(5)
  x = (rng.standard_normal(4096) if name == 'gaussian' else rng.laplace(size=4096))
  x = x.astype(np.float32)
  m = 200
  ratios = {}
  for scale in ('unbiased', 'projection'):
    q = rotated(rotated_scale=scale, block_size=1024)
    encode = encode_fn(q)
    decodes = np.stack([decode(q, encode(x, tf.constant([i, 3], tf.int64)), x)
                        for i in range(m)]).astype(np.float64)
    single = np.mean(np.sum((decodes - x)**2, axis=1))
    ratios[scale] = np.sum((decodes.mean(axis=0) - x)**2) / (single / m)
  assert 0.75 < ratios['unbiased'] < 1.3, ratios
  assert ratios['projection'] > 10, ratios


def test_nmse_at_one_bit_on_gaussian():
  # 1 - cos^2 and 1/cos^2 - 1 of the Gaussian k-means codebook (D/d = 0.325 at d = 8,
  # K = 256): over 2^17 sub-vectors the sampling error is well below 0.01.
  x = np.random.default_rng(1234).standard_normal(2**20).astype(np.float32)
  for scale, expected in (('unbiased', 0.48), ('projection', 0.325)):
    q = rotated(rotated_scale=scale)
    assert nmse(x, decode(q, encode_fn(q)(x, SEED), x)) == pytest.approx(expected, abs=0.015)


# --- Norm non-increase of the projection scale -----------------------------------------------
@pytest.mark.parametrize('config', [
    dict(dim=8, codebook_size=256),
    dict(dim=8, codebook_size=256, block_size=64),
    dict(dim=4, codebook_size=16, block_size=256, codebook='signed_spherical_kmeans'),
])
def test_projection_never_increases_norm(config):
  q = rotated(rotated_scale='projection', **config)
  assert q.norm_non_increasing and not q.unbiased
  rng = np.random.default_rng(31)
  cases = list(adversarial.inputs())
  # Random inputs of random sizes and magnitudes, and inputs made of one codeword repeated.
  for i in range(10):
    cases.append((f'extra_{i}', rng.standard_normal(rng.integers(1, 5000)) *
                  10.0**rng.uniform(-20, 20)))
  cases.append(('codeword', np.tile(q.codebook[3], 128)))
  for name, x in cases:
    x = x.astype(np.float32)
    x_hat = decode(q, q.encode(x, SEED).components, x).astype(np.float64)
    norm = np.linalg.norm(x.astype(np.float64))
    assert np.all(np.isfinite(x_hat)), name
    assert np.linalg.norm(x_hat) <= norm, (name, np.linalg.norm(x_hat) / norm)


def test_properties_feed_the_dp_rules():
  assert rotated().unbiased and not rotated().norm_non_increasing
  p = rotated(rotated_scale='projection')
  assert p.norm_non_increasing and not p.unbiased


# --- Message size ----------------------------------------------------------------------------
@pytest.mark.parametrize('dim,size,block,num_elements', [
    (8, 256, 2**14, 2**20),
    (8, 256, 2**14, 100000),
    (16, 256, 2**14, 3 * 2**14 + 5),
    (8, 256, 1024, 1000),
    (4, 16, 64, 3),
    (8, 256, 2**14, 1),
])
def test_bits_are_counted_from_the_message_and_match_the_shapes(dim, size, block, num_elements):
  q = rotated(dim=dim, codebook_size=size, block_size=block)
  x = np.random.default_rng(8).standard_normal(num_elements).astype(np.float32)
  message = q.encode(x, SEED)
  sent_bits = sum(t.numpy().nbytes * 8 for t in message.components.values())
  assert q.bits_per_coordinate(num_elements) == sent_bits / num_elements
  # Independent count: full blocks of `block`, a tail block of the next power of two >= the
  # remaining entries (and >= dim), log2 K bits per sub-vector (uint8 when exactly 8, else
  # packed into uint32 words), a float32 per block, an int32 [2] key.
  full, rest = divmod(num_elements, block)
  tail = 2**math.ceil(math.log2(max(rest, dim))) if rest else 0
  vectors = (full * block + tail) // dim
  index_bits = int(math.log2(size))
  index_field = 8 * vectors if index_bits == 8 else 32 * -(-vectors * index_bits // 32)
  assert sent_bits == index_field + 32 * (full + (1 if rest else 0)) + 64


def test_rates_of_the_presets():
  for name, bits in (('rotated', 1.0), ('rotated_three_quarters', 0.75), ('rotated_half', 0.5)):
    config = presets.get(name)
    # Only the index bits, without building the K = 4096 codebook: log2 K / d.
    assert math.log2(config['codebook_size']) / config['dim'] == bits
  q = tff_hsq.Quantizer(**presets.get('rotated'))
  assert q.bits_per_coordinate(2**20) == pytest.approx(1.0 + 32 / 2**14 + 64 / 2**20)


# --- Determinism and client/server agreement -------------------------------------------------
def test_same_seed_same_message_other_seed_other_rotation():
  q = rotated()
  x = np.random.default_rng(10).standard_normal(50000).astype(np.float32)
  a = q.encode(x, tf.constant([1, 2])).components
  b = q.encode(x, tf.constant([1, 2])).components
  c = q.encode(x, tf.constant([1, 3])).components
  for name in a:
    np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
  assert not np.array_equal(a['rotation_key'].numpy(), c['rotation_key'].numpy())
  # Another rotation: indices agree only by chance (measured ~1%; bound 10%).
  assert np.mean(a['indices'].numpy() == c['indices'].numpy()) < 0.1


def test_server_rebuilds_the_rotation_from_the_message_alone():
  x = np.random.default_rng(12).standard_normal(40000).astype(np.float32)
  client = rotated(rotated_scale='projection')
  components = client.encode(x, SEED).components
  # What crosses the network: plain arrays. A fresh server-side Quantizer of the same
  # configuration, and no seed, decodes them.
  wire = collections.OrderedDict((k, v.numpy()) for k, v in components.items())
  server = rotated(rotated_scale='projection')
  received = collections.OrderedDict((k, tf.constant(v)) for k, v in wire.items())
  x_hat = decode(server, received, x)
  np.testing.assert_array_equal(x_hat, decode(client, components, x))
  # The decode is the projection onto the right rotation: NMSE 1 - cos^2 ~ 0.325. Under any
  # other rotation the codewords are unrelated to x and the NMSE is ~1.
  assert nmse(x, x_hat) == pytest.approx(0.325, abs=0.02)
  tampered = collections.OrderedDict(received)
  tampered['rotation_key'] = tf.constant(wire['rotation_key'] ^ np.int32(1))
  assert nmse(x, decode(server, tampered, x)) > 0.95


# --- Bad input and dtypes --------------------------------------------------------------------
@pytest.mark.parametrize('scale', ['unbiased', 'projection'])
def test_zero_input_decodes_to_exact_zeros(scale):
  q = rotated(rotated_scale=scale)
  x = np.zeros(20000, np.float32)
  x_hat = decode(q, q.encode(x, SEED).components, x)
  np.testing.assert_array_equal(x_hat, np.zeros(20000))
  # A zero block next to a non-zero one stays zero too.
  x = np.concatenate([np.zeros(2**14), np.ones(100)]).astype(np.float32)
  np.testing.assert_array_equal(decode(q, q.encode(x, SEED).components, x)[:2**14], 0.0)


@pytest.mark.parametrize('bad_value', [np.nan, np.inf, -np.inf])
def test_non_finite_input_gives_malformed_message_decoding_to_zeros(bad_value):
  q = rotated()
  x = np.ones(20000, np.float32)
  x[17] = bad_value
  message = q.encode(x, SEED)
  assert not bool(q.is_valid(message))
  np.testing.assert_array_equal(q.decode(message).numpy(), np.zeros(20000))
  good = q.encode(np.ones(20000, np.float32), SEED)
  assert bool(q.is_valid(good))


@pytest.mark.parametrize('dtype', [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_dtype_and_shape_are_preserved(dtype):
  q = rotated()
  x = tf.cast(np.random.default_rng(9).standard_normal((3, 5, 70)), dtype)
  x_hat = q.decode(q.encode(x, SEED))
  assert x_hat.dtype == dtype and x_hat.shape == (3, 5, 70)
  assert nmse(tf.cast(x, tf.float64), tf.cast(x_hat, tf.float64)) < 0.7


@pytest.mark.parametrize('kwargs,match', [
    (dict(rotated_scale='median'), 'rotated_scale'),
    (dict(dim=12), 'power of two'),
    (dict(block_size=1000), 'block_size'),
    (dict(block_size=4), 'block_size'),
])
def test_bad_configuration_is_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rotated(**kwargs)


def test_assign_refuses_rotated_mode():
  with pytest.raises(ValueError, match='rotated'):
    rotated().assign(np.ones(16, np.float32), SEED)


# --- Codebooks, presets, factory -------------------------------------------------------------
def test_shipped_gaussian_codebook_equals_regeneration():
  shipped = codebooks.gaussian_kmeans(8, 256, 0)
  assert codebooks._gaussian_key(8, 256, 0) in codebooks._load_shipped()
  np.testing.assert_allclose(shipped, codebooks._generate_gaussian_kmeans(8, 256, 0), atol=1e-5)


def test_factory_preset_and_round():
  tff = pytest.importorskip('tensorflow_federated')
  factory = tff_hsq.HSQFactory.rotated()
  assert factory.quantizer.mode == 'rotated' and factory.quantizer.unbiased
  assert factory.quantizer.dim == 8 and factory.quantizer.codebook_size == 256
  projection = tff_hsq.HSQFactory.rotated(scale='projection', bits=0.5, threshold=100)
  assert projection.quantizer.norm_non_increasing and projection.quantizer.dim == 16
  assert projection.threshold == 100
  x = np.random.default_rng(23).standard_normal(40000).astype(np.float32)
  process = tff_hsq.HSQFactory.rotated(reclip=True).create(tff.TensorType(np.float32, [40000]))
  output = process.next(process.initialize(), [x, x])
  assert output.measurements['malformed_messages'] == 0
  assert output.measurements['bits_per_coordinate'] == pytest.approx(
      (factory.quantizer.bits_per_coordinate(40000) * 40000 + 32) / 40000, rel=1e-6)
  # Two independent unbiased encodes of x: NMSE of the mean ~0.48 / 2, reclipped or not.
  assert nmse(x, output.result / 2) < 0.4
