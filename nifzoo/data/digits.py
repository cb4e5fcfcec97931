"""The embedded dataset: scikit-learn's handwritten digits (offline, 8x8, 17 levels).

1,797 images with integer grey levels 0..16 and labels 0..9. nifzoo's fixed split:
a permutation of the 1,797 indices seeded with ``DIGITS_SPLIT_SEED``; the first
``DIGITS_NUM_TRAIN`` = 1,497 are train, the last ``DIGITS_NUM_TEST`` = 300 test.

The same split can also be read as a prepared tfds dataset (ArrayRecord, as
the paper's datasets are on a pod): :func:`write_tfds` writes it into a
``data_dir`` (local or ``gs://``), and ``--config.data.data_dir=<that dir>``
trains from there (``launch/prepare_digits.py``; README, "On Cloud TPU and GCS").
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
TFDS_NAME, TFDS_VERSION = "digits", "1.0.0"  # <data_dir>/digits/1.0.0/


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

  ``import sklearn`` is slow (it loads scipy); the file is what
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


def write_tfds(data_dir: str) -> str:
  """Writes the digits splits, in :func:`digits_source`'s order, as a tfds
  dataset in ArrayRecord files under ``<data_dir>/digits/1.0.0`` (local or
  ``gs://``): ``image`` uint8 (8, 8, 1) in [0, 17), ``label`` in [0, 10).
  ``tfds.data_source("digits", data_dir=data_dir)`` reads it back (from its
  ``dataset_info.json``; no builder class is needed). Built in a local
  temporary directory and copied (ArrayRecord's writer is local-only).
  Needs tensorflow (the ``tensorboard`` extra). Returns the dataset directory.
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from nifzoo import fileio  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
      "label": tfds.features.ClassLabel(num_classes=10)})
  splits = {}
  for split in ("train", "test"):
    src = digits_source(split)
    splits[split] = [(i, {"image": src.images[i], "label": int(src.labels[i])})
                     for i in range(len(src))]
  dst = fileio.join(data_dir, TFDS_NAME, TFDS_VERSION)
  with tempfile.TemporaryDirectory() as tmp:
    tfds.dataset_builders.store_as_tfds_dataset(
        name=TFDS_NAME, version=TFDS_VERSION, features=features,
        split_datasets=splits, data_dir=tmp, file_format="array_record",
        disable_shuffling=True,  # Records in the split's order.
        description="scikit-learn's digits in nifzoo's fixed train/test split.")
    fileio.rmtree(dst)
    fileio.copy_tree(pathlib.Path(tmp, TFDS_NAME, TFDS_VERSION), dst)
  return dst
