"""The embedded dataset: scikit-learn's handwritten digits (offline, 8x8, 17 levels).

1,797 images with integer grey levels 0..16 and labels 0..9. nifzoo's fixed split:
a permutation of the 1,797 indices seeded with ``DIGITS_SPLIT_SEED``; the first
``DIGITS_NUM_TRAIN`` = 1,497 are train, the last ``DIGITS_NUM_TEST`` = 300 test.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib

import numpy as np

DIGITS_NUM_EXAMPLES = 1797
DIGITS_NUM_TRAIN = 1497
DIGITS_NUM_TEST = 300
DIGITS_SPLIT_SEED = 0


class ArraySource:
  """Random access over in-memory arrays: images (N, H, W, C) uint8, labels (N,)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images = np.asarray(images, dtype=np.uint8)
    self.labels = np.asarray(labels, dtype=np.int32)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    return {"image": self.images[index], "label": self.labels[index]}


def _digits_csv() -> pathlib.Path | None:
  """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing sklearn.

  ``import sklearn`` takes about 2 s (it loads scipy); the file is what
  ``sklearn.datasets.load_digits`` reads. None if it is not where it has been
  since scikit-learn 0.x (then ``load_digits_arrays`` asks sklearn itself)."""
  spec = importlib.util.find_spec("sklearn")  # Locates the package, runs nothing.
  for root in (spec.submodule_search_locations or []) if spec else []:
    path = pathlib.Path(root, "datasets", "data", "digits.csv.gz")
    if path.is_file():
      return path
  return None


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All digits: images (1797, 8, 8, 1) uint8 in [0, 17), labels (1797,) int32.

  The numbers of ``sklearn.datasets.load_digits()`` (its CSV, 64 grey levels then
  the label per row, parsed as it parses them; ``tests/test_data.py`` compares)."""
  path = _digits_csv()
  if path is None:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    bunch = datasets.load_digits()
    flat, target = bunch.data, bunch.target
  else:
    with gzip.open(path, "rt", encoding="utf-8") as f:
      table = np.loadtxt(f, delimiter=",")
    flat, target = table[:, :-1], table[:, -1]
  if flat.shape != (DIGITS_NUM_EXAMPLES, 64):
    raise ValueError(f"scikit-learn's digits: expected ({DIGITS_NUM_EXAMPLES}, 64) "
                     f"grey levels, got {flat.shape}.")
  images = np.rint(flat).astype(np.uint8).reshape(-1, 8, 8, 1)
  labels = target.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def digits_split_indices(split: str) -> np.ndarray:
  """Indices into ``load_digits()`` of nifzoo's fixed train (1,497) / test (300) split."""
  perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(DIGITS_NUM_EXAMPLES)
  if split == "train":
    return perm[:DIGITS_NUM_TRAIN]
  if split == "test":
    return perm[DIGITS_NUM_TRAIN:]
  raise ValueError(f"digits has splits 'train' and 'test', got {split!r}.")


def digits_source(split: str) -> ArraySource:
  """The digits ``split`` ("train" or "test") as an ``ArraySource``."""
  images, labels = load_digits_arrays()
  idx = digits_split_indices(split)
  return ArraySource(images[idx], labels[idx])
