"""grain input pipelines: shard per process, shuffle, repeat, batch.

``make_dataset`` builds::

  MapDataset.source(get_source(...))      # quantised examples
    [start:stop]                          # this process's contiguous shard
    .shuffle(seed)                        # global permutation of the shard
    .repeat()                             # reseeds the shuffle every epoch
    .batch(B_local)                       # dict of numpy arrays
    .to_iter_dataset(ReadOptions(...))    # in-process reader threads, no workers

Batching before ``to_iter_dataset`` makes the reader threads prefetch whole batches
(each thread builds one): the consumer pops one future per step, and no
per-example work runs on the training loop's thread.
The iterator position is a batch count (``{"next_index": step}`` for the training
iterator).

Checkpoint the iterator with grain's Orbax handler
(``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)``, one JSON state
file per process); :func:`check_iterator_processes` adds the clear error grain
lacks when a run restarts with a different number of processes.

Shards: every process gets ``n // process_count`` examples (contiguous blocks, the
last ``n % process_count`` examples are dropped), so shards are disjoint, equal in
size, and every process yields the same number of batches (no multi-host hang at
the end of an evaluation).
"""

from __future__ import annotations

import re

import grain
import jax
import numpy as np
from etils import epath

from nifzoo import checks
from nifzoo import mesh as mesh_lib
from nifzoo.data import sources


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


_STATE_FILE_RE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def check_iterator_processes(directory, process_count: int | None = None) -> None:
  """Checks that the iterator states in ``directory`` (an Orbax item directory
  written by grain's handler) were saved by ``process_count`` processes.

  grain names each process's state file ``process_{i}-of-{n}.json`` and, on a
  mismatch, fails with "File ... does not exist"; this says what went wrong.
  """
  process_count = jax.process_count() if process_count is None else process_count
  directory = epath.Path(directory)
  names = [p.name for p in directory.iterdir()] if directory.exists() else []
  counts = sorted({int(m.group(2)) for m in map(_STATE_FILE_RE.fullmatch, names) if m})
  if counts and process_count not in counts:
    raise ValueError(
        f"The data iterator checkpoint in {directory} was saved by "
        f"{' / '.join(map(str, counts))} process(es) but this run has "
        f"{process_count}. grain iterator state is per process: restarts must "
        "use the same number of processes.")


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
) -> grain.IterDataset:
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
    num_threads: reader threads (in-process, no worker processes), each building
      whole batches.
    prefetch_buffer_size: batches read ahead; default ``max(2, num_threads)``.

  Returns:
    A ``grain.IterDataset`` yielding ``{"image": int32 (B_local, H, W, C) in
    [0, num_levels), "label": int32 (B_local,)}`` with
    ``B_local = global_batch_size // process_count``. Its iterator supports
    ``get_state()/set_state()`` and checkpoints with grain's Orbax handler.
  """
  global_batch_size = checks.check_positive_int(global_batch_size, "global_batch_size")
  process_index, process_count = _process_index_count(process_index, process_count)
  local_batch = mesh_lib.check_batch_size(
      global_batch_size, process_count=process_count, device_count=1,
      name="global_batch_size")

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
  ds = ds.batch(local_batch, drop_remainder=drop_remainder, batch_fn=_batch_fn)
  read = grain.ReadOptions(
      num_threads=num_threads,
      prefetch_buffer_size=prefetch_buffer_size or max(2, num_threads))
  return ds.to_iter_dataset(read)
