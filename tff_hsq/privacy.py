"""Privacy accounting for DP federated training with HSQ (no TFF import).

HSQ inside `tff_hsq.learning.dp_hsq_aggregator` adds no privacy cost of its own: every client's
decoded contribution stays within the clip norm (see `HSQFactory(reclip=True)`), so the
guarantee is that of the Gaussian mechanism of DP-FedAvg (McMahan et al., arXiv 1710.06963):
each round samples clients with probability q = clients_per_round / population and adds
Gaussian noise of stddev noise_multiplier x clip to the sum. Its (epsilon, delta) over many
rounds is computed here with Renyi DP accounting (Mironov, arXiv 1702.07476) from
`dp_accounting`, the accountant TFF itself depends on.
"""

import dp_accounting
from dp_accounting import rdp


def dp_event(noise_multiplier: float, sampling_rate: float,
             rounds: int) -> dp_accounting.DpEvent:
  """The DpEvent of `rounds` Poisson-sampled Gaussian rounds.

  Args:
    noise_multiplier: z, noise stddev / clip norm (TFF's `noise_multiplier`; for adaptive
      clipping the total effective one, as TFF defines it). > 0.
    sampling_rate: q in (0, 1], the probability that a client takes part in a round.
    rounds: number of rounds, >= 0.

  Raises:
    ValueError: naming the argument out of range.
  """
  if not noise_multiplier > 0:
    raise ValueError(f'noise_multiplier must be > 0; got {noise_multiplier}.')
  if not 0 < sampling_rate <= 1:
    raise ValueError(f'sampling_rate must be in (0, 1]; got {sampling_rate}.')
  if not isinstance(rounds, int) or rounds < 0:
    raise ValueError(f'rounds must be an int >= 0; got {rounds!r}.')
  gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
  event = (gaussian if sampling_rate == 1 else
           dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian))
  return dp_accounting.SelfComposedDpEvent(event, rounds)


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int,
            delta: float) -> float:
  """The epsilon of (epsilon, delta)-DP for `rounds` rounds of DP-FedAvg (RDP accounting).

  Client-level DP under add-or-remove-one-client adjacency.

  Args:
    noise_multiplier: as `dp_event`.
    sampling_rate: as `dp_event`.
    rounds: as `dp_event`.
    delta: in (0, 1), typically below 1 / population.

  Returns:
    epsilon, a float (0.0 for 0 rounds).
  """
  if not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1); got {delta}.')
  event = dp_event(noise_multiplier, sampling_rate, rounds)
  if rounds == 0:
    return 0.0  # dp_accounting refuses to compose an event zero times.
  accountant = rdp.RdpAccountant()
  accountant.compose(event)
  return float(accountant.get_epsilon(delta))
