r"""Convergence of FedAvg under HSQ and its baselines (issue 6, study 2), measured in one run.

  python benchmarks/convergence.py [--quick] [--rounds N] [--seeds 0,1,2]
      [--datasets mnist5k,fashion_mnist] [--aggregators none,balanced,...]
      [--max_examples_per_client fashion_mnist=1000 | N] [--hsq_threshold N] [--work_dir DIR]

Test accuracy against rounds and against cumulative client upload, for `none`,
`tff_compression` and the HSQ presets high_fidelity, balanced, extreme, unbiased, rotated and
log_d (as hsq_aggregator builds them), and `balanced_projection` (balanced with the paper's
projection scale instead of hsq_aggregator's rescaled one), on mnist5k and fashion_mnist, 3 seeds (0, 1, 2). Every aggregator sees the same clients,
rounds and seeds: examples/train.py splits the data by seed and samples each round's clients
from (seed, round). One train.py subprocess per (dataset, seed) runs all aggregators
(--noresume, in a work dir under /tmp); the study then reads each run's metrics.csv.

Default configuration (the full study, ~27 minutes on 2 shared cores: ~150 s per mnist5k
and ~6.5 minutes per fashion_mnist train.py run of 9 aggregators; the Markdown header records
the measured times): 20 rounds, 20 clients, 10 per round, seeds 0, 1, 2; every client's data
uncapped (mnist5k ~200 examples per client, fashion_mnist ~3,000: the same setting as
examples/train.py's defaults; `--max_examples_per_client=fashion_mnist=1000` makes its part
~3x faster); HSQ presets as
`tff_hsq.learning.hsq_aggregator(preset)` builds them (its default threshold; --hsq_threshold
passes train.py's). All of it can be overridden on the command line; --max_examples_per_client
takes one number for every dataset, or dataset=N pairs (dataset=none: uncapped).

`--quick` (for the tests, well under 3 minutes): mnist5k, seed 0, 3 rounds, `none`,
`balanced` and `balanced_projection`, 50 examples per client; the same three files with the same columns and tables.

Reported (benchmarks/results/convergence.md): per dataset and aggregator the bits per
coordinate (over all model parameters, as train.py reports), compression ratio 32 / bits,
final-round test accuracy (mean, sample std over seeds) and its difference to `none` (mean of
the per-seed differences, with their std and range); the cumulative upload to reach a target
accuracy (none's mean final accuracy - 2 points; per seed the first round at or above it);
and the issue 6 / issue 7 targets, computed. convergence.csv has one row per dataset x
aggregator x seed x round; convergence.png plots accuracy against rounds and against
cumulative upload (log x), mean over seeds with a min-max band.
"""

import argparse
import csv
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import common  # pylint: disable=g-import-not-at-top  # benchmarks/common.py

RESULTS = common.RESULTS
NAME = 'convergence'

DATASETS = ('mnist5k', 'fashion_mnist')
AGGREGATORS = ('none', 'tff_compression', 'high_fidelity', 'balanced', 'extreme', 'unbiased',
               'rotated', 'log_d', 'balanced_projection')
DEFAULT_MAX_EXAMPLES = {'mnist5k': None, 'fashion_mnist': None}
TARGET_DROP = 2.0  # points below none's mean final accuracy: the upload-to-target accuracy

QUICK = dict(datasets=['mnist5k'], aggregators=['none', 'balanced', 'balanced_projection'],
             seeds=[0], rounds=3,
             max_examples={'mnist5k': 50, 'fashion_mnist': 50})
FULL = dict(datasets=list(DATASETS), aggregators=list(AGGREGATORS), seeds=[0, 1, 2],
            rounds=20, max_examples=dict(DEFAULT_MAX_EXAMPLES))

COLUMNS = ('dataset', 'aggregator', 'seed', 'round', 'test_accuracy', 'train_loss',
           'bits_per_coordinate', 'upload_mb')


def _list(text):
  return [item.strip() for item in text.split(',') if item.strip()]


def _max_examples(text, datasets):
  """'N' (every dataset) or 'dataset=N,...' (N may be 'none') -> {dataset: int or None}."""
  caps = {}
  for item in _list(text):
    if '=' in item:
      dataset, value = item.split('=', 1)
      caps[dataset.strip()] = None if value.strip().lower() == 'none' else int(value)
    else:
      value = None if item.lower() == 'none' else int(item)
      caps.update({d: value for d in datasets})
  return caps


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='mnist5k, 1 seed, 3 rounds, none + balanced, 50 examples/client')
  parser.add_argument('--datasets', type=_list, help=f'comma list from {DATASETS}')
  parser.add_argument('--aggregators', type=_list, help='comma list of train.py aggregators')
  parser.add_argument('--seeds', type=lambda s: [int(x) for x in _list(s)])
  parser.add_argument('--rounds', type=int)
  parser.add_argument('--max_examples_per_client', type=str,
                      help="one N for every dataset or 'dataset=N,...' (N may be 'none')")
  parser.add_argument('--clients', type=int, default=20)
  parser.add_argument('--clients_per_round', type=int, default=10)
  parser.add_argument('--hsq_threshold', type=int, default=None,
                      help="HSQ presets: train.py's --hsq_threshold (default: hsq_aggregator's)")
  parser.add_argument('--work_dir', type=str, default=None,
                      help='keep the train.py runs here (default: a temp dir, deleted)')
  args = parser.parse_args()
  config = dict(QUICK if args.quick else FULL)
  config['max_examples'] = dict(config['max_examples'])
  for key in ('datasets', 'aggregators', 'seeds', 'rounds'):
    if getattr(args, key) is not None:
      config[key] = getattr(args, key)
  if args.max_examples_per_client is not None:
    config['max_examples'].update(_max_examples(args.max_examples_per_client, config['datasets']))
  if 'none' not in config['aggregators']:
    config['aggregators'] = ['none'] + config['aggregators']  # the reference of every table
  unknown = [d for d in config['datasets'] if d not in DATASETS]
  if unknown:
    parser.error(f'unknown dataset(s) {unknown}; choose from {DATASETS}')
  return args, config


def run_train(dataset, seed, config, args, work_dir):
  """Runs train.py for one (dataset, seed) with every aggregator; returns its wall seconds."""
  run_dir = os.path.join(work_dir, f'{dataset}_seed{seed}')
  argv = [sys.executable, os.path.join(ROOT, 'examples', 'train.py'), f'--dataset={dataset}',
          f'--aggregators={",".join(config["aggregators"])}', f'--rounds={config["rounds"]}',
          f'--seed={seed}', f'--clients={args.clients}',
          f'--clients_per_round={args.clients_per_round}', f'--output_dir={run_dir}',
          '--noresume']
  cap = config['max_examples'].get(dataset)
  if cap is not None:
    argv.append(f'--max_examples_per_client={cap}')
  if args.hsq_threshold is not None:
    argv.append(f'--hsq_threshold={args.hsq_threshold}')
  # Output to files, not pipes: a TFF worker process could outlive train.py and hold a pipe.
  log = os.path.join(work_dir, f'{dataset}_seed{seed}.log')
  start = time.perf_counter()
  with open(log, 'w') as out:
    code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  seconds = time.perf_counter() - start
  if code:
    with open(log) as f:
      sys.stderr.write(f.read()[-4000:])
    raise RuntimeError(f'train.py failed ({code}): {" ".join(argv)}; log {log}')
  return run_dir, seconds


def read_metrics(run_dir):
  """examples/train.py's read_metrics (a run's metrics.csv as float columns, key = round).

  Repeated here so that this process never imports tensorflow_federated (seconds of start-up,
  and a TFF process must not hold the output pipe of whoever runs the study).
  """
  with open(os.path.join(run_dir, 'metrics.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  return {column: np.array([float(r[column]) for r in rows]) for column in rows[0]}


def read_runs(run_dirs, config):
  """CSV rows (dicts of COLUMNS) of every (dataset, seed) run's metrics.csv files."""
  rows = []
  for (dataset, seed), run_dir in run_dirs.items():
    for name in config['aggregators']:
      metrics = read_metrics(os.path.join(run_dir, dataset, name))
      for i, round_num in enumerate(metrics['key']):
        rows.append(dict(dataset=dataset, aggregator=name, seed=seed, round=int(round_num),
                         test_accuracy=metrics['test_accuracy'][i],
                         train_loss=metrics['train_loss'][i],
                         bits_per_coordinate=metrics['bits_per_coordinate'][i],
                         upload_mb=metrics['upload_mb'][i]))
  return rows


def curves(rows):
  """{(dataset, aggregator): {column: [seeds, rounds] array}, plus 'seeds'}, rounds sorted."""
  by_key = {}
  for r in rows:
    by_key.setdefault((r['dataset'], r['aggregator']), {}).setdefault(r['seed'], []).append(r)
  out = {}
  for key, seeds in by_key.items():
    order = sorted(seeds)
    runs = [sorted(seeds[s], key=lambda r: r['round']) for s in order]
    out[key] = {c: np.array([[r[c] for r in run] for run in runs], np.float64)
                for c in ('round', 'test_accuracy', 'train_loss', 'bits_per_coordinate',
                          'upload_mb')}
    out[key]['seeds'] = order
  return out


def _std(values):
  values = np.asarray(values, np.float64)
  return float(np.std(values, ddof=1)) if values.size > 1 else 0.0


def summarize(data, datasets, aggregators):
  """Per (dataset, aggregator): bits, ratio, final accuracy, diff to none, upload to target."""
  summary, targets = {}, {}
  for dataset in datasets:
    none = data[(dataset, 'none')]
    target = float(np.mean(none['test_accuracy'][:, -1])) - TARGET_DROP / 100
    targets[dataset] = target
    for name in aggregators:
      c = data[(dataset, name)]
      assert c['seeds'] == none['seeds'], (dataset, name, c['seeds'], none['seeds'])
      assert np.array_equal(c['round'], none['round']), (dataset, name)
      final = c['test_accuracy'][:, -1]
      diff = 100 * (final - none['test_accuracy'][:, -1])  # points, per seed
      bits = float(np.mean(c['bits_per_coordinate']))
      reached_round, reached_upload = [], []
      for acc, rounds, upload in zip(c['test_accuracy'], c['round'], c['upload_mb']):
        hit = np.flatnonzero(acc >= target)
        reached_round.append(int(rounds[hit[0]]) if hit.size else None)
        reached_upload.append(float(upload[hit[0]]) if hit.size else None)
      summary[(dataset, name)] = dict(
          bits=bits, ratio=32 / bits if bits > 0 else float('inf'),
          acc_mean=float(np.mean(final)), acc_std=_std(final), diff_mean=float(np.mean(diff)),
          diff_std=_std(diff), diff_min=float(np.min(diff)), diff_max=float(np.max(diff)),
          seeds=len(final), reached=sum(r is not None for r in reached_round),
          round_to_target=(float(np.mean(reached_round))
                           if all(r is not None for r in reached_round) else None),
          upload_to_target=(float(np.mean(reached_upload))
                            if all(u is not None for u in reached_upload) else None),
          per_seed_round=reached_round, per_seed_upload=reached_upload,
          final_upload=float(np.mean(c['upload_mb'][:, -1])))
  return summary, targets


def check_targets(summary):
  """Rows (target, dataset, measured, met) of issue 6's and issue 7's targets, computed."""
  specs = []  # (aggregator, dataset or None = every dataset, label, stat, op, bound, unit)
  specs += [('balanced', None, 'balanced bits/coordinate <= 0.9', 'bits', '<=', 0.9, ''),
            ('balanced', None, 'balanced uploads >= 35x smaller than none', 'ratio', '>=', 35,
             'x'),
            ('balanced', None, 'balanced final accuracy within 1 point of none (mean diff >= -1)',
             'diff_mean', '>=', -1.0, ' pt'),
            ('extreme', None, 'extreme bits/coordinate <= 0.5', 'bits', '<=', 0.5, ''),
            ('extreme', None, 'extreme final accuracy within 2 points of none (mean diff >= -2)',
             'diff_mean', '>=', -2.0, ' pt'),
            ('rotated', 'fashion_mnist',
             'issue 7: rotated final accuracy within 0.5 points of none (mean diff >= -0.5)',
             'diff_mean', '>=', -0.5, ' pt')]
  rows = []
  for name, only, label, stat, op, bound, unit in specs:
    for dataset in ([only] if only else DATASETS):
      s = summary.get((dataset, name))
      if s is None:
        rows.append((label, dataset, 'not run', '-'))
        continue
      value = s[stat]
      met = value <= bound if op == '<=' else value >= bound
      if stat == 'diff_mean':
        text = (f'{value:+.2f}{unit} (std {s["diff_std"]:.2f}, {s["seeds"]} '
                f'seed{"s" if s["seeds"] > 1 else ""})')
      else:
        text = f'{value:.1f}{unit}' if stat == 'ratio' else f'{value:.3f}{unit}'
      rows.append((label, dataset, text, 'yes' if met else 'no'))
  return rows


def write_csv(rows):
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, f'{NAME}.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
      writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in r.items()})


def plot(data, datasets, aggregators, config):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.2 * len(datasets)),
                              squeeze=False)
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(aggregators)}
  styles = {name: ('-', '--', '-.', ':')[i % 4] for i, name in enumerate(aggregators)}
  for row, dataset in zip(axes, datasets):
    by_round, by_upload = row
    for name in aggregators:
      c = data[(dataset, name)]
      acc = c['test_accuracy']
      mean, low, high = acc.mean(axis=0), acc.min(axis=0), acc.max(axis=0)
      rounds, upload = c['round'][0], c['upload_mb'].mean(axis=0)
      for axis, x in ((by_round, rounds), (by_upload, upload)):
        axis.plot(x, mean, color=colors[name], linestyle=styles[name], label=name,
                  linewidth=1.5)
        axis.fill_between(x, low, high, color=colors[name], alpha=0.15, linewidth=0)
    cap = config['max_examples'].get(dataset)
    cap_text = f', <= {cap} examples/client' if cap is not None else ''
    by_round.set(xlabel='round', ylabel='test accuracy',
                 title=f'{dataset}{cap_text}: accuracy vs round')
    by_upload.set(xlabel='cumulative client upload (MB, all clients)', ylabel='test accuracy',
                  xscale='log', title=f'{dataset}: accuracy vs cumulative upload')
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in row:
      axis.grid(alpha=0.3)
    by_round.legend(fontsize=8, loc='lower right')
  seeds = len(config['seeds'])
  figure.suptitle(f'FedAvg, {config["rounds"]} rounds, mean over {seeds} seed'
                  f'{"s" if seeds > 1 else ""} (band: min-max)')
  figure.tight_layout()
  figure.savefig(os.path.join(RESULTS, f'{NAME}.png'), dpi=110)
  plt.close(figure)


def _version(package):
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return '?'


def markdown(summary, targets, target_rows, config, args, timings, total_seconds):
  datasets, aggregators = config['datasets'], config['aggregators']
  seeds = config['seeds']
  caps = ', '.join(f'{d} uncapped' if config['max_examples'].get(d) is None else
                   f'{d} <= {config["max_examples"][d]}' for d in datasets)
  threshold = (f'--hsq_threshold={args.hsq_threshold}' if args.hsq_threshold is not None else
               "tff_hsq.learning.hsq_aggregator's defaults (its threshold: smaller tensors "
               'sent as float32)')
  per_dataset = {d: [s for (dd, _), s in timings.items() if dd == d] for d in datasets}
  timing_text = '; '.join(
      f'{d}: {np.mean(t):.0f} s per train.py run ({len(aggregators)} aggregators)'
      for d, t in per_dataset.items() if t)
  lines = [
      '# Convergence: accuracy vs rounds and vs upload (benchmarks/convergence.py)', '',
      f'Machine: {os.cpu_count()} cores (shared), {platform.machine()}, {platform.system()}, '
      f'Python {platform.python_version()}, TensorFlow {_version("tensorflow")}, TFF '
      f'{_version("tensorflow-federated")}.'
      f'{" --quick." if args.quick else ""}', '',
      f'Configuration: examples/train.py FedAvg (784-128-10 MLP, client SGD lr 0.1, batch 20, '
      f'server SGD lr 1.0), {config["rounds"]} rounds, {args.clients} clients, '
      f'{args.clients_per_round} per round, seeds {", ".join(map(str, seeds))}; examples per '
      f'client: {caps}; HSQ presets at {threshold}. The same clients, rounds and seeds for '
      'every aggregator (train.py splits the data by seed and samples clients from (seed, '
      f'round)). Wall time {total_seconds / 60:.1f} min ({timing_text}).', '',
      'Bits/coordinate: over all model parameters, as train.py reports (mean over rounds and '
      'seeds); ratio = 32 / bits. Accuracy: test accuracy after the final round, mean and '
      'sample std over seeds. Diff to none: mean over seeds of (aggregator - none) in '
      'accuracy points, with their std and [min, max] — accuracy at equal rounds. Upload: '
      'cumulative over all clients of all rounds, as train.py counts it (HSQ: its measured '
      'message bits; tensors sent as float32 count 32 bits per entry).', '']
  for dataset in datasets:
    lines += [f'## {dataset}', '',
              '| aggregator | bits/coord | ratio | final accuracy | std | diff to none (pt) | '
              'diff std | diff [min, max] | upload MB (all rounds) |',
              '|---|---|---|---|---|---|---|---|---|']
    for name in aggregators:
      s = summary[(dataset, name)]
      lines.append(
          f'| {name} | {s["bits"]:.3f} | {s["ratio"]:.1f}x | {s["acc_mean"]:.4f} | '
          f'{s["acc_std"]:.4f} | {s["diff_mean"]:+.2f} | {s["diff_std"]:.2f} | '
          f'[{s["diff_min"]:+.2f}, {s["diff_max"]:+.2f}] | {s["final_upload"]:.3f} |')
    target = targets[dataset]
    base = summary[(dataset, 'none')]['upload_to_target']
    lines += ['', f'Upload to reach test accuracy >= {target:.4f} (none\'s mean final accuracy '
              f'- {TARGET_DROP:g} points), per seed at the first round that reaches it, mean '
              'over seeds:', '',
              '| aggregator | seeds reached | mean round | upload MB to target | ratio to none | '
              'per seed (round: MB) |', '|---|---|---|---|---|---|']
    for name in aggregators:
      s = summary[(dataset, name)]
      if s['upload_to_target'] is None:
        upload, ratio, round_text = 'not reached', '-', '-'
      else:
        upload = f'{s["upload_to_target"]:.3f}'
        round_text = f'{s["round_to_target"]:.1f}'
        ratio = f'{s["upload_to_target"] / base:.3f}' if base else '- (none not reached)'
      per_seed = ', '.join('not reached' if u is None else f'{r}: {u:.3f}'
                           for r, u in zip(s['per_seed_round'], s['per_seed_upload']))
      lines.append(f'| {name} | {s["reached"]}/{s["seeds"]} | {round_text} | {upload} | '
                   f'{ratio} | {per_seed} |')
    lines.append('')
  lines += ['## Targets (issue 6; issue 7 for rotated)', '',
            '| target | dataset | measured | met? |', '|---|---|---|---|']
  lines += [f'| {label} | {dataset} | {measured} | {met} |'
            for label, dataset, measured, met in target_rows]
  lines += ['', f'Per-round data: {NAME}.csv (dataset x aggregator x seed x round); plot: '
            f'{NAME}.png.']
  return lines


def main():
  args, config = parse_args()
  start = time.perf_counter()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix='tff_hsq_convergence_')
  os.makedirs(work_dir, exist_ok=True)
  try:
    run_dirs, timings = {}, {}
    total = len(config['datasets']) * len(config['seeds'])
    for dataset in config['datasets']:
      for seed in config['seeds']:
        run_dirs[(dataset, seed)], timings[(dataset, seed)] = run_train(
            dataset, seed, config, args, work_dir)
        print(f'[{len(run_dirs)}/{total}] {dataset} seed {seed}: '
              f'{timings[(dataset, seed)]:.0f} s', flush=True)
    rows = read_runs(run_dirs, config)
  finally:
    if args.work_dir is None:
      shutil.rmtree(work_dir, ignore_errors=True)
  total_seconds = time.perf_counter() - start
  write_csv(rows)
  data = curves(rows)
  summary, targets = summarize(data, config['datasets'], config['aggregators'])
  target_rows = check_targets(summary)
  common.write_markdown(NAME, markdown(summary, targets, target_rows, config, args, timings,
                                       total_seconds))
  plot(data, config['datasets'], config['aggregators'], config)


if __name__ == '__main__':
  main()
