r"""Speed and memory of HSQ, measured side by side with baselines in one run.

  python benchmarks/speed_memory.py [--quick]

1. Encode time of a 1M-entry float32 tensor (graph mode, median of interleaved repeats) for
   every preset, as ratios to `tf.reduce_sum` of the same tensor and to TFF's uniform 8-bit
   encoding (tensorflow_model_optimization's `uniform_quantization`, what
   `tff.learning.compression_aggregator` runs on clients).
2. FedAvg round time with `tff_hsq.learning.hsq_aggregator()` over the round time with
   `tff.learning.compression_aggregator()`: a 101,770-parameter Keras MLP, 10 clients of 200
   MNIST-5k images, rounds interleaved, median.
3. Peak extra resident memory of encoding 1M, 10M and 50M entries with `balanced`, in a fresh
   subprocess each, against the tensor's bytes (RSS sampled every millisecond), and the
   marginal extra bytes per tensor byte between the smallest and largest size.

Writes benchmarks/results/speed_memory.{md,csv}.
"""

import argparse
import collections
import csv
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py


def _rss_bytes():
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def memory_child(num_elements):
  """Runs in a subprocess: prints the peak extra RSS of one balanced encode."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tff_hsq  # pylint: disable=g-import-not-at-top
  q = tff_hsq.Quantizer(**tff_hsq.presets.get('balanced'))
  encode = tf.function(lambda x: q.encode(x, tf.constant([1, 2])).components, autograph=False)
  concrete = encode.get_concrete_function(tf.TensorSpec([num_elements], tf.float32))
  # Start TF's runtime on a small tensor only: a warm-up at full size would leave its freed
  # buffers mapped, and the measured encode would reuse them unseen.
  encode(tf.zeros([4096]))
  # numpy draws straight into a float32 buffer that TF then wraps: x costs 1x, no temporaries.
  x = tf.convert_to_tensor(
      np.random.default_rng(3).standard_normal(num_elements, dtype=np.float32))
  peak = [0]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss_bytes())
      time.sleep(0.001)

  base = _rss_bytes()
  thread = threading.Thread(target=sample)
  thread.start()
  out = concrete(x)
  _ = [t.numpy() for t in out.values()]
  done.set()
  thread.join()
  print(max(peak[0], _rss_bytes()) - base)


def encode_speed(repeats):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_model_optimization.python.core.internal import tensor_encoding as te  # pylint: disable=g-import-not-at-top
  import tff_hsq  # pylint: disable=g-import-not-at-top
  n = 2**20
  x = tf.random.stateless_normal([n], seed=[5, 6])
  seed = tf.constant([1, 2], tf.int64)
  fns = {}
  reduce_sum = tf.function(tf.reduce_sum)
  fns['tf.reduce_sum'] = lambda: reduce_sum(x).numpy()
  uniform = te.encoders.as_simple_encoder(te.encoders.uniform_quantization(8),
                                          tf.TensorSpec([n], tf.float32))
  uniform_encode = tf.function(lambda v: uniform.encode(v)[0])
  fns['tff_uniform_8bit'] = lambda: [t.numpy() for t in tf.nest.flatten(uniform_encode(x))]
  for name in tff_hsq.presets.PRESETS:
    q = tff_hsq.Quantizer(**tff_hsq.presets.get(name))
    encode = tf.function(lambda v, s, q=q: q.encode(v, s).components, autograph=False)
    fns[name] = (lambda e=encode: [t.numpy() for t in e(x, seed).values()])
  for fn in fns.values():
    fn()  # trace
  return common.median_times(fns, repeats)


def round_time(repeats):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  import tff_hsq  # pylint: disable=g-import-not-at-top
  from examples import data  # pylint: disable=g-import-not-at-top
  from examples import models  # pylint: disable=g-import-not-at-top
  images, labels = data.mnist5k()
  clients = [
      tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
          x=images[i * 200:(i + 1) * 200], y=labels[i * 200:(i + 1) * 200])).batch(20)
      for i in range(10)
  ]
  spec = clients[0].element_spec

  def build(aggregator):
    def model_fn():
      return tff.learning.models.from_keras_model(
          models.mlp(0), input_spec=spec,
          loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
        model_aggregator=aggregator)

  processes = {'hsq_aggregator()': build(tff_hsq.learning.hsq_aggregator()),
               'compression_aggregator()': build(tff.learning.compression_aggregator())}
  states = {name: p.initialize() for name, p in processes.items()}

  def step(name):
    def fn():
      states[name] = processes[name].next(states[name], clients).state
    return fn

  fns = {name: step(name) for name in processes}
  for fn in fns.values():
    fn()  # first round compiles
  return common.median_times(fns, repeats)


def memory(num_elements):
  out = subprocess.run([sys.executable, __file__, '--memory_child', str(num_elements)],
                       capture_output=True, text=True, check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  return int(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true', help='fewer repeats, up to 10M')
  parser.add_argument('--memory_child', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_child:
    memory_child(args.memory_child)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  import tff_hsq  # pylint: disable=g-import-not-at-top
  tff_hsq.runtime.stop_local_workers_at_exit()
  repeats = 5 if args.quick else 21
  rows = []
  speed = encode_speed(repeats)
  for name, seconds in speed.items():
    rows.append(('encode_1M', name, seconds, seconds / speed['tf.reduce_sum'],
                 seconds / speed['tff_uniform_8bit']))
  rounds = round_time(3 if args.quick else 9)
  base = rounds['compression_aggregator()']
  for name, seconds in rounds.items():
    rows.append(('fedavg_round_100k_10_clients', name, seconds, float('nan'), seconds / base))
  sizes = [10**6, 10**7] if args.quick else [10**6, 10**7, 5 * 10**7]
  extras = {}
  for n in sizes:
    extras[n] = memory(n)
    rows.append(('encode_peak_extra_rss', f'balanced, {n:,} entries', extras[n], float('nan'),
                 extras[n] / (4 * n)))
  # The per-byte cost, without TF's fixed cost of running a new graph (tens of MiB).
  small, large = sizes[0], sizes[-1]
  marginal = (extras[large] - extras[small]) / (4 * (large - small))
  rows.append(('encode_peak_extra_rss', f'marginal, {small:,} -> {large:,} entries',
               extras[large] - extras[small], float('nan'), marginal))

  os.makedirs(common.RESULTS, exist_ok=True)
  with open(os.path.join(common.RESULTS, 'speed_memory.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['study', 'subject', 'value', 'ratio_to_reduce_sum', 'ratio_to_baseline'])
    writer.writerows(rows)
  lines = [
      '# Speed and memory (benchmarks/speed_memory.py)', '',
      f'Machine: {os.cpu_count()} cores, {platform.machine()}, Python '
      f'{platform.python_version()}, TensorFlow {tf.__version__}, TFF {tff.__version__}. '
      f'Medians of {repeats} interleaved repeats{" (--quick)" if args.quick else ""}.', '',
      '| study | subject | value | / tf.reduce_sum | / baseline |', '|---|---|---|---|---|']
  for study, subject, value, r1, r2 in rows:
    unit = f'{value / 2**20:.1f} MiB' if study == 'encode_peak_extra_rss' else f'{value * 1e3:.2f} ms'
    lines.append(f'| {study} | {subject} | {unit} | {r1:.2f} | {r2:.2f} |')
  lines += ['', 'Baselines: encode_1M against TFF uniform 8-bit encode; fedavg round against '
            '`tff.learning.compression_aggregator()`; memory against the tensor\'s float32 bytes.']
  common.write_markdown('speed_memory', lines)


if __name__ == '__main__':
  main()
