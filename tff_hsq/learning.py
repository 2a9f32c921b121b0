"""Ready-made HSQ aggregators for `tff.learning` processes.

`hsq_aggregator` is the HSQ counterpart of `tff.learning.compression_aggregator`: the same
adaptive zeroing and optional adaptive clipping around a (weighted) mean whose sum is HSQ.
Pass it as `model_aggregator` to e.g. `tff.learning.algorithms.build_weighted_fed_avg`.

`dp_hsq_aggregator` is the HSQ counterpart of `tff.learning.dp_aggregator`: TFF's
`DifferentiallyPrivateFactory` (clipping on the clients, Gaussian noise on the server) whose
sum of clipped records is HSQ. For `tff.learning.algorithms.build_unweighted_fed_avg`.

`secure_hsq_aggregator` is the HSQ counterpart of `tff.learning.secure_aggregator`: clipping to
a fixed norm, then `tff_hsq.secure.SecureHSQFactory`, whose integer vectors the server only sees
summed (`tff.aggregators.SecureSumFactory`).
"""

import math
from typing import Optional

import tensorflow_federated as tff
import tensorflow_privacy as tfp
# TFF's own split of the noise budget between the value and the clipped-count estimate of
# adaptive clipping (what DifferentiallyPrivateFactory.gaussian_adaptive uses; not exported).
from tensorflow_federated.python.aggregators.differential_privacy import adaptive_clip_noise_params

from tff_hsq import factory as factory_lib
from tff_hsq import presets
from tff_hsq import secure as secure_lib


def _secure_count():
  """A secure sum of per-client 0/1 counts."""
  return tff.aggregators.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0)


def _adaptive_zeroing(inner, secure=False):
  # The schedule of tff.learning's own aggregators: zero a client whose update norm exceeds
  # 2 x (the 98th percentile of norms) + 1, estimated online from a start of 10. An Inf update
  # is zeroed here; a NaN one is not (NaN > bound is False) and HSQFactory drops it instead.
  # Under secure aggregation the norm estimate and the zeroed count are securely summed too.
  norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
      initial_estimate=10.0, target_quantile=0.98, learning_rate=math.log(10.0),
      multiplier=2.0, increment=1.0, secure_estimation=secure)
  if secure:
    return tff.aggregators.zeroing_factory(norm, inner, zeroed_count_sum_factory=_secure_count())
  return tff.aggregators.zeroing_factory(norm, inner)


def _adaptive_clipping(inner):
  # tff.learning's schedule: clip to the online estimate of the 80th percentile of norms.
  norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
      initial_estimate=1.0, target_quantile=0.8, learning_rate=0.2)
  return tff.aggregators.clipping_factory(norm, inner)


# hsq_aggregator's threshold: tensors of at least 100 entries are HSQ-encoded. HSQFactory's own
# default (20,000, TFF's compression_aggregator's) suits 8-bit quantization, which saves only
# 4x; HSQ's message for a tensor is ~D b + 32 bits, ~30x smaller already at a few hundred
# entries, and the float32 tensors left would otherwise dominate the upload of small models
# (the 101,770-parameter MLP of the examples: 24x smaller at 20,000, 36x at 100). With the
# rescaled scale, encoding the biases too cost no accuracy (benchmarks/convergence.py).
THRESHOLD = 100


def hsq_aggregator(preset: str = 'balanced',
                   *,
                   zeroing: bool = True,
                   clipping: bool = False,
                   weighted: bool = True,
                   **factory_kwargs) -> tff.aggregators.AggregationFactory:
  """A mean of HSQ-compressed client updates, with adaptive zeroing and optional clipping.

  The nearest-mode presets run with `nearest_scale='rescaled'`: the paper's projection scale
  shrinks every decoded update to about (1 - NMSE) of its length along the update (0.48x at
  `balanced`), and a mean of shrunk updates is a slower server step that averaging does not
  undo; rescaling each tensor's decode (no extra bits) removes it. Measured in
  benchmarks/convergence.py (20 rounds, 3 seeds, test accuracy against uncompressed FedAvg):
  `balanced` -0.10 points on mnist5k and -0.05 on fashion_mnist, against -1.83 and -0.69
  with the projection scale. Pass `nearest_scale='projection'` for the paper's behaviour.

  Args:
    preset: an HSQFactory preset: 'high_fidelity', 'balanced' (default, the paper's d = 16,
      K = 256, n = 6: 0.875 bits/coordinate), 'extreme', 'unbiased' or 'log_d'.
    zeroing: zero out updates of extreme norm (adaptive; catches NaN/Inf updates).
    clipping: clip updates in L2 norm to an adaptive estimate of their 80th percentile.
    weighted: a weighted mean (for `build_weighted_fed_avg`) or an unweighted one.
    **factory_kwargs: overrides of the preset's HSQFactory arguments, e.g. `threshold`
      (default here `THRESHOLD`, 100 entries), `codebook_seed`, `measure_distortion`,
      `nearest_scale`.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory` if `weighted`, else an
    `UnweightedAggregationFactory`.
  """
  config = presets.get(preset)
  if config['mode'] == 'nearest':
    config['nearest_scale'] = 'rescaled'
  config['threshold'] = THRESHOLD
  config.update(factory_kwargs)
  hsq = factory_lib.HSQFactory(**config)
  aggregator = (tff.aggregators.MeanFactory(value_sum_factory=hsq)
                if weighted else tff.aggregators.UnweightedMeanFactory(value_sum_factory=hsq))
  if clipping:
    aggregator = _adaptive_clipping(aggregator)
  if zeroing:
    aggregator = _adaptive_zeroing(aggregator)
  return aggregator


def dp_hsq_aggregator(noise_multiplier: float,
                      clients_per_round: float,
                      preset: str = 'balanced',
                      *,
                      zeroing: bool = True,
                      clip: Optional[float] = None,
                      initial_l2_norm_clip: float = 0.1,
                      target_unclipped_quantile: float = 0.5,
                      clip_learning_rate: float = 0.2,
                      **factory_kwargs) -> tff.aggregators.UnweightedAggregationFactory:
  """Differentially private mean of HSQ-compressed, clipped client updates.

  The DP guarantee of DP-FedAvg rests on every client's contribution to the noised sum being
  at most the clip norm. Clients clip (TFF's DP query), HSQ encodes the clipped record, and the
  server decodes it; the HSQ factory is built with `reclip=True`, so the server scales every
  decoded record down to at most the norm of the record that was encoded. That holds for every
  mode: nearest never increases a norm anyway (the guard only absorbs float rounding), while
  stochastic (~3.3x at d = 16) and log_d (~sqrt(2P/pi)) do and rely on it. The noise is
  calibrated to the clip norm, so (epsilon, delta) is exactly that of the uncompressed
  mechanism: `tff_hsq.privacy.epsilon(noise_multiplier, sampling_rate, rounds, delta)`.

  Args:
    noise_multiplier: noise stddev / clip norm, >= 0. With adaptive clipping this is the total
      effective multiplier (as in `tff.learning.dp_aggregator`): it must stay below
      0.1 x clients_per_round, the noise of the clipped-count estimate.
    clients_per_round: expected number of clients per round (> 0); the sum is divided by it.
    preset: an HSQ preset name (see `tff_hsq.presets`).
    zeroing: zero out updates of extreme norm first (adaptive; catches NaN/Inf updates).
    clip: a fixed L2 clip norm (`gaussian_fixed`); None for TFF's adaptive clipping
      (`gaussian_adaptive`) with the three parameters below.
    initial_l2_norm_clip: adaptive clipping's initial clip norm.
    target_unclipped_quantile: the quantile of update norms the clip norm adapts to.
    clip_learning_rate: adaptive clipping's learning rate.
    **factory_kwargs: overrides of the preset's HSQFactory arguments (e.g. `threshold`).
      `reclip=False` is accepted only for modes that never increase a norm.

  Returns:
    A `tff.aggregators.UnweightedAggregationFactory`.

  Raises:
    ValueError: for `reclip=False` with a mode that can increase a norm, naming the mode.
  """
  config = presets.get(preset)
  config.update(factory_kwargs)
  config.setdefault('reclip', True)
  hsq = factory_lib.HSQFactory(**config)
  if not hsq.reclip and not hsq.quantizer.norm_non_increasing:
    raise ValueError(
        f'HSQ mode {hsq.quantizer.mode!r} can decode a clipped record to a longer one, which '
        'breaks the clip bound differential privacy rests on: keep reclip=True (the default) '
        "or use a nearest-mode preset ('high_fidelity', 'balanced', 'extreme').")
  clients_per_round = float(clients_per_round)
  if clip is None:
    value_noise_multiplier, clipped_count_stddev = adaptive_clip_noise_params(
        noise_multiplier, clients_per_round)
    query = tfp.QuantileAdaptiveClipSumQuery(
        initial_l2_norm_clip=initial_l2_norm_clip,
        noise_multiplier=value_noise_multiplier,
        target_unclipped_quantile=target_unclipped_quantile,
        learning_rate=clip_learning_rate,
        clipped_count_stddev=clipped_count_stddev,
        expected_num_records=clients_per_round,
        geometric_update=True)
  else:
    if not clip > 0:
      raise ValueError(f'clip must be > 0; got {clip}.')
    query = tfp.GaussianSumQuery(l2_norm_clip=clip, stddev=clip * noise_multiplier)
  query = tfp.NormalizedQuery(query, denominator=clients_per_round)
  aggregator = tff.aggregators.DifferentiallyPrivateFactory(
      query, record_aggregation_factory=hsq)
  if zeroing:
    aggregator = _adaptive_zeroing(aggregator)
  return aggregator


def secure_hsq_aggregator(clip: float = 10.0,
                          *,
                          zeroing: bool = True,
                          weighted: bool = True,
                          max_weight: float = 1000.0,
                          max_clients: int = 1000,
                          **secure_kwargs) -> tff.aggregators.AggregationFactory:
  """A mean of HSQ-quantized client updates through secure aggregation.

  The server never sees one client's update: each client's update is clipped to L2 norm
  `clip`, HSQ-quantized on a fixed scale grid and turned into an integer vector
  (`tff_hsq.secure.SecureHSQFactory`), and only the secure sum of those vectors reaches the
  server, which decodes it exactly. The default codebook is the cross-polytope (d = 8,
  K = 16): one integer per entry of the update, of scale_bits (16) + log2(max_clients) bits in
  the secure sum. A learned codebook (pass `dim`, `codebook_size`) costs K / d integers per
  entry and warns.

  Simulating it needs an execution context that runs secure sums:
  `tff.backends.test.set_sync_test_cpp_execution_context()` (TFF's default C++ context fails
  on `federated_secure_sum_bitwidth`).

  Args:
    clip: the fixed L2 norm every client update is clipped to (> 0); set it near the typical
      update norm. Scales are quantized on a grid of clip (x max_weight if weighted).
    zeroing: zero out updates of extreme norm first (adaptive, securely estimated).
    weighted: a weighted mean (for `build_weighted_fed_avg`) with weights securely summed.
    max_weight: the largest client weight (weighted only): weights are securely summed with
      bounds [0, max_weight], and the scale grid must cover the weighted update.
    max_clients: the most clients one round sums; sets the secure sum's bit width.
    **secure_kwargs: further `SecureHSQFactory` arguments (dim, codebook_size, scale_bits,
      mode, unbiased, threshold, codebook_seed, codebook).

  Returns:
    A `tff.aggregators.WeightedAggregationFactory` if `weighted`, else an
    `UnweightedAggregationFactory`.
  """
  if not clip > 0:
    raise ValueError(f'clip must be > 0; got {clip}.')
  if weighted and not max_weight > 0:
    raise ValueError(f'max_weight must be > 0; got {max_weight}.')
  scale_bound = float(clip * max_weight) if weighted else float(clip)
  hsq = secure_lib.SecureHSQFactory(
      scale_bound=scale_bound, max_clients=max_clients, **secure_kwargs)
  if weighted:
    aggregator = tff.aggregators.MeanFactory(
        value_sum_factory=hsq,
        weight_sum_factory=tff.aggregators.SecureSumFactory(
            upper_bound_threshold=float(max_weight), lower_bound_threshold=0.0))
  else:
    aggregator = tff.aggregators.UnweightedMeanFactory(
        value_sum_factory=hsq, count_sum_factory=_secure_count())
  aggregator = tff.aggregators.clipping_factory(
      float(clip), aggregator, clipped_count_sum_factory=_secure_count())
  if zeroing:
    aggregator = _adaptive_zeroing(aggregator, secure=True)
  return aggregator
