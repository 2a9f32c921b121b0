r"""Rotated HSQ (issue 7) against DRIVE, measured in one run.

  python benchmarks/rotated.py [--quick]

For 0.5, 0.75 and 1.0 bit per coordinate (d = 16 / K = 256, d = 16 / K = 4096, d = 8 /
K = 256; blocks of 2^14 with one float32 scale each and a 64-bit rotation key per tensor):

1. NMSE ||x_hat - x||^2 / ||x||^2 (mean over M encode seeds) and the bias ratio
   ||mean_M(x_hat) - x||^2 / (NMSE ||x||^2 / M), which is ~1 for an unbiased quantizer (the
   statistical floor) and grows like M for a biased one; on a Gaussian vector of 2^20 entries
   and on a real client update (`examples/quantize_update.py`'s `client_update`: a 101,770-
   parameter MLP after one local epoch on MNIST 5k), for both block scales (unbiased,
   projection) and both codebooks (Gaussian k-means, the rotated default, and signed spherical
   k-means).
2. DRIVE (Vargaftik et al., NeurIPS 2021), `peers.drive` (benchmarks/peers.py): the whole tensor
   zero-padded to a power of two, a randomized Hadamard rotation R, 1-bit signs of R x and the
   unbiased scale ||x||^2 / ||R x||_1 (one float32); decode S R^T sign(R x).
3. Encode time of a 2^20-entry float32 tensor (graph mode, median of interleaved repeats) for
   the rotated presets against TFF's uniform 8-bit encode, timed as benchmarks/speed_memory.py
   does.

Writes benchmarks/results/rotated.{md,csv,png}.
"""

import argparse
import csv
import os
import platform
import sys

import numpy as np

import common  # benchmarks/common.py
import peers  # benchmarks/peers.py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
RESULTS = common.RESULTS

RATES = ((0.5, 16, 256), (0.75, 16, 4096), (1.0, 8, 256))


def measure(encode_decode, tensors, trials):
  """(NMSE, bias ratio, bits per coordinate) of a quantizer over `trials` seeds."""
  energy = sum(np.sum(t.astype(np.float64)**2) for t in tensors)
  decodes, errors, bits = [], [], 0
  for trial in range(trials):
    outs = []
    bits = 0
    for i, t in enumerate(tensors):
      x_hat, b = encode_decode(t, trial, i)
      outs.append(x_hat.astype(np.float64).reshape(-1))
      bits += b
    decodes.append(np.concatenate(outs))
  x = np.concatenate([t.astype(np.float64).reshape(-1) for t in tensors])
  decodes = np.stack(decodes)
  errors = np.sum((decodes - x)**2, axis=1) / energy
  nmse = float(np.mean(errors))
  of_mean = np.sum((decodes.mean(axis=0) - x)**2) / energy
  return nmse, float(of_mean / (nmse / trials)), bits / x.size


def hsq_fn(tf, tff_hsq, quantizer):
  encoders = {}

  def run(t, trial, i):
    if t.shape not in encoders:
      encoders[t.shape] = tf.function(
          lambda v, s: quantizer.encode(v, s).components, autograph=False)
    components = encoders[t.shape](tf.constant(t), tf.constant([trial, 1000 + i], tf.int64))
    message = tff_hsq.Message(components, t.shape, tf.float32)
    return quantizer.decode(message).numpy(), message.num_bits()
  return run


def drive_fn(t, trial, i):
  return peers.drive(t.reshape(-1), np.random.default_rng([trial, i, 77]))


def encode_speed(tf, tff_hsq, quantizers, repeats):
  from tensorflow_model_optimization.python.core.internal import tensor_encoding as te  # pylint: disable=g-import-not-at-top
  n = 2**20
  x = tf.random.stateless_normal([n], seed=[5, 6])
  seed = tf.constant([1, 2], tf.int64)
  uniform = te.encoders.as_simple_encoder(te.encoders.uniform_quantization(8),
                                          tf.TensorSpec([n], tf.float32))
  uniform_encode = tf.function(lambda v: uniform.encode(v)[0])
  fns = {'tff_uniform_8bit': lambda: [t.numpy() for t in tf.nest.flatten(uniform_encode(x))]}
  for name, q in quantizers.items():
    encode = tf.function(lambda v, s, q=q: q.encode(v, s).components, autograph=False)
    fns[name] = (lambda e=encode: [t.numpy() for t in e(x, seed).values()])
  for fn in fns.values():
    fn()  # trace
  return common.median_times(fns, repeats)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true', help='fewer seeds and timing repeats')
  args = parser.parse_args()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tff_hsq  # pylint: disable=g-import-not-at-top
  from examples import quantize_update  # pylint: disable=g-import-not-at-top
  trials = 4 if args.quick else 16
  repeats = 5 if args.quick else 15

  gaussian = [np.random.default_rng(2024).standard_normal(2**20).astype(np.float32)]
  update = [np.asarray(w, np.float32) for w in quantize_update.client_update(0, 10)]
  data = {'gaussian_2^20': gaussian, 'client_update': update}

  rows = []  # (data, method, codebook, scale, target bits, bits, nmse, bias ratio)
  for data_name, tensors in data.items():
    nmse, bias, bits = measure(drive_fn, tensors, trials)
    rows.append((data_name, 'drive_1bit_sign', '-', 'unbiased', 1.0, bits, nmse, bias))
    print(rows[-1], flush=True)
    for rate, dim, size in RATES:
      for kind in ('gaussian_kmeans', 'signed_spherical_kmeans'):
        for scale in ('unbiased', 'projection'):
          if kind != 'gaussian_kmeans' and (scale != 'unbiased' or data_name != 'gaussian_2^20'):
            continue  # the codebook comparison: unbiased NMSE on Gaussian data
          if kind != 'gaussian_kmeans' and size > 256 and args.quick:
            continue  # fitting 2048 spherical lines takes minutes
          q = tff_hsq.Quantizer(dim=dim, codebook_size=size, mode='rotated', codebook=kind,
                                rotated_scale=scale)
          nmse, bias, bits = measure(hsq_fn(tf, tff_hsq, q), tensors, trials)
          rows.append((data_name, f'rotated_d{dim}_k{size}', kind, scale, rate, bits, nmse, bias))
          print(rows[-1], flush=True)

  speed = encode_speed(tf, tff_hsq, {
      f'rotated_d{d}_k{k}': tff_hsq.Quantizer(dim=d, codebook_size=k, mode='rotated')
      for _, d, k in RATES}, repeats)
  base = speed['tff_uniform_8bit']

  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, 'rotated.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['study', 'data', 'method', 'codebook', 'scale', 'target_bits',
                     'bits_per_coordinate', 'nmse', 'bias_ratio', 'seconds', 'ratio_to_uniform8'])
    for r in rows:
      writer.writerow(('rate_distortion',) + r + ('', ''))
    for name, seconds in speed.items():
      writer.writerow(('encode_1M', 'gaussian_2^20', name, '', '', '', '', '', '', seconds,
                       seconds / base))
  lines = [
      '# Rotated HSQ against DRIVE (benchmarks/rotated.py)', '',
      f'Machine: {os.cpu_count()} cores, {platform.machine()}, Python '
      f'{platform.python_version()}, TensorFlow {tf.__version__}. {trials} encode seeds per row'
      f'{" (--quick)" if args.quick else ""}; encode times are medians of {repeats} repeats.', '',
      'NMSE = mean over seeds of ||x_hat - x||^2 / ||x||^2. Bias ratio = ||mean of the '
      f'{trials} decodes - x||^2 / (NMSE ||x||^2 / {trials}): ~1 (within a few tens of percent at '
      f'this many seeds) when unbiased, ~{trials} x (1 + bias/variance) when biased.', '',
      '| data | method | codebook | scale | bits/coord | NMSE | bias ratio |',
      '|---|---|---|---|---|---|---|']
  for data_name, method, kind, scale, _, bits, nmse, bias in rows:
    lines.append(f'| {data_name} | {method} | {kind} | {scale} | {bits:.4f} | {nmse:.4f} | '
                 f'{bias:.2f} |')
  lines += ['', '| encode 2^20 float32 | ms | / TFF uniform 8-bit |', '|---|---|---|']
  for name, seconds in speed.items():
    lines.append(f'| {name} | {seconds * 1e3:.2f} | {seconds / base:.2f} |')
  lines += ['', 'Issue 7 targets: 1.0 bit unbiased NMSE <= 0.45 on Gaussian vectors; 0.5 bit '
            '<= 1.3; encode <= 3x TFF uniform 8-bit.']
  common.write_markdown('rotated', lines)

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, data_name in zip(axes, data):
    for scale, marker in (('unbiased', 'o-'), ('projection', 's--')):
      pts = sorted((r[5], r[6]) for r in rows if r[0] == data_name and
                   r[2] == 'gaussian_kmeans' and r[3] == scale)
      ax.plot(*zip(*pts), marker, label=f'rotated HSQ, {scale} scale')
    pts = [(r[5], r[6]) for r in rows if r[0] == data_name and r[2] == 'signed_spherical_kmeans']
    if pts:
      ax.plot(*zip(*sorted(pts)), 'x:', label='rotated HSQ, spherical codebook, unbiased')
    for r in rows:
      if r[0] == data_name and r[1] == 'drive_1bit_sign':
        ax.plot([r[5]], [r[6]], 'k*', markersize=12, label='DRIVE (1-bit sign, unbiased)')
    ax.set_title(data_name)
    ax.set_xlabel('bits per coordinate')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('NMSE')
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(RESULTS, 'rotated.png'), dpi=120)


if __name__ == '__main__':
  main()
