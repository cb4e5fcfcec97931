"""Input data: tfds ArrayRecord datasets and the embedded digits, as grain pipelines.

Public API::

  default_data_config(name)                    # config.data for a dataset
  get_source(data_config, split)               # random access, quantised examples
  make_dataset(data_config, split, *, global_batch_size, seed, ...)  # grain.IterDataset

Batches are ``{"image": int32 (B_local, H, W, C) in [0, num_levels),
"label": int32 (B_local,)}`` with ``B_local = global_batch_size // process_count``.

The names are imported lazily: ``nifzoo.data.config`` (the dataset facts, used by
``nifzoo.configs``) must not pull in jax, grain or tfds.
"""

import importlib

_EXPORTS = {
    "config": ("Dataset", "DATASETS", "KNOWN_DATASETS", "check_data_config",
               "default_data_config", "finalize"),
    "digits": ("DIGITS_NUM_EXAMPLES", "DIGITS_NUM_TEST", "DIGITS_NUM_TRAIN"),
    "pipeline": ("check_iterator_processes", "make_dataset", "shard_bounds"),
    "sources": ("DatasetNotPreparedError", "celeba_authors", "celeba_center_crop",
                "get_source", "paper_split_indices", "paper_split_sizes",
                "quantise"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
  if name in _MODULE_OF:
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return __all__
