"""Runs examples/train.py's main in this process, for the tests of the training entry point."""

from absl import flags

from examples import train


def run_main(argv):
  """train.main with flags `argv` (without the program name); flags are reset afterwards."""
  flags.FLAGS(['train'] + argv)
  try:
    train.main([])
  finally:
    flags.FLAGS.unparse_flags()
