"""Tests of tff_hsq.learning: HSQ aggregators inside tff.learning processes."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import adversarial
import tff_hsq
from examples import data

_LARGE = 24000


def test_hsq_aggregator_types():
  weighted = tff_hsq.learning.hsq_aggregator()
  unweighted = tff_hsq.learning.hsq_aggregator(weighted=False, clipping=True)
  assert isinstance(weighted, tff.aggregators.WeightedAggregationFactory)
  assert isinstance(unweighted, tff.aggregators.UnweightedAggregationFactory)
  with pytest.raises(ValueError, match='Unknown HSQ preset'):
    tff_hsq.learning.hsq_aggregator('fast')


def test_nan_update_is_zeroed_and_the_mean_stays_finite():
  value_type = tff.types.to_type(collections.OrderedDict(
      kernel=(np.float32, [_LARGE]), bias=(np.float32, [10])))
  process = tff_hsq.learning.hsq_aggregator().create(value_type, tff.TensorType(np.float32))
  rng = np.random.default_rng(31)
  values = [collections.OrderedDict(kernel=rng.standard_normal(_LARGE).astype(np.float32) * 0.01,
                                    bias=np.full(10, 0.5, np.float32)) for _ in range(3)]
  values[1]['kernel'][7] = np.nan
  values[2]['bias'][0] = np.inf
  output = process.next(process.initialize(), values, [1.0, 1.0, 1.0])
  # TFF's zeroing catches the Inf update (norm inf > bound) but not the NaN one (NaN > bound
  # is False); HSQFactory drops that one as malformed instead.
  assert output.measurements['zeroed_count'] == 1
  assert output.measurements['zeroing']['mean_value']['malformed_messages'] == 1
  assert np.all(np.isfinite(output.result['kernel']))
  assert np.isfinite(output.measurements['zeroing_norm'])
  # Only client 0 survives; the zeroed clients still count in the weight: its bias / 3.
  np.testing.assert_allclose(output.result['bias'], np.full(10, 0.5 / 3), rtol=1e-6)


def keras_model():
  tf.keras.utils.set_random_seed(0)
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(784,)),
      tf.keras.layers.Dense(32, activation='relu'),  # 25,088-entry kernel: HSQ-compressed
      tf.keras.layers.Dense(10),
  ])


def federated_mnist(num_clients, seed):
  images, labels = data.mnist5k()
  shards = data.dirichlet_split(labels, num_clients, alpha=1.0, seed=seed)
  return [
      tf.data.Dataset.from_tensor_slices(
          collections.OrderedDict(x=images[s[:200]], y=labels[s[:200]])).batch(20)
      for s in shards
  ]


def build_fed_avg(build, aggregator, clients, **kwargs):
  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model(), input_spec=clients[0].element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

  return build(model_fn,
               client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
               server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
               model_aggregator=aggregator, **kwargs)


def run_three_rounds(process, clients, *hsq_path):
  """Runs 3 rounds on all clients: (final state, training losses, HSQ measurements per round).

  hsq_path: the keys from the aggregator's measurements down to the HSQ process's. Every round
  must have no malformed message.
  """
  state = process.initialize()
  losses, measurements = [], []
  for _ in range(3):
    output = process.next(state, clients)
    state = output.state
    losses.append(output.metrics['client_work']['train']['loss'])
    hsq = output.metrics['aggregator']
    for key in hsq_path:
      hsq = hsq[key]
    assert hsq['malformed_messages'] == 0
    measurements.append(hsq)
  return state, losses, measurements


@pytest.mark.parametrize('preset', ['balanced', 'unbiased'])
def test_three_rounds_of_weighted_fed_avg_reduce_the_loss(preset):
  clients = federated_mnist(num_clients=5, seed=0)
  process = build_fed_avg(tff.learning.algorithms.build_weighted_fed_avg,
                          tff_hsq.learning.hsq_aggregator(preset), clients)
  _, losses, measurements = run_three_rounds(process, clients, 'zeroing', 'mean_value')
  hsq = measurements[-1]
  # The clients' training loss (measured before each round's aggregation) falls round on
  # round: from ~2.3 (chance over 10 classes) as the aggregated updates take effect.
  assert losses[0] > losses[1] > losses[2]
  assert losses[2] < 0.9 * losses[0]
  # hsq_aggregator encodes the tensors of >= 100 entries: the 784 x 32 and 32 x 10 kernels
  # (25,088 and 320 of 25,450 parameters); the 32 + 10 biases are float32.
  quantizer = tff_hsq.HSQFactory(**tff_hsq.presets.get(preset)).quantizer
  expected = (quantizer.bits_per_coordinate(25088) * 25088 +
              quantizer.bits_per_coordinate(320) * 320 + 32 * (32 + 10)) / 25450
  assert hsq['bits_per_coordinate'] == pytest.approx(expected, rel=1e-6)


# --- Differential privacy --------------------------------------------------------------------
_DP_TYPE = tff.types.to_type(collections.OrderedDict(
    kernel=(np.float32, [4096]), bias=(np.float32, [10])))


def dp_records():
  """Adversarial updates cut or zero-padded to the kernel's 4096 entries, with a bias."""
  rng = np.random.default_rng(41)
  for name, x in adversarial.inputs():
    kernel = np.resize(x, 4096) if x.size >= 4096 else np.pad(x, (0, 4096 - x.size))
    yield name, collections.OrderedDict(kernel=kernel.astype(np.float32),
                                        bias=rng.standard_normal(10).astype(np.float32))


def global_norm(value):
  return np.sqrt(sum(np.sum(np.asarray(t, np.float64)**2) for t in value.values()))


@pytest.mark.parametrize('preset', ['balanced', 'high_fidelity', 'unbiased', 'log_d'])
def test_dp_decoded_record_never_exceeds_the_clip_norm(preset):
  # One client per round, no noise, clients_per_round = 1: the result is exactly that client's
  # decoded clipped record. The randomized and adversarial inputs (sparse, one-hot, aligned
  # with a codeword, 1e30, 1e-30, Cauchy, ...) are clipped to 1.0 by TFF's DP query; the
  # inflating modes (unbiased ~2.3x here, log_d ~50x) would exceed it without reclip.
  clip = 1.0
  aggregator = tff_hsq.learning.dp_hsq_aggregator(
      0.0, 1, preset, clip=clip, zeroing=False, threshold=1000)
  process = aggregator.create(_DP_TYPE)
  state = process.initialize()
  reclipped = 0
  for name, record in dp_records():
    output = process.next(state, [record])
    state = output.state
    # TFF's DP query clips in float32 (tf.clip_by_global_norm), which can land a hair above
    # the clip (seen: 1 + 1.2e-9); HSQ's decode never exceeds the record the query clipped.
    clipped, _ = tf.clip_by_global_norm(list(record.values()), clip)
    record_norm = global_norm(dict(enumerate(t.numpy() for t in clipped)))
    if np.isfinite(record_norm):
      assert global_norm(output.result) <= record_norm, name
    else:
      # 'huge' (1e30): float32 squares overflow in TFF's clipping, the record is NaN, and HSQ
      # drops the client as malformed instead of summing NaN.
      assert global_norm(output.result) == 0.0, name
      assert output.measurements['dp']['malformed_messages'] == 1, name
    assert global_norm(output.result) <= clip * (1 + 1e-6), name
    assert all(np.all(np.isfinite(t)) for t in output.result.values()), name
    reclipped += output.measurements['dp']['reclipped_messages']
  if preset in ('unbiased', 'log_d'):
    assert reclipped >= 15  # the guard is what keeps these modes within the clip


def test_dp_adaptive_clipping_keeps_the_record_within_the_current_clip():
  aggregator = tff_hsq.learning.dp_hsq_aggregator(
      0.0, 1, 'unbiased', zeroing=False, threshold=1000, initial_l2_norm_clip=0.1)
  process = aggregator.create(_DP_TYPE)
  _, record = next(dp_records())
  output = process.next(process.initialize(), [record])
  assert 0 < global_norm(output.result) <= 0.1  # the first round's clip is the initial one


def test_dp_without_reclip_is_refused_for_modes_that_inflate_norms():
  with pytest.raises(ValueError, match="mode 'stochastic'.*keep reclip=True"):
    tff_hsq.learning.dp_hsq_aggregator(1.0, 10, 'unbiased', reclip=False)
  with pytest.raises(ValueError, match="mode 'log_d'"):
    tff_hsq.learning.dp_hsq_aggregator(1.0, 10, 'log_d', reclip=False)
  # Nearest mode never increases a norm, so it may go without the extra float per client.
  tff_hsq.learning.dp_hsq_aggregator(1.0, 100, 'balanced', reclip=False)


def test_three_rounds_of_dp_fed_avg():
  clients = federated_mnist(num_clients=5, seed=1)
  process = build_fed_avg(
      tff.learning.algorithms.build_unweighted_fed_avg,
      tff_hsq.learning.dp_hsq_aggregator(noise_multiplier=0.1, clients_per_round=5, clip=2.0),
      clients)
  state, losses, measurements = run_three_rounds(process, clients, 'zeroing', 'dp')
  for hsq in measurements:
    assert hsq['bits_per_coordinate'] == pytest.approx(
        (0.875 * 25088 + 32 * 362 + 32) / 25450, rel=1e-3)  # + one float32 norm per client
  weights = process.get_model_weights(state).trainable
  assert all(np.all(np.isfinite(w)) for w in weights)
  # Noise 0.1 x clip 2 / 5 clients per coordinate does not stop learning in three rounds.
  assert losses[2] < losses[0]


# --- Secure aggregation (last in this module: it installs TFF's test context) ------------------
@pytest.mark.usefixtures('secure_sum_context')
def test_three_rounds_of_secure_weighted_fed_avg():
  clients = federated_mnist(num_clients=5, seed=2)
  aggregator = tff_hsq.learning.secure_hsq_aggregator(clip=10.0, max_weight=1000.0,
                                                      max_clients=8)
  process = build_fed_avg(tff.learning.algorithms.build_weighted_fed_avg, aggregator, clients)
  _, losses, measurements = run_three_rounds(process, clients, 'zeroing', 'clipping',
                                             'mean_value')
  for hsq in measurements:
    # Cross-polytope d = 8: one integer per kernel entry of 16 + log2(8) = 19 bits; the 362
    # small entries are securely summed as 32 + 3-bit integers.
    assert hsq['bits_per_coordinate'] == pytest.approx((19 * 25088 + 35 * 362) / 25450,
                                                       rel=1e-6)
  assert losses[0] > losses[1] > losses[2]
