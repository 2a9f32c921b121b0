r"""The peer compressors of the benchmark studies, in NumPy, implemented here from their papers.

Each compressor takes a float tensor and returns `(x_hat, bits)`: the server's decode (float64,
flattened) and the bits that the client would upload for it, counted as fixed-width fields
(each function's docstring says which). Randomized ones take a `numpy.random.Generator`.

- `qsgd`: Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD via
  Gradient Quantization and Encoding", NeurIPS 2017.
- `terngrad`: Wen, Xu, Yan, Wu, Wang, Chen, Li, "TernGrad: Ternary Gradients to Reduce
  Communication in Distributed Deep Learning", NeurIPS 2017.
- `scaled_sign`: the sign of the update scaled by its mean magnitude, as in Bernstein, Wang,
  Azizzadenesheli, Anandkumar, "signSGD: Compressed Optimisation for Non-Convex Problems",
  ICML 2018, and Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other
  Gradient Compression Schemes", ICML 2019 (EF-signSGD's scaled sign).
- `drive`: Vargaftik, Ben-Basat, Portnoy, Mendelson, Ben-Itzhak, Mitzenmacher, "DRIVE:
  One-bit Distributed Mean Estimation", NeurIPS 2021.
- `eden`: Vargaftik, Ben-Basat, Portnoy, Mendelson, Ben-Itzhak, Mitzenmacher, "EDEN:
  Communication-Efficient and Robust Distributed Mean Estimation for Federated Learning",
  ICML 2022.
"""

import functools
import math

import numpy as np

FLOAT_BITS = 32  # A float32 norm or scale sent alongside the codes.


def fwht(x):
  """Unnormalized Walsh-Hadamard transform of a 1-D power-of-two-length numpy array."""
  y = x.astype(np.float64).copy()
  n = y.size
  h = 1
  while h < n:
    y = y.reshape(-1, 2, h)
    y = np.stack([y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]], axis=1).reshape(-1)
    h *= 2
  return y


def _rotation(n, rng):
  """The random signs of a randomized Hadamard rotation of `n` entries, padded length p."""
  p = 1 << max(0, (n - 1).bit_length())
  return p, rng.choice([-1.0, 1.0], p)


def drive(x, rng):
  """DRIVE: randomized Hadamard + sign + unbiased scale; returns (x_hat, bits).

  The tensor is zero-padded to p = 2^ceil(log2 D) entries and rotated, y = H D x / sqrt(p);
  the client sends sign(y) and S = ||x||^2 / ||y||_1, so that <x_hat, x> = ||x||^2 (the
  paper's unbiased scale); decode S R^T sign(y). Bits: one per padded coordinate + a float32.
  """
  n = x.size
  p, signs = _rotation(n, rng)
  padded = np.pad(x.astype(np.float64), (0, p - n))
  y = fwht(padded * signs) / np.sqrt(p)
  l1 = np.sum(np.abs(y))
  scale = np.float32(np.sum(padded**2) / l1) if l1 > 0 else np.float32(0)
  x_hat = fwht(np.float64(scale) * np.sign(y)) * signs / np.sqrt(p)
  return x_hat[:n], p + 32  # one sign bit per padded coordinate, one float32 scale


def _normal_pdf(t):
  return math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) if math.isfinite(t) else 0.0


def _normal_cdf(t):
  return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))


@functools.lru_cache(maxsize=None)
def lloyd_max_gaussian(bits, iterations=20000, tolerance=1e-13):
  """The 2^bits Lloyd-Max quantizer of N(0, 1): (centroids, thresholds), sorted float64.

  Lloyd's algorithm on the density itself rather than on samples: thresholds are the midpoints
  of adjacent centroids, and each centroid is the mean of N(0, 1) on its cell, in closed form
  (phi(a) - phi(b)) / (Phi(b) - Phi(a)). Starts from the quantiles' cell means, which are
  already close; the 16-level quantizer converges in a few thousand iterations (cached).
  """
  levels = 1 << bits
  # Start: equal-probability cells, whose edges are the normal quantiles (found by bisection,
  # so that no inverse-erf is needed).
  def quantile(u):
    lo, hi = -10.0, 10.0
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if _normal_cdf(mid) < u else (lo, mid)
    return 0.5 * (lo + hi)

  edges = [-math.inf] + [quantile(k / levels) for k in range(1, levels)] + [math.inf]
  for _ in range(iterations):
    centroids = [(_normal_pdf(a) - _normal_pdf(b)) / (_normal_cdf(b) - _normal_cdf(a))
                 for a, b in zip(edges[:-1], edges[1:])]
    new_edges = ([-math.inf] + [0.5 * (c0 + c1) for c0, c1 in zip(centroids[:-1], centroids[1:])]
                 + [math.inf])
    moved = max(abs(a - b) for a, b in zip(new_edges[1:-1], edges[1:-1])) if levels > 2 else 0
    edges = new_edges
    if moved < tolerance:
      break
  return np.array(centroids), np.array(edges[1:-1])


def eden_gaussian_nmse(bits):
  """EDEN's NMSE on Gaussian entries in the limit of large D: 1 / E[q^2] - 1.

  With the unbiased scale, ||x_hat - x||^2 = S^2 ||q||^2 - ||x||^2, and the Lloyd-Max
  centroid condition makes <y, q> = ||q||^2 in expectation, so NMSE = 1 / E[q^2] - 1 for q the
  quantized N(0, 1) entry (pi/2 - 1 = 0.571 at 1 bit, DRIVE's figure).
  """
  centroids, thresholds = lloyd_max_gaussian(bits)
  cdf = np.array([0.0] + [_normal_cdf(t) for t in thresholds] + [1.0])
  return float(1.0 / np.sum(np.diff(cdf) * centroids**2) - 1.0)


def eden(x, bits, rng):
  """EDEN at `bits` bits per coordinate; returns (x_hat, bits sent).

  As DRIVE, the tensor is zero-padded to p = 2^ceil(log2 D) entries and rotated,
  y = H D x / sqrt(p), whose entries are close to N(0, ||x||^2 / p). Each entry of
  y sqrt(p) / ||x|| is sent as the index of its nearest 2^bits-level Lloyd-Max centroid of
  N(0, 1) (`lloyd_max_gaussian`), q the centroids, with the scale S = ||x||^2 / <y, q>
  (the paper's unbiased scale: <x_hat, x> = ||x||^2); decode S R^T q. At 1 bit the centroids
  are +-sqrt(2 / pi) and EDEN is DRIVE. Bits: `bits` per padded coordinate + a float32.
  """
  centroids, thresholds = lloyd_max_gaussian(bits)
  n = x.size
  p, signs = _rotation(n, rng)
  padded = np.pad(x.astype(np.float64).reshape(-1), (0, p - n))
  energy = np.sum(padded**2)
  y = fwht(padded * signs) / np.sqrt(p)
  if energy == 0:
    return np.zeros(n), bits * p + FLOAT_BITS
  q = centroids[np.searchsorted(thresholds, y * np.sqrt(p / energy))]
  scale = np.float32(energy / np.dot(y, q))
  x_hat = fwht(np.float64(scale) * q) * signs / np.sqrt(p)
  return x_hat[:n], bits * p + FLOAT_BITS


def qsgd(x, levels, rng, bucket=512):
  """QSGD with s = `levels` levels and buckets of `bucket` entries; returns (x_hat, bits).

  Per bucket v: x_hat_i = ||v||_2 sign(v_i) xi_i / s, xi_i = floor(s |v_i| / ||v||) rounded up
  with probability equal to the remainder (stochastic rounding, unbiased). Bits counted as
  fixed-width fields: 1 sign bit + ceil(log2(s + 1)) level bits per coordinate and a float32
  norm per bucket (the paper's Elias coding of the levels would be fewer at small s).
  """
  flat = x.astype(np.float64).reshape(-1)
  n = flat.size
  num_buckets = -(-n // bucket)
  padded = np.pad(flat, (0, num_buckets * bucket - n)).reshape(num_buckets, bucket)
  norms = np.float32(np.linalg.norm(padded, axis=1, keepdims=True)).astype(np.float64)
  ratio = np.divide(np.abs(padded) * levels, norms, out=np.zeros_like(padded), where=norms > 0)
  low = np.floor(ratio)
  xi = low + (rng.random(padded.shape) < ratio - low)
  x_hat = (norms * np.sign(padded) * xi / levels).reshape(-1)[:n]
  level_bits = math.ceil(math.log2(levels + 1))
  return x_hat, (1 + level_bits) * n + FLOAT_BITS * num_buckets


# log2(3): the rate of a fixed-length code of ternary symbols (blocks of trits packed into
# bits, e.g. 5 per byte for 1.6), not an entropy code of the zeros.
TERNARY_BITS = math.log2(3)


def terngrad(x, rng, bucket=None):
  """TernGrad: x_hat = s sign(x) Bernoulli(|x| / s), s = max |x|; returns (x_hat, bits).

  `bucket=None` takes s over the whole tensor (the paper's layer-wise scalar); an int takes it
  per bucket of that many entries (the bucketing of QSGD). Unbiased. Bits: log2(3) per
  coordinate (`TERNARY_BITS`) and a float32 s per tensor or bucket.
  """
  flat = x.astype(np.float64).reshape(-1)
  n = flat.size
  size = n if bucket is None else bucket
  num_buckets = -(-n // size)
  padded = np.pad(flat, (0, num_buckets * size - n)).reshape(num_buckets, size)
  scale = np.float32(np.max(np.abs(padded), axis=1, keepdims=True)).astype(np.float64)
  keep = rng.random(padded.shape) * scale < np.abs(padded)
  x_hat = (scale * np.sign(padded) * keep).reshape(-1)[:n]
  return x_hat, TERNARY_BITS * n + FLOAT_BITS * num_buckets


def scaled_sign(x):
  """The scaled sign (||x||_1 / D) sign(x), zero sent as +; returns (x_hat, bits).

  Deterministic, hence biased. Bits: one per coordinate and a float32 scale per tensor.
  """
  flat = x.astype(np.float64).reshape(-1)
  scale = np.float32(np.mean(np.abs(flat)))
  return np.where(flat >= 0, 1.0, -1.0) * np.float64(scale), flat.size + FLOAT_BITS
