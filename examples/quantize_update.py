r"""Encodes a real model update with every HSQ preset and prints bits/coordinate and NMSE.

The update is what a federated client would upload: the change of a Keras model's weights after
one epoch of local SGD on a non-IID shard of the offline MNIST 5k data. Each float tensor is
encoded with `tff_hsq.Quantizer` and decoded again; bits are counted from the messages sent.

  python examples/quantize_update.py [--seed 0] [--clients 10]
"""

import os
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tff_hsq  # pylint: disable=g-import-not-at-top
from tff_hsq import presets  # pylint: disable=g-import-not-at-top
from examples import data  # pylint: disable=g-import-not-at-top
from examples import models  # pylint: disable=g-import-not-at-top

_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the client split, model and local training.')
_CLIENTS = flags.DEFINE_integer('clients', 10, 'Number of non-IID clients (Dirichlet 0.5).')


def client_update(seed, num_clients):
  """The weight deltas of one client's local epoch: a list of float32 numpy arrays."""
  return local_update(*data.mnist5k(), seed, num_clients)


def local_update(images, labels, seed, num_clients):
  """Weight deltas of `models.mlp(seed)` after one epoch of SGD (lr 0.1, batch 20) on client 0.

  Client 0 of a Dirichlet(0.5) split of (images, labels) into `num_clients`, as a federated
  client would upload them: a list of float32 numpy arrays, one per weight.
  """
  shard = data.dirichlet_split(labels, num_clients, alpha=0.5, seed=seed)[0]
  model = models.mlp(seed)
  before = [w.copy() for w in model.get_weights()]
  model.compile(optimizer=tf.keras.optimizers.SGD(0.1),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(images[shard], labels[shard], batch_size=20, epochs=1, verbose=0)
  return [after - b for after, b in zip(model.get_weights(), before)]


def evaluate(quantizer, tensors, seed):
  """(bits per coordinate, NMSE) of encoding every tensor in `tensors` with `quantizer`."""
  bits = 0
  error = 0.0
  energy = 0.0
  for i, x in enumerate(tensors):
    message = quantizer.encode(tf.constant(x), tf.constant([seed, i]))
    x_hat = quantizer.decode(message).numpy()
    bits += message.num_bits()
    error += np.sum((x_hat.astype(np.float64) - x)**2)
    energy += np.sum(x.astype(np.float64)**2)
  return bits / sum(x.size for x in tensors), error / energy


def main(argv):
  del argv
  update = client_update(_SEED.value, _CLIENTS.value)
  num_params = sum(w.size for w in update)
  gaussian = [np.random.default_rng(_SEED.value + 1000).standard_normal(2**20).astype(np.float32)]
  print(f'A client update of a {num_params:,}-parameter MLP after one local epoch on '
        f'MNIST 5k ({_CLIENTS.value} Dirichlet(0.5) clients), and a Gaussian vector of 2^20.')
  print(f'{"preset":<14} {"mode":<11} {"bits/coord":>10} {"ratio":>8} {"NMSE update":>12} '
        f'{"NMSE gauss":>11} {"encode s":>9}')
  for name in presets.PRESETS:
    quantizer = tff_hsq.Quantizer(**presets.get(name))
    start = time.perf_counter()
    bits, update_nmse = evaluate(quantizer, update, _SEED.value)
    seconds = time.perf_counter() - start
    _, gaussian_nmse = evaluate(quantizer, gaussian, _SEED.value)
    print(f'{name:<14} {quantizer.mode:<11} {bits:>10.4f} {32 / bits:>7.1f}x '
          f'{update_nmse:>12.4f} {gaussian_nmse:>11.4f} {seconds:>9.2f}')


if __name__ == '__main__':
  app.run(main)
