"""The dataset facts and the data config, shared by configs, sources and pipelines.

Imports only ``ml_collections``: ``nifzoo.configs`` (which every config file
imports) stays cheap.

``config.data`` is an ``ml_collections.ConfigDict`` with fields:

- ``name``: one of ``KNOWN_DATASETS``.
- ``data_dir``: tfds ``data_dir`` (``None``: tfds' default; local or ``gs://``).
  For digits ``None`` reads them from scikit-learn; a directory reads the
  tfds copy that ``launch/prepare_digits.py`` writes there.
- ``num_levels``: grey levels of the quantised integers, values in
  ``[0, num_levels)``; ``2**bits`` for tfds datasets, 17 for digits.
- ``bits`` (tfds datasets only): quantise 8-bit images with
  ``x_int = floor(x / 2**(8 - bits))``.
- ``image_shape``: ``(H, W, C)`` the model's input shape.
- ``split``: ``"standard"`` (the dataset's own splits) or ``"paper"`` (60/20/20
  re-split of all the dataset's examples, see ``sources.paper_split_indices``).
- ``celeba_preprocess`` (celeb_a only): ``"authors"`` or ``"center_crop"``.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections


class Dataset(NamedTuple):
  """What the zoo knows about a dataset: the facts configs and pipelines share."""
  name: str                       # config.data.name: tfds name, or "digits"
  image_shape: tuple[int, int, int]  # (H, W, C) of the model's input
  num_scales: int                 # Glow scales of the paper's models (docs/math.md §5.5)


DIGITS = "digits"
# Short name (the registry's `<dataset>-<model>` prefix) -> facts.
DATASETS = {
    "fmnist": Dataset("fashion_mnist", (28, 28, 1), 2),
    "cifar10": Dataset("cifar10", (32, 32, 3), 4),
    "celeba": Dataset("celeb_a", (64, 64, 3), 5),
    "digits": Dataset(DIGITS, (8, 8, 1), 2),
}
_BY_NAME = {d.name: d for d in DATASETS.values()}
TFDS_DATASETS = tuple(n for n in _BY_NAME if n != DIGITS)
KNOWN_DATASETS = (DIGITS,) + TFDS_DATASETS
SPLIT_MODES = ("standard", "paper")
CELEBA_PREPROCESS = ("authors", "center_crop")
DIGITS_NUM_LEVELS = 17
DEFAULT_BITS = 3  # The paper trained and evaluated every model on 3-bit images.


def check_name(name: str) -> str:
  """Raises a ValueError listing the known datasets when ``name`` is unknown."""
  if name not in KNOWN_DATASETS:
    raise ValueError(
        f"Unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}.")
  return name


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """The default ``config.data`` for dataset ``name`` (standard splits).

  Every field exists for every dataset (``bits`` is None for digits,
  ``celeba_preprocess`` is unused outside celeb_a), so a locked config takes
  overrides of any of them.
  """
  check_name(name)
  config = ml_collections.ConfigDict()
  config.name = name
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.image_shape = _BY_NAME[name].image_shape
  config.split = "standard"
  config.bits = None if name == DIGITS else DEFAULT_BITS  # digits: 17 levels.
  config.num_levels = DIGITS_NUM_LEVELS if name == DIGITS else 2**DEFAULT_BITS
  config.celeba_preprocess = "authors"
  return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Re-derives ``config.data.num_levels = 2**bits`` after overrides, then checks
  ``config.data`` (:func:`check_data_config`). Returns ``config``."""
  data = config.data
  if _valid_bits(data.get("bits")):
    data.num_levels = 2**data.bits
  check_data_config(data)
  return config


def _valid_bits(bits) -> bool:
  return isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= 8


def check_data_config(data_config) -> None:
  """Validates the fields of ``config.data``; raises ValueError naming the field."""
  name = check_name(data_config.name)
  shape = tuple(data_config.image_shape)
  if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
    raise ValueError(
        f"data.image_shape must be (H, W, C) positive ints, got {shape}.")
  split = data_config.get("split", "standard")
  if split not in SPLIT_MODES:
    raise ValueError(f"data.split must be one of {SPLIT_MODES}, got {split!r}.")
  num_levels = data_config.num_levels
  if name == DIGITS:
    if num_levels != DIGITS_NUM_LEVELS:
      raise ValueError(
          f"digits has {DIGITS_NUM_LEVELS} grey levels (0..16); data.num_levels "
          f"must be {DIGITS_NUM_LEVELS}, got {num_levels}.")
    return
  bits = data_config.get("bits", None)
  if not _valid_bits(bits):
    raise ValueError(f"data.bits must be an int in [1, 8] for {name}, got {bits!r}.")
  if num_levels != 2**bits:
    raise ValueError(
        f"data.num_levels must equal 2**data.bits = {2**bits}, got {num_levels}.")
  if name == "celeb_a":
    mode = data_config.get("celeba_preprocess", "authors")
    if mode not in CELEBA_PREPROCESS:
      raise ValueError(
          f"data.celeba_preprocess must be one of {CELEBA_PREPROCESS}, got {mode!r}.")
