"""Saving the data iterator inside an Orbax ``CheckpointManager`` composite.

Recipe::

  it = iter(make_dataset(config.data, "train", global_batch_size=..., seed=...))
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=nifzoo.data.iterator_save_args(it)))
  ...
  it = iter(make_dataset(...same arguments...))
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=nifzoo.data.iterator_restore_args(it)))
  # `it` now yields exactly the batches the saved iterator would have yielded.

Every process writes its own ``process_{i}-of-{n}.json`` (the iterator's JSON
state) into the item directory, as grain's own ``grain.checkpoint.CheckpointHandler``
does; unlike that handler, the file name comes from the iterator (so a pipeline
built with an explicit process_index/process_count round-trips) and a checkpoint
written by a different number of processes fails with a clear ValueError.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import grain
import orbax.checkpoint as ocp
from etils import epath

from nifzoo.data import pipeline

_FILE_RE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def _process_of(it) -> tuple[int, int]:
  if isinstance(it, pipeline.ProcessIterator):
    return it.process_index, it.process_count
  return grain.sharding.get_process_index_and_count()


def _filename(process_index: int, process_count: int) -> str:
  return f"process_{process_index}-of-{process_count}.json"


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
  """Orbax handler for grain ``DatasetIterator``s: one JSON state file per process."""

  def save(self, directory: epath.Path, item: Any = None, args: Any = None):
    it = item if item is not None else args.item
    directory = epath.Path(directory)
    state = getattr(args, "state", None)
    state = json.dumps(it.get_state() if state is None else state, indent=2)
    (directory / _filename(*_process_of(it))).write_text(state)

  def restore(self, directory: epath.Path, item: Any = None, args: Any = None):
    it = item if item is not None else args.item
    directory = epath.Path(directory)
    index, count = _process_of(it)
    path = directory / _filename(index, count)
    if not path.exists():
      saved = sorted(p.name for p in directory.iterdir() if _FILE_RE.fullmatch(p.name))
      counts = sorted({int(_FILE_RE.fullmatch(n).group(2)) for n in saved})
      if counts and count not in counts:
        raise ValueError(
            f"The data iterator checkpoint in {directory} was saved by "
            f"{' / '.join(map(str, counts))} process(es) but this run has {count}. "
            f"grain iterator state is per process: restarts must use the same "
            f"number of processes.")
      raise ValueError(
          f"No data iterator state for process {index} of {count} in {directory} "
          f"(found: {saved}).")
    it.set_state(json.loads(path.read_text()))
    return it


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  """``item``: the iterator; ``state``: its state when the args were made."""
  item: Any
  state: dict[str, Any] | None = None


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  item: Any


def iterator_save_args(it) -> DataIteratorSave:
  """Orbax args saving iterator ``it``'s state (use inside ``ocp.args.Composite``).

  The state is captured now, so advancing ``it`` while Orbax writes is safe.
  """
  return DataIteratorSave(it, it.get_state())


def iterator_restore_args(it) -> DataIteratorRestore:
  """Orbax args restoring a saved state into ``it`` (a fresh iterator, same pipeline)."""
  return DataIteratorRestore(it)
