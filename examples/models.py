"""Keras models of the examples (built with a seed, so every aggregator starts alike)."""

import tensorflow as tf


def mlp(seed: int) -> tf.keras.Model:
  """A 784-128-10 MLP on flattened 28x28 images: logits float32 [batch, 10].

  101,770 parameters in tensors of 100,352, 128, 1,280 and 10 entries. Only the first is above
  the 20,000-entry threshold of TFF's compression_aggregator (and of HSQFactory by default);
  hsq_aggregator (threshold 100) encodes all but the 10 output biases.
  """
  tf.keras.utils.set_random_seed(seed)
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(784,)),
      tf.keras.layers.Dense(128, activation='relu'),
      tf.keras.layers.Dense(10),
  ])


def char_model(vocab_size: int, seq_len: int):
  """A builder seed -> Embedding(8) -> GRU(128) -> Dense(vocab): next-character logits.

  Input int32 [batch, seq_len] character codes; output float32 [batch, seq_len, vocab_size].
  The GRU's 49,152-entry recurrent kernel is HSQ-compressed.
  """

  def build(seed: int) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(seq_len,), dtype=tf.int32),
        tf.keras.layers.Embedding(vocab_size, 8),
        tf.keras.layers.GRU(128, return_sequences=True),
        tf.keras.layers.Dense(vocab_size),
    ])

  return build
