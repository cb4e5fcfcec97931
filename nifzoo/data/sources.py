"""Random-access sources: tfds ArrayRecord datasets, digits, the paper re-split.

Every source has ``__len__`` and ``__getitem__(i)`` returning
``{"image": np.uint8 (H, W, C) in [0, num_levels), "label": np.int32 ()}``.
Quantisation and CelebA's preprocessing happen inside the source (in
``__getitem__``), so a source already yields the model's integers and the grain
pipeline only shuffles, shards and batches.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from nifzoo.data import config as config_lib
from nifzoo.data import digits as digits_lib

PAPER_SPLIT_SEED = 0  # nifzoo's fixed permutation for the paper's 60/20/20 re-split.
PAPER_FRACTIONS = (0.6, 0.2, 0.2)

# The dataset's own splits; the paper re-split concatenates them in this order.
_STANDARD_SPLITS = {
    "digits": ("train", "test"),
    "fashion_mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "celeb_a": ("train", "validation", "test"),
}
_CELEBA_SHAPE = (218, 178, 3)
_CELEBA_CROP = 140  # "center_crop": centre 140x140, then area-resize to 64x64.
_CELEBA_OUT = 64


class DatasetNotPreparedError(FileNotFoundError):
  """A tfds dataset is not prepared as ArrayRecord in the given data_dir."""


# ----------------------------------------------------------------- preprocessing


def quantise(x: np.ndarray, bits: int) -> np.ndarray:
  """``x_int = floor(x / 2**(8 - bits))`` for uint8 ``x``; same shape, uint8."""
  x = np.asarray(x)
  if x.dtype != np.uint8:
    raise TypeError(f"quantise expects uint8 images, got dtype {x.dtype}.")
  return np.right_shift(x, 8 - bits)


def celeba_authors(image: np.ndarray) -> np.ndarray:
  """The authors' CelebA: ``image[::2, ::2][26:-19, 12:-13]``. (218,178,3) -> (64,64,3).

  Every other pixel gives (109, 89); the authors' crop keeps rows 26:90 and
  columns 12:76 of that (not centred vertically: 26 rows above, 19 below).
  """
  if image.shape[:2] != _CELEBA_SHAPE[:2]:
    raise ValueError(f"CelebA images must be {_CELEBA_SHAPE}, got {image.shape}.")
  return image[::2, ::2][26:-19, 12:-13]


def celeba_center_crop(image: np.ndarray) -> np.ndarray:
  """Standard CelebA 64: centre 140x140 crop, area (box) resize. (218,178,3) -> (64,64,3).

  The resize is PIL's ``BOX`` filter (exact area averaging), rounded to uint8.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  top = (image.shape[0] - _CELEBA_CROP) // 2
  left = (image.shape[1] - _CELEBA_CROP) // 2
  crop = np.ascontiguousarray(image[top:top + _CELEBA_CROP, left:left + _CELEBA_CROP])
  resized = Image.fromarray(crop).resize(
      (_CELEBA_OUT, _CELEBA_OUT), resample=Image.Resampling.BOX)
  return np.asarray(resized, dtype=np.uint8)


_CELEBA_FNS = {"authors": celeba_authors, "center_crop": celeba_center_crop}


def _record_fn(data_config) -> Callable[[dict[str, Any]], dict[str, np.ndarray]]:
  """tfds record -> ``{"image": uint8 (H,W,C) quantised, "label": int32}``."""
  bits = data_config.bits
  if data_config.name == "celeb_a":
    crop = _CELEBA_FNS[data_config.get("celeba_preprocess", "authors")]
  else:
    crop = None

  def fn(record):
    image = np.asarray(record["image"], dtype=np.uint8)
    if crop is not None:
      image = crop(image)
    # CelebA has no class label: 0 (its attributes are left in tfds).
    label = record.get("label", 0)
    return {"image": quantise(image, bits), "label": np.int32(label)}

  return fn


# ----------------------------------------------------------------- sources


class MappedSource:
  """Applies ``fn`` to each record of a random-access ``source``."""

  def __init__(self, source, fn: Callable[[Any], dict[str, np.ndarray]]):
    self.source = source
    self.fn = fn

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    # Records are read one by one: tfds' mock breaks ``__getitems__``.
    return self.fn(self.source[int(index)])

  def __repr__(self) -> str:
    return f"MappedSource({self.source!r})"


class ConcatSource:
  """The concatenation of random-access sources (indices run through each in turn)."""

  def __init__(self, sources: Sequence[Any]):
    self.sources = list(sources)
    self._ends = np.cumsum([len(s) for s in self.sources])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for length {len(self)}.")
    k = int(np.searchsorted(self._ends, index, side="right"))
    start = 0 if k == 0 else int(self._ends[k - 1])
    return self.sources[k][index - start]


class SubsetSource:
  """``source[indices[i]]``; ``indices`` (N,) int64 into ``source``."""

  def __init__(self, source, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices, dtype=np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[int(index)])]


def paper_split_sizes(n: int) -> tuple[int, int, int]:
  """(train, validation, test) sizes of the 60/20/20 re-split of ``n`` examples."""
  n_train = round(PAPER_FRACTIONS[0] * n)
  n_val = round(PAPER_FRACTIONS[1] * n)
  return n_train, n_val, n - n_train - n_val


def paper_split_indices(n: int, split: str) -> np.ndarray:
  """Indices into the concatenated dataset for the paper's 60/20/20 re-split.

  A fixed permutation (``PAPER_SPLIT_SEED``) of ``range(n)``; train is its first
  60%, validation the next 20%, test the last 20%. The authors' own permutation
  is not published, so this is nifzoo's fixed one.
  """
  perm = np.random.default_rng(PAPER_SPLIT_SEED).permutation(n)
  n_train, n_val, _ = paper_split_sizes(n)
  bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val),
            "test": (n_train + n_val, n)}
  start, stop = bounds[split]
  return perm[start:stop]


def _prepare_hint(name: str, data_dir) -> str:
  where = data_dir if data_dir else "~/tensorflow_datasets"
  hint = (f"Prepare it once (ArrayRecord, readable by tfds.data_source) with:\n"
          f"  tfds build {name} --data_dir={where} --file_format=array_record\n"
          f"(a dataset prepared as TFRecord cannot be read by tfds.data_source).")
  if name == "celeb_a":
    hint += (
        "\nCelebA downloads from Google Drive often fail with quota errors "
        "(tfds issues 1271, 1482): retry later, or prepare it on a machine where "
        "the download works and copy the prepared folder <data_dir>/celeb_a/2.1.0 "
        "into this data_dir (e.g. gsutil -m cp -r for a bucket).")
  return hint


def _tfds_source(name: str, split: str, data_dir):
  """``tfds.data_source`` with a clear error when the dataset is not prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types here; re-raise one.
    raise DatasetNotPreparedError(
        f"tfds dataset {name!r} (split {split!r}) is not prepared as ArrayRecord in "
        f"data_dir={data_dir!r}.\n{_prepare_hint(name, data_dir)}\n"
        f"tfds said: {type(e).__name__}: {e}") from e


def _raw_split(data_config, split: str):
  """One of the dataset's own splits, already mapped to quantised examples."""
  if data_config.name == config_lib.DIGITS:
    if not data_config.get("data_dir", None):  # Embedded in scikit-learn.
      return digits_lib.digits_source(split)
    raw = _tfds_source(digits_lib.TFDS_NAME, split, data_config.data_dir)
    return MappedSource(raw, lambda r: {"image": np.asarray(r["image"], np.uint8),
                                        "label": np.int32(r["label"])})
  raw = _tfds_source(data_config.name, split, data_config.get("data_dir", None))
  return MappedSource(raw, _record_fn(data_config))


def _check_split(data_config, split: str) -> None:
  mode = data_config.get("split", "standard")
  if mode == "paper":
    allowed = ("train", "validation", "test")
  else:
    allowed = _STANDARD_SPLITS[data_config.name]
  if split not in allowed:
    extra = (" ('validation' exists only with data.split='paper')"
             if split == "validation" else "")
    raise ValueError(
        f"split must be one of {allowed} for {data_config.name} with "
        f"data.split={mode!r}, got {split!r}{extra}.")


def _check_image_shape(source, data_config) -> None:
  """The first example's image shape must equal ``data_config.image_shape``."""
  if len(source) == 0:
    return
  got = tuple(np.shape(source[0]["image"]))
  want = tuple(data_config.image_shape)
  if got != want:
    raise ValueError(
        f"{data_config.name} yields images of shape {got} but data.image_shape is "
        f"{want}; set data.image_shape={got} or change the preprocessing.")


def get_source(data_config, split: str):
  """A random-access source for ``split`` of ``data_config``'s dataset.

  Args:
    data_config: ``config.data`` (see ``nifzoo.data.config``).
    split: ``"train"`` | ``"test"`` | ``"validation"`` (paper split, and celeb_a's
      own validation split).

  Returns:
    A source with ``__len__`` and ``__getitem__(i)`` ->
    ``{"image": uint8 (H, W, C) in [0, num_levels), "label": int32 ()}``.
  """
  config_lib.check_data_config(data_config)
  _check_split(data_config, split)
  if data_config.get("split", "standard") == "paper":
    parts = [_raw_split(data_config, s) for s in _STANDARD_SPLITS[data_config.name]]
    full = ConcatSource(parts)
    source = SubsetSource(full, paper_split_indices(len(full), split))
  else:
    source = _raw_split(data_config, split)
  _check_image_shape(source, data_config)
  return source
