"""grain input pipelines: shard per process, shuffle, repeat, batch.

``make_dataset`` builds::

  MapDataset.source(get_source(...))      # quantised examples
    [start:stop]                          # this process's contiguous shard
    .shuffle(seed)                        # global permutation of the shard
    .repeat()                             # reseeds the shuffle every epoch
    .to_iter_dataset(ReadOptions(...))    # in-process reader threads, no workers
    .batch(B_local)                       # dict of numpy arrays
  -> ProcessIterDataset                   # tags the iterator state with the process

Shards: every process gets ``n // process_count`` examples (contiguous blocks, the
last ``n % process_count`` examples are dropped), so shards are disjoint, equal in
size, and every process yields the same number of batches (no multi-host hang at
the end of an evaluation).
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np

from nifzoo import checks
from nifzoo.data import sources

_STATE_KEYS = ("process_index", "process_count", "dataset", "pipeline")


def _batch_fn(examples) -> dict[str, np.ndarray]:
  """list of examples -> {"image": int32 (B, H, W, C), "label": int32 (B,)}."""
  return {
      "image": np.stack([e["image"] for e in examples]).astype(np.int32),
      "label": np.asarray([e["label"] for e in examples], dtype=np.int32),
  }


def _process_index_count(process_index, process_count) -> tuple[int, int]:
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  process_count = checks.check_positive_int(process_count, "process_count")
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index must be in [0, {process_count}), got {process_index}.")
  return int(process_index), process_count


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of this process's contiguous, equal-sized shard of ``n`` examples."""
  per = n // process_count
  return process_index * per, (process_index + 1) * per


class ProcessIterDataset(grain.IterDataset):
  """Wraps an ``IterDataset`` so that its iterator state names the process."""

  def __init__(self, parent: grain.IterDataset, *, process_index: int,
               process_count: int, dataset: str):
    super().__init__(parent)
    self.process_index = process_index
    self.process_count = process_count
    self.dataset = dataset

  def __iter__(self) -> "ProcessIterator":
    return ProcessIterator(self._parent.__iter__(), process_index=self.process_index,
                           process_count=self.process_count, dataset=self.dataset)

  def __str__(self) -> str:
    return (f"ProcessIterDataset(process {self.process_index} of "
            f"{self.process_count}, {self.dataset})")


class ProcessIterator(grain.DatasetIterator):
  """Iterator whose state is ``{"process_index", "process_count", "dataset", "pipeline"}``.

  ``set_state`` refuses a state saved by a different process count or index:
  grain iterator states are per process, so a restart must use the same number
  of processes.
  """

  def __init__(self, parent: grain.DatasetIterator, *, process_index: int,
               process_count: int, dataset: str):
    super().__init__(parent)
    self.process_index = process_index
    self.process_count = process_count
    self.dataset = dataset

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {"process_index": self.process_index, "process_count": self.process_count,
            "dataset": self.dataset, "pipeline": self._parent.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
      raise ValueError(f"Not a nifzoo data iterator state (missing {missing}).")
    if state["process_count"] != self.process_count:
      raise ValueError(
          f"The data iterator state was saved by a run with {state['process_count']} "
          f"processes, but this run has {self.process_count}. grain iterator state "
          f"is per process: restarts must use the same number of processes.")
    if state["process_index"] != self.process_index:
      raise ValueError(
          f"The data iterator state belongs to process {state['process_index']}, "
          f"this is process {self.process_index} (of {self.process_count}); "
          f"each process must restore its own state.")
    if state["dataset"] != self.dataset:
      raise ValueError(
          f"The data iterator state is for {state['dataset']!r}, this iterator "
          f"reads {self.dataset!r}.")
    self._parent.set_state(state["pipeline"])

  def __str__(self) -> str:
    return (f"ProcessIterator(process {self.process_index} of "
            f"{self.process_count}, {self.dataset})")


def make_dataset(
    data_config,
    split: str,
    *,
    global_batch_size: int,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 8,
    prefetch_buffer_size: int | None = None,
) -> ProcessIterDataset:
  """The input pipeline of ``split`` for this process.

  Args:
    data_config: ``config.data``.
    split: ``"train"`` | ``"validation"`` | ``"test"``.
    global_batch_size: batch size over all processes; must divide by process_count.
    seed: shuffle seed (same seed -> same batches); each epoch is reshuffled.
    shuffle: shuffle the shard.
    repeat: repeat forever (batches run across epoch boundaries) or one epoch.
    drop_remainder: drop the last, smaller batch (only matters without repeat).
    process_index, process_count: default ``jax.process_index()/process_count()``.
    num_threads: reader threads (in-process, no worker processes).
    prefetch_buffer_size: examples read ahead; default ``2 * B_local``.

  Returns:
    A ``grain.IterDataset`` yielding ``{"image": int32 (B_local, H, W, C) in
    [0, num_levels), "label": int32 (B_local,)}`` with
    ``B_local = global_batch_size // process_count``. Its iterator supports
    ``get_state()/set_state()``; see ``nifzoo.data.iterator_save_args``.
  """
  global_batch_size = checks.check_positive_int(global_batch_size, "global_batch_size")
  process_index, process_count = _process_index_count(process_index, process_count)
  if global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by the number of "
        f"processes ({process_count}); every process reads global_batch_size / "
        f"process_count examples per step.")
  local_batch = global_batch_size // process_count

  source = sources.get_source(data_config, split)
  start, stop = shard_bounds(len(source), process_index, process_count)
  if stop <= start:
    raise ValueError(
        f"{data_config.name}/{split} has {len(source)} examples, fewer than the "
        f"{process_count} processes.")
  if not repeat and drop_remainder and stop - start < local_batch:
    raise ValueError(
        f"Each process's shard of {data_config.name}/{split} has {stop - start} "
        f"examples, fewer than the local batch {local_batch}: with "
        f"drop_remainder=True and repeat=False it would yield no batch.")

  ds = grain.MapDataset.source(source)[start:stop]
  if shuffle:
    ds = ds.shuffle(seed=int(seed))
  if repeat:
    ds = ds.repeat(None)  # reseed_each_epoch: a new permutation every epoch.
  read = grain.ReadOptions(
      num_threads=num_threads,
      prefetch_buffer_size=prefetch_buffer_size or 2 * local_batch)
  it_ds = ds.to_iter_dataset(read).batch(
      local_batch, drop_remainder=drop_remainder, batch_fn=_batch_fn)
  return ProcessIterDataset(
      it_ds, process_index=process_index, process_count=process_count,
      dataset=f"{data_config.name}:{data_config.get('split', 'standard')}:{split}")
