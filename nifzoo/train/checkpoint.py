"""Orbax checkpoints of a training run: state + data-iterator position.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``. ``state`` is the
``TrainState`` pytree (params, ActNorm flags and other variables, optimiser
state, step, raw RNG key data); ``data`` is the grain iterator state of each
process (grain's Orbax handler: ``process_{i}-of-{n}.json``). Restores always
go against an abstract target that carries the shardings we want (never the
saved ones), so a checkpoint written on a pod restores on one CPU and vice
versa. The model's variables alone (what ``zoo.load``, ``init_from`` and the
registry read) and the workdir's other files: :mod:`nifzoo.variables`.

Integrity: once a save has finalized, ``<step>/checksums.json`` records the
sha256 of every file of its items; :func:`restore` verifies it and refuses a
state that is not finite. :func:`restore_newest_intact` falls back past a
damaged checkpoint, moving it (never deleting it) into ``<workdir>/damaged/``.
A state that is not finite is never saved.
"""

from __future__ import annotations

import errno

import grain
import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from nifzoo import data as data_lib
from nifzoo import fileio
from nifzoo import variables as variables_lib
from nifzoo.train import step as step_lib
from nifzoo.variables import CHECKSUMS_FILE
from nifzoo.variables import CheckpointError

DAMAGED_DIR = "damaged"  # Where refused checkpoints are moved, beside checkpoints/.


class CheckpointSaveError(RuntimeError):
  """A checkpoint save failed (a full disk, a lost bucket): the run must stop."""


def manager(workdir: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  directory = fileio.as_path(workdir) / variables_lib.CHECKPOINTS_DIR
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=variables_lib.STEP_ITEMS)


_all_finite = jax.jit(step_lib.all_finite)


def is_finite(tree) -> bool:
  """``step.all_finite`` as a Python bool (replicated arrays on any mesh)."""
  return bool(np.asarray(jax.device_get(_all_finite(tree))))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter) -> None:
  """Saves ``state`` and the data iterator at ``step`` (asynchronously).

  Waits for the previous save first (:func:`finish`). Refuses (ValueError) a
  state with a NaN or inf: it would poison every resume.
  """
  if not is_finite(state):
    raise ValueError(f"Refusing to save the state of step {step}: it holds "
                     "NaN or inf values.")
  finish(mngr)
  try:
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter)))
  except Exception as e:  # A synchronous part of the save failed.
    raise _save_error(mngr, step, e) from e
  mngr.pending_step = step  # For finish()'s message.


def finish(mngr: ocp.CheckpointManager) -> None:
  """Waits for the in-flight save, then writes the checksums of every
  finalized step that lacks them (process 0).

  A failed save raises :class:`CheckpointSaveError` naming its step.
  """
  try:
    mngr.wait_until_finished()
    mngr.check_for_errors()
  except Exception as e:
    raise _save_error(mngr, getattr(mngr, "pending_step", None), e) from e
  mngr.pending_step = None
  if jax.process_index() == 0:
    for step in mngr.all_steps():
      step_dir = epath.Path(mngr.directory) / str(step)
      if not (step_dir / CHECKSUMS_FILE).exists():
        variables_lib.write_checksums(step_dir)


def check_save(mngr: ocp.CheckpointManager) -> None:
  """Raises :class:`CheckpointSaveError` now if the in-flight save has failed
  (cheap: does not wait for it)."""
  try:
    mngr.check_for_errors()
  except Exception as e:
    raise _save_error(mngr, getattr(mngr, "pending_step", None), e) from e


def _save_error(mngr, step, e) -> CheckpointSaveError:
  full = isinstance(e, OSError) and e.errno == errno.ENOSPC
  return CheckpointSaveError(
      f"Saving the checkpoint of step {step} into {mngr.directory} failed"
      f"{' (the disk is full)' if full else ''}: {type(e).__name__}: {e}. "
      f"Stopped; the earlier checkpoints {sorted(mngr.all_steps())} are "
      "untouched. Free space (or fix the storage) and rerun the same command "
      "to resume.")


def restore(mngr: ocp.CheckpointManager, step: int, target, data_iter):
  """Restores the state at ``step`` into ``target``'s structure and shardings.

  The data iterator is restored in place. A checkpoint written by a different
  number of processes raises ValueError; one that cannot be read raises
  ``CheckpointError`` naming its directory (it is never deleted).
  """
  path = fileio.join(mngr.directory, str(step))
  data_lib.check_iterator_processes(fileio.join(path, "data"))
  variables_lib.verify_or_warn(path)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
  except Exception as e:  # Orbax raises many types for a damaged directory.
    raise CheckpointError(
        f"Could not restore the checkpoint at {path}: {type(e).__name__}: {e}."
    ) from e
  if not is_finite(restored["state"]):
    raise CheckpointError(f"The checkpoint at {path} holds NaN or inf values.")
  return restored["state"]


def restore_newest_intact(mngr: ocp.CheckpointManager, target, data_iter):
  """``(step, state)`` of the newest checkpoint that passes :func:`restore`'s
  checks, or ``(None, None)`` when there is none.

  Each refused checkpoint is reported with a warning and moved to
  ``<workdir>/damaged/<step>`` (kept, never deleted, and out of the way of
  rotation and of the step being saved again). When every checkpoint is
  refused, raises :class:`CheckpointError` listing them.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  errors = []
  for step in steps:
    try:
      return step, restore(mngr, step, target, data_iter)
    except CheckpointError as e:
      errors.append(str(e))
      moved = _move_aside(mngr, step)
      logging.warning("%s Moved it to %s; trying the previous checkpoint.",
                      e, moved)
  if errors:
    raise CheckpointError(
        "No checkpoint in the workdir could be restored (each was moved to "
        f"{DAMAGED_DIR}/):\n  " + "\n  ".join(errors))
  return None, None


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  src = epath.Path(mngr.directory) / str(step)
  root = epath.Path(mngr.directory).parent / DAMAGED_DIR
  dst, i = root / str(step), 0
  while dst.exists():
    i += 1
    dst = root / f"{step}.{i}"
  if jax.process_index() == 0:
    fileio.move_tree(src, dst)  # Copies, then deletes, on object stores.
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"nifzoo_move_aside_{step}")
  mngr.reload()
  return str(dst)
