"""Bit packing of small unsigned integer codes into uint32 words, with TF ops.

Code i of a [N] vector of `bits`-bit codes occupies bits [i*bits, (i+1)*bits) of a little-endian
bitstream cut into ceil(N * bits / 32) uint32 words, so the message carries exactly `bits` bits
per code plus less than one word of tail. Pure TensorFlow; no TFF import.

Every 32 consecutive codes fill exactly `bits` words, so the layout inside such a group is
static: packing loops over the 32 code positions in Python and works on [N / 32]-sized columns.
Its temporaries are a small fraction of the codes' size, which keeps the encoder's peak memory
low for tensors of tens of millions of entries.
"""

import tensorflow as tf

_WORD = 32
_MASK = (1 << _WORD) - 1


def num_words(num_codes: int, bits: int) -> int:
  """How many uint32 words hold `num_codes` codes of `bits` bits each."""
  return -(-num_codes * bits // _WORD)


def _check(bits):
  if not 1 <= bits <= 31:
    raise ValueError(f'bits must be in [1, 31]; got {bits}.')


def _pieces(bits):
  """(code position j, word w, shift) for each part of a code that lands in a word of a group.

  shift >= 0: the code moves left by shift inside word w; shift < 0: right by -shift.
  """
  for j in range(_WORD):
    first, last = j * bits, (j + 1) * bits - 1
    for w in range(first // _WORD, last // _WORD + 1):
      yield j, w, first - w * _WORD


def pack(codes: tf.Tensor, bits: int) -> tf.Tensor:
  """Packs codes into words.

  Args:
    codes: integer tensor [N] with values in [0, 2**bits); higher bits are masked off.
    bits: code width, 1 <= bits <= 31.

  Returns:
    uint32 [ceil(N * bits / 32)].
  """
  _check(bits)
  num_codes = codes.shape[0]
  groups = -(-num_codes // _WORD)
  codes = tf.bitwise.bitwise_and(tf.cast(codes, tf.int64), (1 << bits) - 1)
  codes = tf.reshape(tf.pad(codes, [[0, groups * _WORD - num_codes]]), [groups, _WORD])
  words = [None] * bits
  for j, w, shift in _pieces(bits):
    column = codes[:, j]
    part = (tf.bitwise.left_shift(column, shift) if shift >= 0 else
            tf.bitwise.right_shift(column, -shift))
    part = tf.bitwise.bitwise_and(part, _MASK)
    # Parts of different codes occupy disjoint bits: adding them is OR-ing them.
    words[w] = part if words[w] is None else words[w] + part
  stacked = tf.reshape(tf.stack(words, axis=1), [-1])
  return tf.cast(stacked[:num_words(num_codes, bits)], tf.uint32)


def unpack(words: tf.Tensor, bits: int, num_codes: int) -> tf.Tensor:
  """Inverse of `pack`: uint32 [ceil(num_codes * bits / 32)] -> int64 [num_codes]."""
  _check(bits)
  groups = -(-num_codes // _WORD)
  words = tf.cast(words, tf.int64)
  words = tf.reshape(tf.pad(words, [[0, groups * bits - words.shape[0]]]), [groups, bits])
  codes = [None] * _WORD
  for j, w, shift in _pieces(bits):
    column = words[:, w]
    part = (tf.bitwise.right_shift(column, shift) if shift >= 0 else
            tf.bitwise.left_shift(column, -shift))
    part = tf.bitwise.bitwise_and(part, (1 << bits) - 1)
    codes[j] = part if codes[j] is None else tf.bitwise.bitwise_or(codes[j], part)
  return tf.reshape(tf.stack(codes, axis=1), [-1])[:num_codes]
