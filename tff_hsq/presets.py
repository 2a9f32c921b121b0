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

`balanced` is the paper's setting (d = 16, K = 256, n = 6).
"""

import types

PRESETS = types.MappingProxyType({
    'high_fidelity': dict(dim=4, codebook_size=256, scale_bits=8, mode='nearest'),
    'balanced': dict(dim=16, codebook_size=256, scale_bits=6, mode='nearest'),
    'extreme': dict(dim=32, codebook_size=1024, scale_bits=6, mode='nearest'),
    'unbiased': dict(dim=8, codebook_size=256, scale_bits=8, mode='stochastic'),
    'log_d': dict(mode='log_d'),
})


def get(name: str) -> dict:
  """The Quantizer keyword arguments of preset `name` (a fresh dict)."""
  if name not in PRESETS:
    raise ValueError(f'Unknown HSQ preset {name!r}; expected one of {sorted(PRESETS)}.')
  return dict(PRESETS[name])
