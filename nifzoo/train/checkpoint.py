"""Orbax checkpoints of a training run: state + data-iterator position.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``. ``state`` is the
``TrainState`` pytree (params, ActNorm flags and other variables, optimiser
state, step, raw RNG key data); ``data`` is the grain iterator state of each
process (grain's Orbax handler: ``process_{i}-of-{n}.json``). Restores always go against an abstract target that carries the
shardings we want (never the saved ones), so a checkpoint written on a pod
restores on one CPU and vice versa.
"""

from __future__ import annotations

import os

import grain
import jax
from etils import epath
import orbax.checkpoint as ocp

from nifzoo import data as data_lib


CONFIG_FILE = "config.json"  # The run's config, beside checkpoints/ (for zoo.load).


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be read."""


def manager(workdir: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  directory = epath.Path(workdir) / "checkpoints"
  if not str(workdir).startswith("gs://"):
    directory = directory.absolute()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter) -> None:
  """Saves ``state`` and the data iterator at ``step`` (asynchronously)."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter)))


def abstract_like(state, sharding):
  """ShapeDtypeStructs of ``state`` carrying ``sharding`` (the restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore(mngr: ocp.CheckpointManager, step: int, target, data_iter):
  """Restores the state at ``step`` into ``target``'s structure and shardings.

  The data iterator is restored in place. A checkpoint written by a different
  number of processes raises ValueError; one that cannot be read raises
  ``CheckpointError`` naming its directory (it is never deleted).
  """
  path = os.path.join(str(mngr.directory), str(step))
  data_lib.check_iterator_processes(os.path.join(path, "data"))
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
  except Exception as e:  # Orbax raises many types for a damaged directory.
    raise CheckpointError(
        f"Could not restore the checkpoint at {path}: {type(e).__name__}: {e}. "
        "It was left in place; move it aside to resume from an earlier step."
    ) from e
  return restored["state"]
