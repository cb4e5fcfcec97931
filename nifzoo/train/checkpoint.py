"""Orbax checkpoints of a training run: state + data-iterator position.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``. ``state`` is the
``TrainState`` pytree (params, ActNorm flags and other variables, optimiser
state, step, raw RNG key data); ``data`` is the grain iterator state of each
process (grain's Orbax handler: ``process_{i}-of-{n}.json``). Restores always go against an abstract target that carries the
shardings we want (never the saved ones), so a checkpoint written on a pod
restores on one CPU and vice versa.

Integrity: once a save has finalized, ``<step>/checksums.json`` records the
sha256 of every file of its items; :func:`restore` verifies it and refuses a
state that is not finite. :func:`restore_newest_intact` falls back past a
damaged checkpoint, moving it (never deleting it) into ``<workdir>/damaged/``.
A state that is not finite is never saved.
"""

from __future__ import annotations

import errno
import hashlib
import json

import grain
import jax
import numpy as np
from flax import nnx
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from nifzoo import data as data_lib
from nifzoo import fileio
from nifzoo.train import step as step_lib


CONFIG_FILE = "config.json"  # The run's config, beside checkpoints/ (for zoo.load).
# models.wiring(config) of the run, with the code's WIRING_REVISION (checked on
# resume and by zoo.load).
WIRING_FILE = "wiring.json"
VARIABLES_DIR = "variables"  # A variables-only checkpoint in a workdir (converted models).
CHECKSUMS_FILE = "checksums.json"  # sha256 of a step's item files, written after finalizing.
DAMAGED_DIR = "damaged"  # Where refused checkpoints are moved, beside checkpoints/.
_ITEMS = ("state", "data")


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be read (or fails its integrity checks)."""


class ShapeMismatchError(CheckpointError):
  """A readable checkpoint whose variables do not fit the model being built."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint save failed (a full disk, a lost bucket): the run must stop."""


def manager(workdir: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  directory = fileio.as_path(workdir) / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("state", "data"))


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
        (step_dir / CHECKSUMS_FILE).write_text(json.dumps(
            {"sha256": _checksums(step_dir)}, indent=1, sort_keys=True))


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


def _checksums(step_dir: epath.Path) -> dict[str, str]:
  """{relative path: sha256} of every file of the step's items (directory
  placeholder objects are not files: :func:`fileio.list_files`)."""
  out = {}
  for item in _ITEMS:
    root = step_dir / item
    if not root.exists():
      continue
    for rel, p in fileio.list_files(root).items():
      out[f"{item}/{rel}"] = hashlib.sha256(p.read_bytes()).hexdigest()
  return out


def verify_checksums(step_dir) -> bool:
  """Checks ``step_dir`` against its ``checksums.json``: raises
  :class:`CheckpointError` naming the first damaged or missing file; False
  when there is no ``checksums.json`` (the run stopped before writing it)."""
  step_dir = epath.Path(step_dir)
  manifest = step_dir / CHECKSUMS_FILE
  if not manifest.exists():
    return False
  try:
    want = json.loads(manifest.read_text())["sha256"]
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{manifest} is unreadable ({e}).") from e
  got = _checksums(step_dir)
  for name, digest in sorted(want.items()):
    if got.get(name) != digest:
      what = "is missing" if name not in got else "does not match its checksum"
      raise CheckpointError(f"The checkpoint at {step_dir} is damaged: {name} "
                            f"{what} (recorded in {CHECKSUMS_FILE}).")
  return True


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
  path = fileio.join(mngr.directory, str(step))
  data_lib.check_iterator_processes(fileio.join(path, "data"))
  _verify_or_warn(path)
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
  return str(fileio.as_path(path))


def check_shapes(path: str, target, *, hint: str = "") -> None:
  """Checks every variable of ``target`` against the checkpoint's saved shapes
  (from Orbax's metadata, before any restore).

  Raises :class:`ShapeMismatchError` naming each variable that the checkpoint
  lacks or has with another shape (up to 5), followed by ``hint`` (what the
  caller can do about it); :class:`CheckpointError` if the metadata is
  unreadable.
  """
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
  diff = [f"{k!r}: missing there, the model needs {shape}" if k not in saved else
          f"{k!r}: {saved[k]} there, the model needs {shape}"
          for k, shape in want.items() if saved.get(k) != shape]
  if diff:
    more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
    raise ShapeMismatchError(
        f"The checkpoint at {path} does not fit the config's model: "
        f"{len(diff)} variable(s) differ: {'; '.join(diff[:5])}{more}."
        f"{' ' + hint if hint else ''}")


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
  numpy, no optimiser state) at ``path``; returns the number of parameters.

  With several processes every process calls it (Orbax's save is collective);
  process 0 writes the files."""
  if isinstance(model_or_state, nnx.Module):
    _, params, rest = nnx.split(model_or_state, nnx.Param, ...)
    state = {"params": params, "rest": rest}
  else:
    state = model_or_state
  state = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state)
  path = _abspath(path)
  if jax.process_index() == 0:
    fileio.rmtree(path)  # Re-exporting a name replaces its checkpoint.
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("nifzoo_save_variables")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, state)
  ckptr.wait_until_finished()
  num_params = int(sum(np.size(x) for x in jax.tree.leaves(state["params"])))
  return num_params


def latest_step(workdir: str) -> int | None:
  root = fileio.as_path(workdir) / "checkpoints"
  steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if (
      root.exists()) else []
  return max(steps) if steps else None


def variables_source(workdir: str, step: int | None = None
                     ) -> tuple[str, bool, int]:
  """Where a workdir's model variables are: ``(path, partial, step)``.

  A training workdir: ``checkpoints/<step>/state`` (newest by default), read
  partially (no optimiser state). Its checksums are verified as a training
  restore does (:func:`verify_checksums`): an explicit ``step`` that is damaged
  raises :class:`CheckpointError` naming the file; by default a damaged newest
  checkpoint is skipped with a warning for the newest intact one (left in
  place: loading never moves files). A workdir without training checkpoints
  but with ``variables/`` (written by ``launch/convert.py``): that, at step 0.
  """
  newest = latest_step(workdir)
  variables = fileio.as_path(workdir) / VARIABLES_DIR
  if newest is None:
    if variables.exists() and step in (None, 0):
      return str(variables), False, 0
    raise CheckpointError(f"{workdir} holds no checkpoint (looked in "
                          f"{fileio.as_path(workdir) / 'checkpoints'} and {variables}).")
  root = fileio.as_path(workdir) / "checkpoints"
  if step is not None:
    step = int(step)
    path = root / str(step) / "state"
    if not path.exists():
      raise CheckpointError(f"{workdir} has no checkpoint at step {step} ({path}).")
    _verify_or_warn(root / str(step))
    return str(path), True, step
  errors = []
  for s in sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()),
                  reverse=True):
    try:
      _verify_or_warn(root / str(s))
    except CheckpointError as e:
      errors.append(str(e))
      logging.warning("%s Using an earlier checkpoint.", e)
      continue
    return str(root / str(s) / "state"), True, s
  raise CheckpointError(f"No checkpoint in {root} is intact:\n  " +
                        "\n  ".join(errors))


def _verify_or_warn(step_dir) -> None:
  if not verify_checksums(step_dir):
    logging.warning("The checkpoint at %s has no %s (the run stopped before "
                    "writing it): reading it unverified.", step_dir, CHECKSUMS_FILE)
