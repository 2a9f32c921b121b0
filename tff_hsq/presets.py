"""Named Quantizer configurations: the points of HSQ's rate/distortion trade-off.

Each preset is the keyword arguments of `tff_hsq.Quantizer`. Bits/coordinate are those of the
message for a large tensor (index + scale code per sub-vector; the per-tensor float32 maximum is
negligible); NMSE is E||x_hat - x||^2 / E||x||^2 on Gaussian vectors (DESIGN.md reference figures,
reproduced by tests/quantizer_test.py and benchmarks/).

| preset        | d  | K    | n | mode       | bits/coord | NMSE  | unbiased |
|---------------|----|------|---|------------|------------|-------|----------|
| high_fidelity | 4  | 256  | 8 | nearest    | 4.0        | 0.032 | no       |
| balanced      | 16 | 256  | 6 | nearest    | 0.875      | 0.52  | no       |
| extreme       | 32 | 1024 | 6 | nearest    | 0.5        | 0.68  | no       |
| unbiased      | 8  | 256  | 8 | stochastic | 2.0        | 4.4   | yes      |
| log_d         | -  | -    | - | log_d      | 64 / D     | ~2D/pi| yes      |

`balanced` is the paper's setting (d = 16, K = 256, n = 6). The NMSE above is the paper's
projection scale; `tff_hsq.learning.hsq_aggregator` runs the nearest presets with
`nearest_scale='rescaled'` (same bits; NMSE_p / (1 - NMSE_p): 0.029, 1.08, 2.1; converges like
the uncompressed mean, see `tff_hsq.quantizer` and benchmarks/convergence.py).

Beyond the paper, the `rotated` presets (issue 7; DRIVE-style randomized Hadamard blocks of
2^14 entries, one float32 scale per block, Gaussian k-means codebook, unbiased scale; see
`tff_hsq.quantizer`). Measured by benchmarks/rotated.py (Gaussian, D = 2^20); DRIVE (1-bit
sign) in the same run: NMSE 0.571.

| preset                  | d  | K    | mode    | bits/coord | NMSE  | unbiased |
|-------------------------|----|------|---------|------------|-------|----------|
| rotated                 | 8  | 256  | rotated | 1.002      | 0.48  | yes      |
| rotated_three_quarters  | 16 | 4096 | rotated | 0.752      | 0.73  | yes      |
| rotated_half            | 16 | 256  | rotated | 0.502      | 1.39  | yes      |

They live in ROTATED, apart from PRESETS (the paper's points, which other modules and tests
enumerate); `get` and ALL know both.
"""

import types

PRESETS = types.MappingProxyType({
    'high_fidelity': dict(dim=4, codebook_size=256, scale_bits=8, mode='nearest'),
    'balanced': dict(dim=16, codebook_size=256, scale_bits=6, mode='nearest'),
    'extreme': dict(dim=32, codebook_size=1024, scale_bits=6, mode='nearest'),
    'unbiased': dict(dim=8, codebook_size=256, scale_bits=8, mode='stochastic'),
    'log_d': dict(mode='log_d'),
})


ROTATED = types.MappingProxyType({
    'rotated': dict(dim=8, codebook_size=256, mode='rotated'),
    'rotated_three_quarters': dict(dim=16, codebook_size=4096, mode='rotated'),
    'rotated_half': dict(dim=16, codebook_size=256, mode='rotated'),
})

ALL = types.MappingProxyType({**PRESETS, **ROTATED})


def get(name: str) -> dict:
  """The Quantizer keyword arguments of preset `name` (a fresh dict)."""
  if name not in ALL:
    raise ValueError(f'Unknown HSQ preset {name!r}; expected one of {sorted(ALL)}.')
  return dict(ALL[name])
