"""Tests of the offline datasets in examples/data.py, on the real data."""

import collections
import gzip
import inspect
import os
import sqlite3
import time

import numpy as np
import pytest

from examples import data

# --- Fashion-MNIST -------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def fashion():
  return data.fashion_mnist()


def test_fashion_mnist_shapes_dtypes_and_ranges(fashion):
  (train_x, train_y), (test_x, test_y) = fashion
  assert train_x.shape == (60000, 784) and train_x.dtype == np.float32
  assert train_y.shape == (60000,) and train_y.dtype == np.int32
  assert test_x.shape == (10000, 784) and test_x.dtype == np.float32
  assert test_y.shape == (10000,) and test_y.dtype == np.int32
  for images in (train_x, test_x):
    assert images.min() == 0.0 and images.max() == 1.0
  # Pixels are k / 255 exactly.
  np.testing.assert_array_equal(np.round(train_x[:100] * 255) / 255, train_x[:100])


def test_fashion_mnist_class_balance(fashion):
  (_, train_y), (_, test_y) = fashion
  np.testing.assert_array_equal(np.bincount(train_y), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(test_y), np.full(10, 1000))


def test_fashion_mnist_known_values(fashion):
  (train_x, train_y), (test_x, test_y) = fashion
  # The first training image is an ankle boot, the first test images an ankle boot, a
  # pullover and a trouser (values read from the Debian package's files).
  assert data.FASHION_MNIST_CLASSES[train_y[0]] == 'Ankle boot'
  np.testing.assert_array_equal(train_y[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
  np.testing.assert_array_equal(test_y[:10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
  assert np.count_nonzero(train_x[0]) == 433
  # Background: the image corners are blank.
  image = train_x[0].reshape(28, 28)
  assert image[0, 0] == image[0, 27] == image[27, 0] == image[27, 27] == 0.0
  assert test_x.mean() == pytest.approx(0.2868, abs=1e-3)


def _write_idx(path, magic, array):
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
    data.fashion_mnist(str(tmp_path))
  pixels = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
  for prefix in ('train', 't10k'):
    _write_idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', 0x803, pixels)
    _write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', 0x801, np.array([3, 7]))
  (x, y), _ = data.fashion_mnist(str(tmp_path))
  np.testing.assert_array_equal(x, pixels.reshape(2, 784).astype(np.float32) / 255)
  np.testing.assert_array_equal(y, [3, 7])
  bad = tmp_path / 'train-labels-idx1-ubyte.gz'
  _write_idx(bad, 0x803, np.array([3, 7]))  # An images magic number on a labels file.
  with pytest.raises(ValueError, match=f'{bad}.*magic'):
    data.fashion_mnist(str(tmp_path))
  with gzip.open(bad, 'wb') as f:  # Header says 5 labels, the body has 2.
    f.write((0x801).to_bytes(4, 'big') + (5).to_bytes(4, 'big') + b'\x03\x07')
  with pytest.raises(ValueError, match=str(bad)):
    data.fashion_mnist(str(tmp_path))
  bad.write_bytes(b'not gzip at all')
  with pytest.raises(ValueError, match=str(bad)):
    data.fashion_mnist(str(tmp_path))


# --- King James Bible ----------------------------------------------------------------------------


def test_kjv_books():
  books = data.kjv_books()
  assert isinstance(books, collections.OrderedDict)
  assert len(books) == 66
  names = list(books)
  assert names[:5] == ['Genesis', 'Exodus', 'Leviticus', 'Numbers', 'Deuteronomy']
  assert names[38:40] == ['Malachi', 'Matthew']  # 39 Old Testament books, then 27 New.
  assert names[-1] == 'Revelation'
  for name in ('1 Samuel', 'Psalms', 'Song of Solomon', '3 John'):
    assert name in books
  assert books['Genesis'].startswith(
      'In the beginning God created the heaven and the earth.\n'
      'And the earth was without form, and void; and darkness was upon the face of the deep.')
  assert books['Revelation'].endswith(
      'The grace of our Lord Jesus Christ be with you all. Amen.')
  verses = {book: text.count('\n') + 1 for book, text in books.items()}
  assert (verses['Genesis'], verses['Psalms'], verses['Obadiah']) == (1533, 2461, 21)
  assert 'For God so loved the world, that he gave his only begotten Son' in books['John']
  texts = ''.join(books.values())
  # `bible` prints 4,298,239 characters; without headings and verse numbers 4,137,782 remain.
  assert 4_100_000 < len(texts) < 4_200_000
  assert sum(text.count('\n') + 1 for text in books.values()) == 31102  # Verses of the KJV.
  assert not any(c.isdigit() for c in texts)  # No verse or chapter numbers left.
  assert data.kjv_books() is books  # Cached.


def test_kjv_parse_rejects_unexpected_format():
  with pytest.raises(ValueError, match='verse 3 follows verse 1'):
    data._parse_kjv('\nGenesis 1\n\n  1 In the\nbeginning.\n  3 Skipped.\n')
  assert data._parse_kjv('\nGenesis 1\n\n  1 In the\nbeginning. \n  2 And.\n') == {
      'Genesis': 'In the beginning.\nAnd.'}


def test_kjv_clients_windows():
  seq_len = 32
  vocab, clients, (test_x, test_y) = data.kjv_clients(seq_len=seq_len, test_fraction=0.1)
  books = data.kjv_books()
  assert vocab == sorted(set(''.join(books.values())))
  assert len(vocab) == 63 and vocab[:2] == ['\n', ' ']
  assert list(clients) == list(books)
  ids = {c: i for i, c in enumerate(vocab)}
  window = seq_len + 1
  expected_test = []
  total = 0
  for book, (x, y) in clients.items():
    text = books[book]
    cut = int(len(text) * 0.9)
    assert x.dtype == y.dtype == np.int32
    assert x.shape == y.shape == (cut // window, seq_len)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    # Client windows end at or before the cut; test windows start at or after it.
    assert len(x) * window <= cut
    for k in (0, len(x) - 1):
      start = k * window
      assert ''.join(vocab[i] for i in x[k]) == text[start:start + seq_len]
      assert vocab[y[k, -1]] == text[start + seq_len]
    tail = text[cut:]
    for k in range(len(tail) // window):
      expected_test.append([ids[c] for c in tail[k * window:(k + 1) * window]])
    total += len(x)
  assert total > 100_000
  expected_test = np.array(expected_test, np.int32)
  np.testing.assert_array_equal(test_x, expected_test[:, :-1])
  np.testing.assert_array_equal(test_y, expected_test[:, 1:])
  assert test_x.dtype == np.int32 and test_x.shape[1] == seq_len


def test_kjv_clients_deterministic_and_capped():
  vocab, clients, (test_x, test_y) = data.kjv_clients(max_sequences_per_book=5)
  vocab2, clients2, (test_x2, _) = data.kjv_clients(max_sequences_per_book=5)
  assert vocab == vocab2
  np.testing.assert_array_equal(test_x, test_x2)
  for book, (x, y) in clients.items():
    assert x.shape == y.shape == (5, 64)  # Every book has at least 5 windows of 65.
    np.testing.assert_array_equal(x, clients2[book][0])
  assert test_x.shape == test_y.shape and test_x.shape[1] == 64
  assert len(test_x) <= 5 * 66
  np.testing.assert_array_equal(clients['Genesis'][0][0],
                                [vocab.index(c) for c in 'In the beginning God created the '
                                 'heaven and the earth.\nAnd the e'])


# --- Federated EMNIST ----------------------------------------------------------------------------


@pytest.mark.parametrize('loader', [
    lambda d: data.emnist(d),
    lambda d: data.emnist_clients(d, num_clients=2, seed=0),
])
def test_emnist_missing_file_raises_at_once(tmp_path, loader):
  start = time.monotonic()
  with pytest.raises(FileNotFoundError) as raised:
    loader(str(tmp_path))
  assert time.monotonic() - start < 1.0  # No download attempt.
  message = str(raised.value)
  assert os.path.join(str(tmp_path), 'emnist_all.sqlite') in message
  assert data.EMNIST_URL in message
  assert os.listdir(tmp_path) == []  # Nothing written either.
  with pytest.raises(FileNotFoundError, match='emnist_all.sqlite.*data_dir'):
    loader(None)


def test_emnist_file_name_matches_tff():
  from tensorflow_federated.python.simulation.datasets import emnist  # pylint: disable=g-import-not-at-top
  source = inspect.getsource(emnist.load_data)
  assert data.EMNIST_URL in source
  assert data.EMNIST_URL.rsplit('/', 1)[1] == data.EMNIST_FILE + '.lzma'


def _fake_emnist(directory, writers):
  """Writes an emnist_all.sqlite in TFF's schema: writer -> split -> [(pixels, label)]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  connection = sqlite3.connect(os.path.join(directory, 'emnist_all.sqlite'))
  connection.execute(
      'CREATE TABLE examples (split_name TEXT, client_id TEXT, serialized_example_proto BLOB)')
  connection.execute(
      'CREATE TABLE client_metadata (client_id TEXT, split_name TEXT, num_examples INTEGER)')
  for writer, splits in writers.items():
    for split, examples in splits.items():
      for pixels, label in examples:
        proto = tf.train.Example(features=tf.train.Features(feature={
            'pixels': tf.train.Feature(float_list=tf.train.FloatList(value=pixels.ravel())),
            'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }))
        connection.execute('INSERT INTO examples VALUES (?, ?, ?)',
                           (split, writer, proto.SerializeToString()))
      connection.execute('INSERT INTO client_metadata VALUES (?, ?, ?)',
                         (writer, split, len(examples)))
  connection.commit()
  connection.close()


def test_emnist_loads_local_file_through_tff(tmp_path):
  rng = np.random.default_rng(0)

  def examples(n, labels):
    return [(rng.integers(0, 256, (28, 28)).astype(np.float32) / 255, int(label))
            for label in rng.choice(labels, n)]

  writers = {
      f'f{i:04d}_00': {
          'digits_only_train': examples(3 + i, 10),
          'digits_only_test': examples(1 + i % 2, 10),
          'all_train': examples(4, 62),
          'all_test': examples(1, 62),
      } for i in range(4)
  }
  _fake_emnist(str(tmp_path), writers)
  train, test = data.emnist(str(tmp_path))
  assert train.client_ids == sorted(writers)
  element = next(iter(train.create_tf_dataset_for_client('f0002_00')))
  assert list(element) == ['label', 'pixels'] and element['pixels'].shape == (28, 28)

  clients, (test_images, test_labels) = data.emnist_clients(str(tmp_path), 3, seed=1)
  assert len(clients) == 3
  chosen = []
  for images, labels in clients:
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.shape == (len(labels), 784)
    # Find the writer by size and check the values (inverted: 1 - TFF pixels).
    (writer,) = [w for w, s in writers.items() if len(s['digits_only_train']) == len(labels)]
    chosen.append(writer)
    # SqlDataset gives a writer's rows in insertion order.
    source = writers[writer]['digits_only_train']
    np.testing.assert_allclose(images, 1 - np.stack([p.ravel() for p, _ in source]), atol=1e-6)
    np.testing.assert_array_equal(labels, [label for _, label in source])
  expected_test = [e for w in chosen for e in writers[w]['digits_only_test']]
  assert test_images.shape == (len(expected_test), 784) and test_images.dtype == np.float32
  np.testing.assert_array_equal(test_labels, [label for _, label in expected_test])
  with pytest.raises(ValueError, match='4 writers'):
    data.emnist_clients(str(tmp_path), 5, seed=0)

  all_train, _ = data.emnist(str(tmp_path), only_digits=False)
  labels = [int(e['label']) for e in all_train.create_tf_dataset_for_client('f0000_00')]
  assert labels == [label for _, label in writers['f0000_00']['all_train']]
