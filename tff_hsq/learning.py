"""Ready-made HSQ aggregators for `tff.learning` processes.

`hsq_aggregator` is the HSQ counterpart of `tff.learning.compression_aggregator`: the same
adaptive zeroing and optional adaptive clipping around a (weighted) mean whose sum is HSQ.
Pass it as `model_aggregator` to e.g. `tff.learning.algorithms.build_weighted_fed_avg`.
"""

import math

import tensorflow_federated as tff

from tff_hsq import factory as factory_lib
from tff_hsq import presets


def _adaptive_zeroing(inner):
  # The schedule of tff.learning's own aggregators: zero a client whose update norm exceeds
  # 2 x (the 98th percentile of norms) + 1, estimated online from a start of 10. An Inf update
  # is zeroed here; a NaN one is not (NaN > bound is False) and HSQFactory drops it instead.
  norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
      initial_estimate=10.0, target_quantile=0.98, learning_rate=math.log(10.0),
      multiplier=2.0, increment=1.0)
  return tff.aggregators.zeroing_factory(norm, inner)


def _adaptive_clipping(inner):
  # tff.learning's schedule: clip to the online estimate of the 80th percentile of norms.
  norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
      initial_estimate=1.0, target_quantile=0.8, learning_rate=0.2)
  return tff.aggregators.clipping_factory(norm, inner)


def hsq_aggregator(preset: str = 'balanced',
                   *,
                   zeroing: bool = True,
                   clipping: bool = False,
                   weighted: bool = True,
                   **factory_kwargs) -> tff.aggregators.AggregationFactory:
  """A mean of HSQ-compressed client updates, with adaptive zeroing and optional clipping.

  Args:
    preset: an HSQFactory preset: 'high_fidelity', 'balanced' (default, the paper's d = 16,
      K = 256, n = 6: 0.875 bits/coordinate), 'extreme', 'unbiased' or 'log_d'.
    zeroing: zero out updates of extreme norm (adaptive; catches NaN/Inf updates).
    clipping: clip updates in L2 norm to an adaptive estimate of their 80th percentile.
    weighted: a weighted mean (for `build_weighted_fed_avg`) or an unweighted one.
    **factory_kwargs: overrides of the preset's HSQFactory arguments, e.g. `threshold`,
      `codebook_seed`, `measure_distortion`.

  Returns:
    A `tff.aggregators.WeightedAggregationFactory` if `weighted`, else an
    `UnweightedAggregationFactory`.
  """
  config = presets.get(preset)
  config.update(factory_kwargs)
  hsq = factory_lib.HSQFactory(**config)
  aggregator = (tff.aggregators.MeanFactory(value_sum_factory=hsq)
                if weighted else tff.aggregators.UnweightedMeanFactory(value_sum_factory=hsq))
  if clipping:
    aggregator = _adaptive_clipping(aggregator)
  if zeroing:
    aggregator = _adaptive_zeroing(aggregator)
  return aggregator
