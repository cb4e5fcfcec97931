"""The embedded dataset: scikit-learn's handwritten digits (offline, 8x8, 17 levels).

1,797 images with integer grey levels 0..16 and labels 0..9. nifzoo's fixed split:
a permutation of the 1,797 indices seeded with ``DIGITS_SPLIT_SEED``; the first
``DIGITS_NUM_TRAIN`` = 1,497 are train, the last ``DIGITS_NUM_TEST`` = 300 test.
"""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All digits: images (1797, 8, 8, 1) uint8 in [0, 17), labels (1797,) int32."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  bunch = datasets.load_digits()
  images = np.rint(bunch.images).astype(np.uint8)[..., None]
  labels = bunch.target.astype(np.int32)
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
