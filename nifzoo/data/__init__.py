"""Input data: tfds ArrayRecord datasets and the embedded digits, as grain pipelines.

Public API::

  default_data_config(name)                    # config.data for a dataset
  get_source(data_config, split)               # random access, quantised examples
  make_dataset(data_config, split, *, global_batch_size, seed, ...)  # grain.IterDataset
  iterator_save_args(it) / iterator_restore_args(it)  # Orbax args for the iterator

Batches are ``{"image": int32 (B_local, H, W, C) in [0, num_levels),
"label": int32 (B_local,)}`` with ``B_local = global_batch_size // process_count``.
"""

from nifzoo.data.checkpoint import DataIteratorHandler
from nifzoo.data.checkpoint import DataIteratorRestore
from nifzoo.data.checkpoint import DataIteratorSave
from nifzoo.data.checkpoint import iterator_restore_args
from nifzoo.data.checkpoint import iterator_save_args
from nifzoo.data.config import KNOWN_DATASETS
from nifzoo.data.config import check_data_config
from nifzoo.data.config import default_data_config
from nifzoo.data.digits import DIGITS_NUM_EXAMPLES
from nifzoo.data.digits import DIGITS_NUM_TEST
from nifzoo.data.digits import DIGITS_NUM_TRAIN
from nifzoo.data.pipeline import ProcessIterDataset
from nifzoo.data.pipeline import ProcessIterator
from nifzoo.data.pipeline import make_dataset
from nifzoo.data.pipeline import shard_bounds
from nifzoo.data.sources import DatasetNotPreparedError
from nifzoo.data.sources import celeba_authors
from nifzoo.data.sources import celeba_center_crop
from nifzoo.data.sources import get_source
from nifzoo.data.sources import paper_split_indices
from nifzoo.data.sources import paper_split_sizes
from nifzoo.data.sources import quantise
