r"""Speed and memory of HSQ, measured side by side with baselines in one run.

  python benchmarks/speed_memory.py [--quick]

1. Client encode and server decode time of one client's float32 tensor of 0.1M, 1M and 10M
   entries (graph mode, medians of interleaved repeats) for every preset, as ratios to TFF's
   uniform 8-bit encode / decode (tensorflow_model_optimization's `uniform_quantization`, what
   `tff.learning.compression_aggregator` runs) and to an uncompressed sum (the server adding
   one float32 client tensor to its running sum), all in the same run.
2. FedAvg round time with `tff_hsq.learning.hsq_aggregator()` over the round time with
   `tff.learning.compression_aggregator()`: a 101,770-parameter Keras MLP, 10 clients of 200
   MNIST-5k images, rounds interleaved, median.
3. Peak extra resident memory of encoding 1M, 10M and 50M entries with `balanced`, in a fresh
   subprocess each, against the tensor's bytes (RSS sampled every millisecond), and the
   marginal extra bytes per tensor byte between the smallest and largest size.

`--quick` (run by tests/benchmarks_test.py): 0.1M and 1M entries, 3 repeats, memory up to 10M.

Writes benchmarks/results/speed_memory.{md,csv,png}.
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


def codec_speed(n, repeats):
  """{(n, subject, 'encode' | 'decode'): median seconds} for one client's tensor of n entries.

  Subjects: `uncompressed_sum` (the server adding one float32 client tensor to its running sum:
  what a plain sum costs per client, under both columns), `tff_uniform_8bit` (TFF's
  tensorflow_model_optimization uniform_quantization(8): its encode on the client, its decode
  on the server) and every HSQ preset (Quantizer.encode / Quantizer.decode). All in graph mode
  (tf.function), timed interleaved: one call of each per pass.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_model_optimization.python.core.internal import tensor_encoding as te  # pylint: disable=g-import-not-at-top
  import tff_hsq  # pylint: disable=g-import-not-at-top
  seed = tf.constant([1, 2], tf.int64)
  x = tf.random.stateless_normal([n], seed=[5, 6])
  acc = tf.random.stateless_normal([n], seed=[7, 8])
  fns = {}
  add = tf.function(tf.add)
  fns[('uncompressed_sum', 'encode')] = lambda: add(acc, x).numpy()
  uniform = te.encoders.as_simple_encoder(te.encoders.uniform_quantization(8),
                                          tf.TensorSpec([n], tf.float32))
  uniform_encode = tf.function(uniform.encode)
  uniform_decode = tf.function(uniform.decode)
  encoded, params = uniform_encode(x)
  fns[('tff_uniform_8bit', 'encode')] = (
      lambda: [t.numpy() for t in tf.nest.flatten(uniform_encode(x))])
  fns[('tff_uniform_8bit', 'decode')] = (
      lambda e=encoded, p=params: uniform_decode(e, p).numpy())
  for name in tff_hsq.presets.ALL:
    q = tff_hsq.Quantizer(**tff_hsq.presets.get(name))
    encode = tf.function(lambda v, s, q=q: q.encode(v, s).components, autograph=False)
    components = encode(x, seed)
    decode = tf.function(
        lambda c, q=q, n=n: q.decode(tff_hsq.Message(c, tf.TensorShape([n]), tf.float32)),
        autograph=False)
    fns[(name, 'encode')] = lambda e=encode: [t.numpy() for t in e(x, seed).values()]
    fns[(name, 'decode')] = lambda d=decode, c=components: d(c).numpy()
  for fn in fns.values():
    fn()  # trace
  medians = {(n,) + key: seconds for key, seconds in common.median_times(fns, repeats).items()}
  medians[(n, 'uncompressed_sum', 'decode')] = medians[(n, 'uncompressed_sum', 'encode')]
  print(f'timed {n:,} entries', flush=True)
  return medians


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


def _plot(speed, sizes, subjects, path):
  """Encode and decode time over TFF uniform 8-bit's, per subject and size (log scale)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
  width = 0.8 / len(sizes)
  for ax, column in zip(axes, ('encode', 'decode')):
    for j, n in enumerate(sizes):
      ratios = [speed[(n, s, column)] / speed[(n, 'tff_uniform_8bit', column)] for s in subjects]
      ax.bar(np.arange(len(subjects)) + (j - (len(sizes) - 1) / 2) * width, ratios, width,
             label=f'{n:,} entries')
    ax.axhline(1.0, color='k', linewidth=0.8)
    if column == 'encode':
      ax.axhline(3.0, color='r', linestyle='--', linewidth=0.8, label='target: 3x')
    ax.set_xticks(np.arange(len(subjects)), subjects, rotation=35, ha='right', fontsize=8)
    ax.set_yscale('log')
    ax.set_title(f'{column} time / TFF uniform 8-bit {column}')
    ax.grid(alpha=0.3, axis='y')
  axes[0].legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true',
                      help='fewer repeats; 0.1M and 1M entries; memory up to 10M')
  parser.add_argument('--memory_child', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_child:
    memory_child(args.memory_child)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  import tff_hsq  # pylint: disable=g-import-not-at-top
  tff_hsq.runtime.stop_local_workers_at_exit()
  repeats = 3 if args.quick else 15
  sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
  speed = {}
  for n in sizes:
    # A 10M-entry pass of every preset takes seconds: fewer repeats there.
    speed.update(codec_speed(n, repeats if n < 10**7 else max(3, repeats // 3)))
  subjects = ['uncompressed_sum', 'tff_uniform_8bit'] + list(tff_hsq.presets.ALL)
  rounds = round_time(3 if args.quick else 9)
  memory_sizes = [10**6, 10**7] if args.quick else [10**6, 10**7, 5 * 10**7]
  extras = {n: memory(n) for n in memory_sizes}

  rows = []  # (study, size, subject, value, ratio to TFF 8-bit / baseline, ratio to plain sum)
  for n in sizes:
    for subject in subjects:
      for column in ('encode', 'decode'):
        seconds = speed[(n, subject, column)]
        rows.append((f'{column}_seconds', n, subject, seconds,
                     seconds / speed[(n, 'tff_uniform_8bit', column)],
                     seconds / speed[(n, 'uncompressed_sum', column)]))
  base = rounds['compression_aggregator()']
  for name, seconds in rounds.items():
    rows.append(('fedavg_round_seconds', 101770, name, seconds, seconds / base, float('nan')))
  for n, extra in extras.items():
    rows.append(('encode_peak_extra_rss_bytes', n, 'balanced', extra, extra / (4 * n),
                 float('nan')))
  # The per-byte cost, without TF's fixed cost of running a new graph (tens of MiB).
  small, large = memory_sizes[0], memory_sizes[-1]
  marginal = (extras[large] - extras[small]) / (4 * (large - small))
  rows.append(('encode_peak_extra_rss_bytes', large - small, f'balanced, marginal {small:,} -> '
               f'{large:,}', extras[large] - extras[small], marginal, float('nan')))

  os.makedirs(common.RESULTS, exist_ok=True)
  with open(os.path.join(common.RESULTS, 'speed_memory.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['study', 'entries', 'subject', 'value', 'ratio_to_baseline',
                     'ratio_to_uncompressed_sum'])
    writer.writerows(rows)
  _plot(speed, sizes, subjects, os.path.join(common.RESULTS, 'speed_memory.png'))

  lines = [
      '# Speed and memory (benchmarks/speed_memory.py)', '',
      f'Machine: {os.cpu_count()} cores (shared), {platform.machine()}, Python '
      f'{platform.python_version()}, TensorFlow {tf.__version__}, TFF {tff.__version__}. '
      f'Medians of {repeats} interleaved repeats ({max(3, repeats // 3)} at 10M entries)'
      f'{" (--quick)" if args.quick else ""}.', '',
      'Per client, one float32 tensor of the size given (a model of that many parameters). '
      'Encode runs on the client, decode on the server; `uncompressed_sum` is the server adding '
      'one uncompressed client tensor to its running sum (both columns). Ratios are to TFF\'s '
      'uniform 8-bit encode/decode (what `tff.learning.compression_aggregator` runs) and to '
      'the uncompressed sum, in the same run.', '']
  for n in sizes:
    lines += [f'## {n:,} entries', '',
              '| subject | encode ms | / TFF 8-bit | / sum | decode ms | / TFF 8-bit | / sum |',
              '|---|---|---|---|---|---|---|']
    for subject in subjects:
      e, d = speed[(n, subject, 'encode')], speed[(n, subject, 'decode')]
      e8, d8 = speed[(n, 'tff_uniform_8bit', 'encode')], speed[(n, 'tff_uniform_8bit', 'decode')]
      plain = speed[(n, 'uncompressed_sum', 'encode')]
      lines.append(f'| {subject} | {e * 1e3:.2f} | {e / e8:.2f} | {e / plain:.1f} | '
                   f'{d * 1e3:.2f} | {d / d8:.2f} | {d / plain:.1f} |')
    lines.append('')
  lines += ['## FedAvg round time', '',
            '101,770-parameter Keras MLP, 10 clients of 200 MNIST-5k images, rounds interleaved.',
            '', '| model_aggregator | round ms | / compression_aggregator() |', '|---|---|---|']
  for name, seconds in rounds.items():
    lines.append(f'| {name} | {seconds * 1e3:.1f} | {seconds / base:.2f} |')
  lines += ['', '## Peak extra memory of a balanced encode', '',
            'RSS sampled every millisecond in a fresh process, over the RSS before the encode.',
            '', '| entries | tensor MiB | peak extra MiB | / tensor bytes |', '|---|---|---|---|']
  for n, extra in extras.items():
    lines.append(f'| {n:,} | {4 * n / 2**20:.1f} | {extra / 2**20:.1f} | {extra / (4 * n):.2f} |')
  lines.append(f'| marginal {small:,} -> {large:,} | {4 * (large - small) / 2**20:.1f} | '
               f'{(extras[large] - extras[small]) / 2**20:.1f} | {marginal:.2f} |')
  one_m = 10**6
  encode_ratio = speed[(one_m, 'balanced', 'encode')] / speed[(one_m, 'tff_uniform_8bit', 'encode')]
  round_ratio = rounds['hsq_aggregator()'] / base
  memory_ratio = max(extras[n] / (4 * n) for n in memory_sizes if n >= 10**7)
  lines += ['', '## Targets (issue 6)', '', '| target | measured | met |', '|---|---|---|',
            f'| balanced encode of 1M entries <= 3x TFF uniform 8-bit | {encode_ratio:.2f}x | '
            f'{"yes" if encode_ratio <= 3 else "no"} |',
            f'| FedAvg round with hsq_aggregator() <= 1.25x compression_aggregator() | '
            f'{round_ratio:.2f}x | {"yes" if round_ratio <= 1.25 else "no"} |',
            f'| peak extra memory of encoding (>= 10M entries) < 2x the tensor | '
            f'{memory_ratio:.2f}x | {"yes" if memory_ratio < 2 else "no"} |']
  common.write_markdown('speed_memory', lines)


if __name__ == '__main__':
  main()
