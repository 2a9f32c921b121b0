"""Tests of tff_hsq.Quantizer: the HSQ math as plain TF ops.

Random inputs use NumPy seeds that are not codebook seeds (the k-means codebooks were fitted on
samples of PCG64(0)); statistical tolerances are stated next to each assertion.
"""

import collections

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import adversarial
import tff_hsq
from tff_hsq import packing
from tff_hsq import presets
from tff_hsq import rotation

SEED = tf.constant([7, 11], tf.int64)


def encode_fn(q):
  """A graph-mode encode (components only) for speed in loops."""
  return tf.function(lambda x, seed: q.encode(x, seed).components, autograph=False)


def roundtrip(q, x, seed=SEED):
  x = tf.convert_to_tensor(x)
  return q.decode(q.encode(x, seed)).numpy()


def nmse(x, x_hat):
  x = np.asarray(x, np.float64)
  return np.sum((np.asarray(x_hat, np.float64) - x)**2) / np.sum(x**2)


@pytest.fixture(scope='module')
def gaussian():
  return np.random.default_rng(1234).standard_normal(2**20).astype(np.float32)


# --- NMSE against DESIGN.md's reference figures (Gaussian, D = 2^20) -------------------------
# Over 2^16..2^18 sub-vectors the sampling error of the NMSE is below 0.5%, far inside these
# tolerances; the tolerances are the issue's.
@pytest.mark.parametrize('dim,size,bits,mode,expected,tolerance', [
    (16, 256, 6, 'nearest', 0.52, 0.03),
    (16, 256, 6, 'stochastic', 9.6, 0.5),
    (8, 256, 8, 'nearest', 0.24, 0.02),
    (4, 256, 8, 'nearest', 0.032, 0.005),
    (8, 256, 8, 'stochastic', 4.4, 0.25),
])
def test_nmse_matches_reference(gaussian, dim, size, bits, mode, expected, tolerance):
  q = tff_hsq.Quantizer(dim=dim, codebook_size=size, scale_bits=bits, mode=mode)
  components = encode_fn(q)(tf.constant(gaussian), SEED)
  x_hat = q.decode(tff_hsq.Message(components, tf.TensorShape([2**20]), tf.float32))
  assert nmse(gaussian, x_hat) == pytest.approx(expected, abs=tolerance)


def test_extreme_preset_nmse(gaussian):
  q = tff_hsq.Quantizer(**presets.get('extreme'))
  x = gaussian[:2**18]
  assert nmse(x, roundtrip(q, x)) == pytest.approx(0.68, abs=0.03)
  assert q.bits_per_coordinate(2**18) == pytest.approx(0.5, abs=1e-3)


# --- Unbiasedness ----------------------------------------------------------------------------
@pytest.mark.parametrize('config', [
    dict(dim=16, codebook_size=256, scale_bits=6, mode='stochastic'),
    dict(dim=4, codebook_size=8, scale_bits=3, mode='stochastic'),  # cross-polytope, coarse n
])
def test_stochastic_mean_of_decodes_converges_like_one_over_m(config):
  # E||mean_M - x||^2 = ||bias||^2 + E||x_hat - x||^2 / M. Over M = 400 independent seeds an
  # unbiased quantizer gives a ratio (error of the mean) / (single-decode error / M) near 1;
  # with 256 sub-vectors its relative standard deviation is about 10%, so [0.7, 1.3] is a
  # 3-sigma band. Bias, or seeds that do not draw independently, push the ratio far above 1.
  q = tff_hsq.Quantizer(**config)
  x = np.random.default_rng(5).standard_normal(4096).astype(np.float32)
  encode = encode_fn(q)
  m = 400
  decodes = np.stack([
      q.decode(tff_hsq.Message(encode(x, tf.constant([i, 3], tf.int64)), x.shape, tf.float32))
      for i in range(m)
  ]).astype(np.float64)
  single = np.mean(np.sum((decodes - x)**2, axis=1))
  of_mean = np.sum((decodes.mean(axis=0) - x)**2)
  assert 0.7 < of_mean / (single / m) < 1.3


def test_log_d_is_exactly_unbiased_in_expectation_and_variance():
  # For log_d the law of the decode is known exactly: x_hat = sign(a_k) ||a||_1 R^T e_k with
  # probability |a_k| / ||a||_1, a = R x (x zero-padded to P = 64). So E[x_hat] = x, and since
  # every entry of R^T e_k is +-1/8 and the decode keeps the first D = 50 entries,
  # E||x_hat - x||^2 = ||a||_1^2 * D / P - ||x||^2. With M = 4000 draws the error of the mean
  # has relative sd ~ sqrt(2/64) x its mean (64 coordinates), so [0.6, 1.4] is a 2.3-sigma
  # band around the predicted value.
  q = tff_hsq.Quantizer(mode='log_d', codebook_seed=3)
  x = np.random.default_rng(6).standard_normal(50).astype(np.float32)
  signs = q._rotation_signs(64).numpy()
  r = scipy.linalg.hadamard(64) * signs[np.newaxis, :] / 8.0  # R = H S / sqrt(P)
  a = r @ np.pad(x, (0, 14)).astype(np.float64)
  predicted_var = np.sum(np.abs(a))**2 * 50 / 64 - np.sum(x.astype(np.float64)**2)
  encode = encode_fn(q)
  m = 4000
  decodes = np.stack([
      q.decode(tff_hsq.Message(encode(x, tf.constant([i, 9], tf.int64)), x.shape, tf.float32))
      for i in range(m)
  ]).astype(np.float64)
  assert np.mean(np.sum((decodes - x)**2, axis=1)) == pytest.approx(predicted_var, rel=0.1)
  ratio = np.sum((decodes.mean(axis=0) - x)**2) / (predicted_var / m)
  assert 0.6 < ratio < 1.4


# --- Norm non-increase of nearest mode -------------------------------------------------------
@pytest.mark.parametrize('scale_bits', [2, 3, 6, 16])
@pytest.mark.parametrize('dim,size', [(16, 256), (4, 256), (8, 16), (3, 4)])
def test_nearest_never_increases_norm(scale_bits, dim, size):
  q = tff_hsq.Quantizer(dim=dim, codebook_size=size, scale_bits=scale_bits, mode='nearest')
  for name, x in adversarial.inputs():
    x = x.astype(np.float32)
    x_hat = roundtrip(q, x).astype(np.float64)
    norm = np.linalg.norm(x.astype(np.float64))
    # 1e-6 relative: float32 rounding of the projection and the decode, nothing more.
    assert np.linalg.norm(x_hat) <= norm * (1 + 1e-6), name
    assert np.all(np.isfinite(x_hat)), name


# --- Message format and size -----------------------------------------------------------------
@pytest.mark.parametrize('config,num_elements', [
    (presets.get('balanced'), 1000),
    (presets.get('high_fidelity'), 4097),
    (presets.get('extreme'), 100000),
    (presets.get('unbiased'), 31),
    (dict(dim=8, codebook_size=512, scale_bits=5), 800),
    (dict(dim=2, codebook_size=4, scale_bits=2), 7),
])
def test_bits_per_coordinate_counts_the_sent_message(config, num_elements):
  q = tff_hsq.Quantizer(**config)
  x = np.random.default_rng(8).standard_normal(num_elements).astype(np.float32)
  message = q.encode(x, SEED)
  sent_bits = sum(t.numpy().nbytes * 8 for t in message.components.values())
  assert q.bits_per_coordinate(num_elements) == sent_bits / num_elements
  # The independent count: N sub-vectors, log2 K index bits (uint8 when that is exactly their
  # width, else packed into uint32 words), n-bit scale codes packed into uint32 words, one
  # float32 maximum.
  n = -(-num_elements // q.dim)
  index_bits = int(np.log2(q.codebook_size))
  index_field = 8 * n if index_bits == 8 else 32 * -(-n * index_bits // 32)
  expected = index_field + 32 * -(-n * q.scale_bits // 32) + 32
  assert sent_bits == expected


def test_message_dtypes():
  x = np.ones(64, np.float32)
  assert [(k, t.dtype) for k, t in tff_hsq.Quantizer().encode(x, SEED).components.items()] == [
      ('indices', tf.uint8), ('scale_codes', tf.uint32), ('max_scale', tf.float32)]
  q = tff_hsq.Quantizer(**presets.get('extreme'))
  assert q.encode(x, SEED).components['indices'].dtype == tf.uint32


@pytest.mark.parametrize('num_elements', [1, 1000, 2**20, 3 * 10**6])
def test_log_d_sends_64_bits_per_tensor(num_elements):
  q = tff_hsq.Quantizer(mode='log_d')
  spec = q.message_spec([num_elements])
  assert spec == collections.OrderedDict(
      index=tf.TensorSpec([], tf.uint32), scale=tf.TensorSpec([], tf.float32))
  assert q.bits_per_coordinate(num_elements) * num_elements == 64
  # 32 index bits hold log2(P) bits for every tensor of up to 2^32 entries.
  assert np.log2(rotation.padded_size(num_elements)) <= 32


# --- Dtypes, shapes, determinism -------------------------------------------------------------
@pytest.mark.parametrize('dtype', [tf.float16, tf.bfloat16, tf.float32, tf.float64])
@pytest.mark.parametrize('mode', ['nearest', 'stochastic', 'log_d'])
def test_dtype_and_shape_are_preserved(dtype, mode):
  q = tff_hsq.Quantizer(mode=mode)
  x = tf.cast(np.random.default_rng(9).standard_normal((3, 5, 7)), dtype)
  x_hat = q.decode(q.encode(x, SEED))
  assert x_hat.dtype == dtype and x_hat.shape == (3, 5, 7)
  if mode == 'nearest':  # 105 entries = 6 full sub-vectors + a padded one.
    assert nmse(tf.cast(x, tf.float64), tf.cast(x_hat, tf.float64)) < 0.7


@pytest.mark.parametrize('mode', ['nearest', 'stochastic', 'log_d'])
def test_same_seed_same_message_different_seed_independent(mode):
  q = tff_hsq.Quantizer(mode=mode)
  x = np.random.default_rng(10).standard_normal(4096).astype(np.float32)
  a = q.encode(x, tf.constant([1, 2])).components
  b = q.encode(x, tf.constant([1, 2])).components
  c = q.encode(x, tf.constant([1, 3])).components
  for name in a:
    np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
  if mode == 'nearest':  # Deterministic: the seed is not used.
    np.testing.assert_array_equal(a['indices'].numpy(), c['indices'].numpy())
  elif mode == 'stochastic':
    # Independent draws agree on an index only where one codeword dominates; with K = 256 and
    # |a_k| spread over all codewords that is rare (measured about 2%; bound 10%).
    same = np.mean(a['indices'].numpy() == c['indices'].numpy())
    assert same < 0.1
  else:
    assert a['index'].numpy() != c['index'].numpy()


def test_nearest_mode_picks_the_best_codeword():
  q = tff_hsq.Quantizer(dim=16, codebook_size=256, scale_bits=16)
  x = np.random.default_rng(11).standard_normal(16 * 50).astype(np.float32)
  k = q.encode(x, SEED).components['indices'].numpy()
  projections = x.reshape(50, 16) @ q.codebook.T
  np.testing.assert_array_equal(k, np.argmax(np.abs(projections), axis=1))
  # With 16-bit scales the decode is the projection onto the chosen codeword, up to the
  # quantization step max|s| / 32767.
  x_hat = roundtrip(q, x).reshape(50, 16)
  s = projections[np.arange(50), k]
  np.testing.assert_allclose(
      x_hat, s[:, None] * q.codebook[k], atol=np.abs(s).max() / 32767 + 1e-6)


def test_exact_on_codewords_with_exact_scales():
  # A tensor made of codewords scaled by levels of the scale grid decodes exactly.
  q = tff_hsq.Quantizer(dim=4, codebook_size=8, scale_bits=4)  # cross-polytope
  levels = np.array([7, -3, 0, 5], np.float32) / 7 * 2.0
  x = np.concatenate([levels[i] * q.codebook[2 * i] for i in range(4)])
  np.testing.assert_allclose(roundtrip(q, x), x, rtol=1e-6)


# --- Bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['nearest', 'stochastic', 'log_d'])
def test_zero_input_decodes_to_exact_zeros(mode):
  q = tff_hsq.Quantizer(mode=mode)
  x_hat = roundtrip(q, np.zeros(1000, np.float32))
  np.testing.assert_array_equal(x_hat, np.zeros(1000))


@pytest.mark.parametrize('bad_max', [np.nan, np.inf, -1.0])
def test_malformed_max_scale_decodes_to_zeros(bad_max):
  q = tff_hsq.Quantizer(dim=8, codebook_size=256, scale_bits=6)
  x = np.arange(1.0, 65.0, dtype=np.float32)
  message = q.encode(x, SEED)
  assert bool(q.is_valid(message))
  bad = collections.OrderedDict(message.components, max_scale=tf.constant(bad_max, tf.float32))
  bad_message = tff_hsq.Message(bad, message.shape, message.dtype)
  assert not bool(q.is_valid(bad_message))
  np.testing.assert_array_equal(q.decode(bad_message).numpy(), np.zeros(64))


def test_every_index_field_value_is_in_range_for_codebook_modes():
  # Index fields are exactly log2 K bits wide (uint8 for K = 256, packed
  # otherwise), so no bit pattern a sender can put there is out of range: all-ones words decode
  # to the last codeword, finite, instead of failing a gather.
  for size in (16, 256):
    q = tff_hsq.Quantizer(dim=4, codebook_size=size, scale_bits=4)
    message = q.encode(np.ones(64, np.float32), SEED)
    bad = collections.OrderedDict(
        (name, tf.fill(t.shape, tf.constant(-1, tf.int64)) if t.dtype != tf.float32 else t)
        for name, t in message.components.items())
    bad = collections.OrderedDict(
        (name, tf.cast(t, message.components[name].dtype)) for name, t in bad.items())
    bad_message = tff_hsq.Message(bad, message.shape, message.dtype)
    assert bool(q.is_valid(bad_message))
    x_hat = q.decode(bad_message).numpy()
    # Every scale code is all ones: sign bit set, top magnitude, so each scale is -max_scale.
    expected = -float(message.components['max_scale']) * np.tile(q.codebook[size - 1], 16)
    np.testing.assert_allclose(x_hat, expected, rtol=1e-6)


def test_log_d_index_out_of_range_decodes_to_zeros():
  q = tff_hsq.Quantizer(mode='log_d')
  x = np.arange(1.0, 33.0, dtype=np.float32)
  message = q.encode(x, SEED)
  bad = collections.OrderedDict(message.components, index=tf.constant(32, tf.uint32))
  bad_message = tff_hsq.Message(bad, message.shape, message.dtype)  # P = 32: index 0..31
  assert not bool(q.is_valid(bad_message))
  np.testing.assert_array_equal(q.decode(bad_message).numpy(), np.zeros(32))


@pytest.mark.parametrize('mode', ['nearest', 'stochastic', 'log_d'])
@pytest.mark.parametrize('bad_value', [np.nan, np.inf, -np.inf])
def test_non_finite_input_gives_malformed_message_not_a_crash(mode, bad_value):
  q = tff_hsq.Quantizer(mode=mode)
  x = np.ones(100, np.float32)
  x[17] = bad_value
  message = q.encode(x, SEED)
  assert not bool(q.is_valid(message))
  np.testing.assert_array_equal(q.decode(message).numpy(), np.zeros(100))


@pytest.mark.parametrize('dtype', [tf.int32, tf.int64, tf.bool, tf.string, tf.complex64])
def test_non_float_input_raises_type_error_naming_dtype(dtype):
  x = tf.zeros([4], dtype)
  with pytest.raises(TypeError, match=dtype.name):
    tff_hsq.Quantizer().encode(x, SEED)


def test_message_from_another_configuration_is_rejected():
  x = np.ones(64, np.float32)
  message = tff_hsq.Quantizer(dim=16).encode(x, SEED)
  with pytest.raises(ValueError, match='does not match'):
    tff_hsq.Quantizer(dim=8).decode(message)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(mode='sign'), ValueError, 'mode'),
    (dict(dim=0), ValueError, 'dim'),
    (dict(codebook_size=100), ValueError, 'power of two'),
    (dict(codebook_size=8192), ValueError, 'power of two'),
    (dict(dim=32, codebook_size=16), ValueError, 'codebook_size must be >= dim'),
    (dict(scale_bits=1), ValueError, 'scale_bits'),
    (dict(scale_bits=17), ValueError, 'scale_bits'),
    (dict(dim=16.0), TypeError, 'dim must be an int'),
    (dict(codebook_seed=-1), ValueError, 'codebook_seed'),
])
def test_bad_configuration_is_rejected(kwargs, error, match):
  with pytest.raises(error, match=match):
    tff_hsq.Quantizer(**kwargs)


def test_unknown_shape_is_rejected():
  q = tff_hsq.Quantizer()
  fn = tf.function(lambda x: q.encode(x, SEED).components)
  with pytest.raises(ValueError, match='fully defined shape'):
    fn.get_concrete_function(tf.TensorSpec([None], tf.float32))


# --- Building blocks -------------------------------------------------------------------------
@pytest.mark.parametrize('bits', [1, 3, 6, 7, 8, 10, 13, 16, 31])
def test_packing_roundtrip(bits):
  codes = np.random.default_rng(bits).integers(0, 2**bits, 1001)
  words = packing.pack(tf.constant(codes), bits)
  assert words.dtype == tf.uint32 and words.shape == [packing.num_words(1001, bits)]
  np.testing.assert_array_equal(packing.unpack(words, bits, 1001).numpy(), codes)


def test_rotation_matches_explicit_hadamard():
  x = np.random.default_rng(12).standard_normal((3, 32)).astype(np.float32)
  signs = rotation.random_signs(32, tf.constant([4, 5]))
  r = scipy.linalg.hadamard(32) * signs.numpy()[np.newaxis, :] / np.sqrt(32)
  np.testing.assert_allclose(rotation.rotate(x, signs).numpy(), x @ r.T, atol=1e-5)
  np.testing.assert_allclose(
      rotation.unrotate(rotation.rotate(x, signs), signs).numpy(), x, atol=1e-5)
  np.testing.assert_allclose(rotation.basis_vector(tf.constant(13), signs).numpy(), r[13],
                             atol=1e-6)
  assert rotation.padded_size(1) == 1 and rotation.padded_size(33) == 64
