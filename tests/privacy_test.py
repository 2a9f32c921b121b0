"""Tests of tff_hsq.privacy: epsilon of DP-FedAvg by RDP accounting."""

import numpy as np
import pytest

from tff_hsq import privacy


def rdp_epsilon_without_sampling(noise_multiplier, rounds, delta):
  """Independent closed form: T rounds of the Gaussian mechanism (no subsampling).

  RDP of order a is T a / (2 z^2) (Mironov 2017); the conversion to (epsilon, delta)-DP of
  Balle et al. 2020 (arXiv 2004.00010, Thm 21) is
  rdp + log((a - 1) / a) - (log delta + log a) / (a - 1), minimised over a > 1 on a fine grid.
  """
  a = np.linspace(1.01, 512, 2_000_000)
  eps = (rounds * a / (2 * noise_multiplier**2) + np.log((a - 1) / a) -
         (np.log(delta) + np.log(a)) / (a - 1))
  return float(eps.min())


@pytest.mark.parametrize('z,rounds,delta', [(1.0, 10, 1e-5), (2.0, 100, 1e-6), (5.0, 1, 1e-5)])
def test_without_sampling_matches_closed_form(z, rounds, delta):
  expected = rdp_epsilon_without_sampling(z, rounds, delta)
  got = privacy.epsilon(z, 1.0, rounds, delta)
  # The accountant minimises over a discrete grid of orders, so it can only be a little above
  # the continuous minimum (measured: within 1%).
  assert expected * (1 - 1e-6) <= got <= expected * 1.03


def test_sampling_amplifies_and_composition_accumulates():
  base = privacy.epsilon(1.0, 0.01, 1000, 1e-5)
  assert privacy.epsilon(1.0, 0.001, 1000, 1e-5) < base   # fewer clients per round
  assert privacy.epsilon(1.0, 0.01, 2000, 1e-5) > base    # more rounds
  assert privacy.epsilon(2.0, 0.01, 1000, 1e-5) < base    # more noise
  # Subsampling helps a lot: 1000 rounds at q = 0.01 cost less than 10 rounds at q = 1.
  assert base < privacy.epsilon(1.0, 1.0, 10, 1e-5)
  assert privacy.epsilon(1.0, 0.01, 0, 1e-5) == 0.0


@pytest.mark.parametrize('args,match', [
    ((0.0, 0.1, 10, 1e-5), 'noise_multiplier'),
    ((1.0, 0.0, 10, 1e-5), 'sampling_rate'),
    ((1.0, 1.5, 10, 1e-5), 'sampling_rate'),
    ((1.0, 0.1, -1, 1e-5), 'rounds'),
    ((1.0, 0.1, 2.5, 1e-5), 'rounds'),
    ((1.0, 0.1, 10, 0.0), 'delta'),
])
def test_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    privacy.epsilon(*args)
