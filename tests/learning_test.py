"""Tests of tff_hsq.learning: HSQ aggregators inside tff.learning processes."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

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


@pytest.mark.parametrize('preset', ['balanced', 'unbiased'])
def test_three_rounds_of_weighted_fed_avg_reduce_the_loss(preset):
  clients = federated_mnist(num_clients=5, seed=0)

  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model(), input_spec=clients[0].element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

  process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
      model_aggregator=tff_hsq.learning.hsq_aggregator(preset))
  state = process.initialize()
  losses = []
  for _ in range(3):
    output = process.next(state, clients)
    state = output.state
    losses.append(output.metrics['client_work']['train']['loss'])
    hsq = output.metrics['aggregator']['zeroing']['mean_value']
    assert hsq['malformed_messages'] == 0
  # The clients' training loss (measured before each round's aggregation) falls round on
  # round: from ~2.3 (chance over 10 classes) as the aggregated updates take effect.
  assert losses[0] > losses[1] > losses[2]
  assert losses[2] < 0.9 * losses[0]
  # Only the 784 x 32 kernel (25,088 of 25,450 parameters) is compressed; the rest is float32.
  quantizer = tff_hsq.HSQFactory(**tff_hsq.presets.get(preset)).quantizer
  expected = (quantizer.bits_per_coordinate(25088) * 25088 + 32 * (25450 - 25088)) / 25450
  assert hsq['bits_per_coordinate'] == pytest.approx(expected, rel=1e-6)
