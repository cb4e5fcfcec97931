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
import shutil

import grain
import jax
import numpy as np
from flax import nnx
from etils import epath
import orbax.checkpoint as ocp

from nifzoo import data as data_lib


CONFIG_FILE = "config.json"  # The run's config, beside checkpoints/ (for zoo.load).
VARIABLES_DIR = "variables"  # A variables-only checkpoint in a workdir (converted models).


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


# ------------------------------------------------- variables-only checkpoints
# {"params", "rest"} of a model: what the registry ships, what a training
# state holds besides the optimiser, and what `init_from` starts a run from.


def _path_str(path) -> str:
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
    parts.append(str(name))
  if parts and parts[-1] == "value":
    parts.pop()
  return "/".join(parts)


def _flat_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): tuple(getattr(l, "shape", ())) for p, l in leaves}


def _abspath(path: str) -> str:
  # Orbax reads an empty tree from a relative path without complaint.
  return path if str(path).startswith("gs://") else os.path.abspath(path)


def check_shapes(path: str, target) -> None:
  """Names the first variable of ``target`` whose saved shape differs (or that
  the checkpoint lacks); checked from Orbax's metadata before any restore."""
  path = _abspath(path)
  try:
    meta = ocp.StandardCheckpointer().metadata(path)
  except Exception as e:  # Orbax raises many types for a damaged directory.
    raise CheckpointError(f"Cannot read the checkpoint at {path}: "
                   f"{type(e).__name__}: {e}") from e
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  saved = _flat_shapes(tree)
  if not saved:
    raise CheckpointError(f"The checkpoint at {path} lists no variables.")
  want = _flat_shapes(target)
  for k, shape in want.items():
    if k not in saved:
      raise CheckpointError(f"The checkpoint at {path} has no variable {k!r} that the "
                     f"config's model needs (shape {shape}).")
    if saved[k] != shape:
      raise CheckpointError(f"The checkpoint at {path} does not fit the config: "
                     f"variable {k!r} has shape {saved[k]} there, the model "
                     f"needs {shape}.")


def restore_variables(path: str, target: dict, *, partial: bool = False) -> dict:
  """Restores ``{"params", "rest"}`` into ``target`` (abstract, with shardings).

  ``partial``: read only those items of a larger tree (a training ``state``).
  """
  path = _abspath(path)
  try:
    if partial:
      ckptr = ocp.PyTreeCheckpointer()
      restore_args = ocp.checkpoint_utils.construct_restore_args(target)
      return ckptr.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))
    return ocp.StandardCheckpointer().restore(path, target)
  except Exception as e:  # Never a partial model: say what failed.
    raise CheckpointError(f"Could not restore the checkpoint at {path}: "
                   f"{type(e).__name__}: {e}") from e




def save_variables(model_or_state, path: str) -> dict:
  """Writes a variables-only checkpoint ``{"params", "rest"}`` (unsharded
  numpy, no optimiser state) at ``path``; returns the number of parameters."""
  if isinstance(model_or_state, nnx.Module):
    _, params, rest = nnx.split(model_or_state, nnx.Param, ...)
    state = {"params": params, "rest": rest}
  else:
    state = model_or_state
  state = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state)
  path = _abspath(path)
  if os.path.exists(path):
    shutil.rmtree(path)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, state)
  ckptr.wait_until_finished()
  num_params = int(sum(np.size(x) for x in jax.tree.leaves(state["params"])))
  return num_params


def latest_step(workdir: str) -> int | None:
  root = epath.Path(workdir) / "checkpoints"
  steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if (
      root.exists()) else []
  return max(steps) if steps else None


def variables_source(workdir: str, step: int | None = None
                     ) -> tuple[str, bool, int]:
  """Where a workdir's model variables are: ``(path, partial, step)``.

  A training workdir: ``checkpoints/<step>/state`` (newest by default), read
  partially (no optimiser state). A workdir without training checkpoints but
  with ``variables/`` (written by ``launch/convert.py``): that, at step 0.
  """
  newest = latest_step(workdir)
  variables = epath.Path(workdir) / VARIABLES_DIR
  if newest is None:
    if variables.exists() and step in (None, 0):
      return str(variables), False, 0
    raise CheckpointError(f"{workdir} holds no checkpoint (looked in "
                          f"{epath.Path(workdir) / 'checkpoints'} and {variables}).")
  step = newest if step is None else int(step)
  path = epath.Path(workdir) / "checkpoints" / str(step) / "state"
  if not path.exists():
    raise CheckpointError(f"{workdir} has no checkpoint at step {step} ({path}).")
  return str(path), True, step
