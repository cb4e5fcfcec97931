"""Variables-only checkpoints: a model's ``{"params", "rest"}``.

``params`` are its ``nnx.Param`` variables, ``rest`` every other variable
(ActNorm flags, the LU conv's fixed permutation): what the registry ships,
what a training state holds besides the optimiser, what ``config.init_from``
starts a run from. One Orbax checkpoint, read and written here for
``nifzoo.zoo`` and ``nifzoo.train`` alike.

Where a workdir keeps them (local or ``gs://``, :mod:`nifzoo.fileio`)::

  config.json                    the run's config (what the model is rebuilt from)
  wiring.json                    models.wiring(config) of the run
  checkpoints/<step>/state       a training state (read partially: no optimiser)
  checkpoints/<step>/data        the data iterator (nifzoo.train.checkpoint)
  checkpoints/<step>/checksums.json  sha256 of every file of the step's items
  variables/                     a variables-only checkpoint (launch/convert.py)

Every restore checks the saved shapes against the model first
(:func:`check_shapes`, from Orbax's metadata) and places the arrays with the
sharding asked for, never the saved one, so a checkpoint written on a pod
restores on one CPU and vice versa. Integrity: :func:`hash_directory` (a
registry entry's ``checkpoint.sha256``) and a training step's per-file
``checksums.json`` (:func:`write_checksums`, :func:`verify_checksums`), both
over the same walk of a directory's files.
"""

from __future__ import annotations

import hashlib
import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from nifzoo import configs
from nifzoo import fileio
from nifzoo import models

CONFIG_FILE = "config.json"
WIRING_FILE = "wiring.json"
CHECKPOINTS_DIR = "checkpoints"
VARIABLES_DIR = "variables"
CHECKSUMS_FILE = "checksums.json"
STEP_ITEMS = ("state", "data")  # The items of a training step, in its checksums.


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be read (or fails its integrity checks)."""


class ShapeMismatchError(CheckpointError):
  """A readable checkpoint whose variables do not fit the model being built."""


# ------------------------------------------------------------------ the format


def split(model: nnx.Module):
  """``model -> (graphdef, {"params", "rest"})``."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, {"params": params, "rest": rest}


def abstract(config):
  """``(graphdef, {"params", "rest"})`` of ``config``'s model as
  ShapeDtypeStructs (``nnx.eval_shape``: nothing is allocated)."""
  return split(nnx.eval_shape(lambda: models.build(config, rngs=nnx.Rngs(0))))


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of ``tree`` carrying ``sharding`` (a restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


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


def restore(path: str, target: dict, sharding=None, *,
            partial: bool = False) -> dict:
  """``{"params", "rest"}`` from the checkpoint at ``path``, shaped as ``target``.

  Checks the shapes first (:func:`check_shapes`), then restores every array
  with ``sharding`` (default: the sharding each leaf of ``target`` carries).
  ``partial``: read only these items of a larger tree (a training ``state``).
  Raises :class:`CheckpointError` (never returns a partial model).
  """
  check_shapes(path, target)
  if sharding is not None:
    target = abstract_like(target, sharding)
  path = _abspath(path)
  try:
    if partial:
      restore_args = ocp.checkpoint_utils.construct_restore_args(target)
      return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))
    return ocp.StandardCheckpointer().restore(path, target)
  except Exception as e:  # Orbax raises many types for a damaged directory.
    raise CheckpointError(f"Could not restore the checkpoint at {path}: "
                          f"{type(e).__name__}: {e}") from e


def restore_model(config, path: str, sharding, *, partial: bool = False):
  """``(graphdef, {"params", "rest"})`` of ``config``'s model, its variables
  restored from ``path`` (:func:`restore`) onto ``sharding``."""
  graphdef, target = abstract(config)
  return graphdef, restore(path, target, sharding, partial=partial)


def save(model_or_variables, path: str) -> int:
  """Writes a variables-only checkpoint ``{"params", "rest"}`` (unsharded
  numpy, no optimiser state) at ``path``, replacing one already there; returns
  the number of parameters.

  With several processes every process calls it (Orbax's save is collective);
  process 0 writes the files."""
  if isinstance(model_or_variables, nnx.Module):
    model_or_variables = split(model_or_variables)[1]
  state = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), model_or_variables)
  path = _abspath(path)
  if jax.process_index() == 0:
    fileio.rmtree(path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("nifzoo_save_variables")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, state)
  ckptr.wait_until_finished()
  return int(sum(np.size(x) for x in jax.tree.leaves(state["params"])))


# ------------------------------------------------------------------ workdirs


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's ``config.json`` records (finalized)."""
  path = fileio.as_path(workdir) / CONFIG_FILE
  if not path.exists():
    raise CheckpointError(
        f"{workdir} has no {CONFIG_FILE}: not a nifzoo training workdir or "
        f"launch/convert.py output.")
  return configs.finalize(ml_collections.ConfigDict(json.loads(path.read_text())))


def _steps(workdir: str) -> list[int]:
  root = fileio.as_path(workdir) / CHECKPOINTS_DIR
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if (
      root.exists()) else []


def latest_step(workdir: str) -> int | None:
  steps = _steps(workdir)
  return steps[-1] if steps else None


def source(workdir: str, step: int | None = None) -> tuple[str, bool, int]:
  """Where a workdir's model variables are: ``(path, partial, step)``.

  A training workdir: ``checkpoints/<step>/state`` (newest by default), read
  partially (no optimiser state). Its checksums are verified as a training
  restore does (:func:`verify_checksums`): an explicit ``step`` that is damaged
  raises :class:`CheckpointError` naming the file; by default a damaged newest
  checkpoint is skipped with a warning for the newest intact one (left in
  place: loading never moves files). A workdir without training checkpoints
  but with ``variables/`` (written by ``launch/convert.py``): that, at step 0.
  """
  steps = _steps(workdir)
  root = fileio.as_path(workdir) / CHECKPOINTS_DIR
  variables = fileio.as_path(workdir) / VARIABLES_DIR
  if not steps:
    if variables.exists() and step in (None, 0):
      return str(variables), False, 0
    raise CheckpointError(f"{workdir} holds no checkpoint (looked in "
                          f"{root} and {variables}).")
  if step is not None:
    step = int(step)
    path = root / str(step) / "state"
    if not path.exists():
      raise CheckpointError(f"{workdir} has no checkpoint at step {step} ({path}).")
    verify_or_warn(root / str(step))
    return str(path), True, step
  errors = []
  for s in reversed(steps):
    try:
      verify_or_warn(root / str(s))
    except CheckpointError as e:
      errors.append(str(e))
      logging.warning("%s Using an earlier checkpoint.", e)
      continue
    return str(root / str(s) / "state"), True, s
  raise CheckpointError(f"No checkpoint in {root} is intact:\n  " +
                        "\n  ".join(errors))


def export(workdir: str, path: str, *, step: int | None = None) -> dict:
  """A workdir's model variables (a training checkpoint, or ``variables/``
  from ``launch/convert.py``) -> a variables-only checkpoint at ``path``.

  Returns ``{"sha256", "num_params", "step"}`` (the hash:
  :func:`hash_directory`). With several processes every process calls it
  (:func:`save`).
  """
  config = workdir_config(workdir)
  src, partial, step = source(workdir, step)
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  _, variables = restore_model(config, src, cpu, partial=partial)
  num_params = save(variables, path)
  return {"sha256": hash_directory(path), "num_params": num_params, "step": step}


# ------------------------------------------------------------------ integrity


def _read_files(root):
  """``(relative path, contents)`` of every file under ``root``, sorted by
  path (directory placeholder objects are not files: :func:`fileio.list_files`)."""
  for rel, p in fileio.list_files(root).items():
    yield rel, p.read_bytes()


def hash_directory(path: str) -> str:
  """One sha256 over a directory's files (each relative path and contents,
  length-prefixed): a registry entry's ``checkpoint.sha256``."""
  h, n = hashlib.sha256(), 0
  try:
    for rel, data in _read_files(path):
      rel, n = rel.encode(), n + 1
      h.update(len(rel).to_bytes(8, "little") + rel)
      h.update(len(data).to_bytes(8, "little") + data)
  except FileNotFoundError:
    raise FileNotFoundError(f"No checkpoint at {path}.") from None
  if not n:
    raise FileNotFoundError(f"The checkpoint directory {path} holds no files.")
  return "sha256:" + h.hexdigest()


def _checksums(step_dir) -> dict[str, str]:
  """``{item/relative path: sha256}`` of every file of a training step's items."""
  step_dir = epath.Path(step_dir)
  return {f"{item}/{rel}": hashlib.sha256(data).hexdigest()
          for item in STEP_ITEMS if (step_dir / item).exists()
          for rel, data in _read_files(step_dir / item)}


def write_checksums(step_dir) -> None:
  """Records the sha256 of every file of a finalized training step in its
  ``checksums.json``."""
  (epath.Path(step_dir) / CHECKSUMS_FILE).write_text(json.dumps(
      {"sha256": _checksums(step_dir)}, indent=1, sort_keys=True))


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


def verify_or_warn(step_dir) -> None:
  """:func:`verify_checksums`, with a warning when there are none to verify."""
  if not verify_checksums(step_dir):
    logging.warning("The checkpoint at %s has no %s (the run stopped before "
                    "writing it): reading it unverified.", step_dir, CHECKSUMS_FILE)
