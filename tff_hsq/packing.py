"""Bit packing of small unsigned integer codes into uint32 words, with TF ops.

Code i of a [N] vector of `bits`-bit codes occupies bits [i*bits, (i+1)*bits) of a little-endian
bitstream cut into ceil(N * bits / 32) uint32 words, so the message carries exactly `bits` bits
per code plus less than one word of tail. Pure TensorFlow; no TFF import.
"""

import tensorflow as tf

_WORD = 32


def num_words(num_codes: int, bits: int) -> int:
  """How many uint32 words hold `num_codes` codes of `bits` bits each."""
  return -(-num_codes * bits // _WORD)


def pack(codes: tf.Tensor, bits: int) -> tf.Tensor:
  """Packs codes into words.

  Args:
    codes: integer tensor [N] with values in [0, 2**bits); values outside are masked to `bits`.
    bits: code width, 1 <= bits <= 31 (a shifted code must fit an int64).

  Returns:
    uint32 [ceil(N * bits / 32)].
  """
  if not 1 <= bits <= 31:
    raise ValueError(f'bits must be in [1, 31]; got {bits}.')
  num_codes = codes.shape[0]
  codes = tf.bitwise.bitwise_and(tf.cast(codes, tf.int64), (1 << bits) - 1)
  position = tf.range(num_codes, dtype=tf.int64) * bits
  word = position // _WORD
  offset = position % _WORD
  # A code may straddle two words: its low part goes to `word`, its high part to `word + 1`.
  # The parts of different codes occupy disjoint bits, so summing them is the same as OR-ing.
  shifted = tf.bitwise.left_shift(codes, offset)
  low = tf.bitwise.bitwise_and(shifted, (1 << _WORD) - 1)
  high = tf.bitwise.right_shift(shifted, _WORD)
  size = num_words(num_codes, bits)
  words = (tf.math.unsorted_segment_sum(low, word, size + 1) +
           tf.math.unsorted_segment_sum(high, word + 1, size + 1))
  return tf.cast(words[:size], tf.uint32)


def unpack(words: tf.Tensor, bits: int, num_codes: int) -> tf.Tensor:
  """Inverse of `pack`: uint32 [ceil(num_codes * bits / 32)] -> int64 [num_codes]."""
  words = tf.concat([tf.cast(words, tf.int64), tf.zeros([1], tf.int64)], axis=0)
  position = tf.range(num_codes, dtype=tf.int64) * bits
  word = position // _WORD
  offset = position % _WORD
  pair = tf.gather(words, word) + tf.bitwise.left_shift(tf.gather(words, word + 1), _WORD)
  return tf.bitwise.bitwise_and(tf.bitwise.right_shift(pair, offset), (1 << bits) - 1)
