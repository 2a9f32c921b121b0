"""For the tests of the training entry point: train.py's main in this process, its upload size.

Shared by train_example_test and benchmarks_test (which runs train.py through
benchmarks/convergence.py).
"""

from absl import flags

from examples import train
import tff_hsq


def run_main(argv):
  """train.main with flags `argv` (without the program name); flags are reset afterwards."""
  flags.FLAGS(['train'] + argv)
  try:
    train.main([])
  finally:
    flags.FLAGS.unparse_flags()


def hsq_aggregator_mlp_bits(preset):
  """Bits/coordinate of hsq_aggregator(preset) on train.py's 784-128-10 MLP (101,770 entries).

  Counted from the quantizer's messages: the three tensors of >= 100 entries (100,352, 128 and
  1,280) are encoded, the 10 output biases sent as float32.
  """
  quantizer = tff_hsq.Quantizer(**tff_hsq.presets.get(preset))
  return (sum(quantizer.bits_per_coordinate(n) * n for n in (100352, 128, 1280)) +
          32 * 10) / 101770
