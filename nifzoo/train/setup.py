"""Before the first train step: the config and resume checks, the train state
(fresh, from another workdir's variables, or restored from the workdir).
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from flax import traverse_util

from nifzoo import data as data_lib
from nifzoo import mesh as mesh_lib
from nifzoo import models
from nifzoo import variables
from nifzoo.train import checkpoint as ckpt_lib
from nifzoo.train import lease as lease_lib
from nifzoo.train import step as step_lib


class ConfigError(ValueError):
  """A config that cannot train (or cannot resume the workdir's run)."""


# Fields a resumed run may change: how long and how often, the optimiser's
# hyperparameters (to recover from a divergence), where the data lives, how the
# step's loops are compiled and where the metrics go (same parameters and
# numbers). Any other change (model, data, batch, seed) is refused: the
# checkpoints hold a different run.
RESUMABLE_FIELDS = (
    "total_steps", "learning_rate", "warmup_steps", "grad_clip",
    "checkpoint_every", "keep_checkpoints", "log_every", "sample_every",
    "num_sample_images", "eval_batches", "eval_num_draws", "on_nonfinite",
    "max_consecutive_skips", "init_from", "data.data_dir", "model.unroll",
    "lease_stale_secs", "tensorboard")

_RESUME_HINT = ("Use a new --workdir for this config, or resume with the config "
                "(and nifzoo version) that wrote the checkpoints; moving the "
                "newest checkpoint aside does not help, every checkpoint of the "
                "run has the same shapes.")


def check_config(config, workdir) -> None:
  """Validates the training fields of ``config`` and ``workdir`` before any
  work; raises :class:`ConfigError` naming the field."""
  if not isinstance(workdir, (str, os.PathLike)) or not str(workdir).strip():
    raise ConfigError(f"workdir must be a non-empty path, got {workdir!r}.")
  for name, low in (("total_steps", 0), ("batch_size", 1), ("warmup_steps", 0),
                    ("checkpoint_every", 1), ("keep_checkpoints", 1),
                    ("log_every", 1), ("sample_every", 1),
                    ("num_sample_images", 1), ("eval_batches", 1),
                    ("eval_num_draws", 1), ("max_consecutive_skips", 1)):
    v = config.get(name, low)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
      raise ConfigError(f"config.{name} must be an integer >= {low}, got {v!r}.")
  for name, positive in (("learning_rate", False), ("grad_clip", True)):
    v = config[name]
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or
        not math.isfinite(v) or v < 0 or (positive and v == 0)):
      raise ConfigError(f"config.{name} must be a finite number "
                        f"{'> 0' if positive else '>= 0'}, got {v!r}.")
  if config.on_nonfinite not in ("skip", "stop"):
    raise ConfigError(
        f"config.on_nonfinite must be 'skip' or 'stop', got {config.on_nonfinite!r}.")
  if not isinstance(config.get("tensorboard", True), bool):
    raise ConfigError(
        f"config.tensorboard must be True or False, got {config.tensorboard!r}.")
  v = config.get("lease_stale_secs", lease_lib.DEFAULT_STALE_SECS)
  if (isinstance(v, bool) or not isinstance(v, (int, float)) or
      not math.isfinite(v) or v <= 0):
    raise ConfigError(f"config.lease_stale_secs must be a finite number > 0, "
                      f"got {v!r}.")


def check_resume_config(workdir, config) -> None:
  """Refuses to resume ``workdir`` with a config whose fields outside
  :data:`RESUMABLE_FIELDS` differ from its recorded ``config.json``, or whose
  ``models.wiring`` (which includes the code's ``WIRING_REVISION``) differs
  from the recorded ``wiring.json``."""
  path = epath.Path(workdir) / variables.CONFIG_FILE
  if path.exists():
    saved = traverse_util.flatten_dict(json.loads(path.read_text()), sep=".")
    now = traverse_util.flatten_dict(
        json.loads(config.to_json_best_effort()), sep=".")
    # Fields the workdir's config lacks were added to the code after it was written.
    diff = [f"{k}: workdir {saved[k]!r}, now {now.get(k)!r}" for k in sorted(saved)
            if k not in RESUMABLE_FIELDS and saved[k] != now.get(k)]
    if diff:
      raise ConfigError(
          f"{workdir} holds checkpoints of a run with a different config "
          f"({path}): {'; '.join(diff)}. Resuming would load them into another "
          "model or data. Use a new --workdir for this config, or pass the "
          "recorded values; on resume only these may change: "
          f"{', '.join(RESUMABLE_FIELDS)}.")
  path = epath.Path(workdir) / variables.WIRING_FILE
  if path.exists():
    diff = models.wiring_differences(json.loads(path.read_text()), config)
    if diff:
      raise ConfigError(
          f"{workdir} holds checkpoints of a model wired differently from what "
          f"this code builds for the config ({path}): {'; '.join(diff)}. "
          "(`revision` is the code's models.WIRING_REVISION: the layers changed "
          "since the run started.) Resuming would load them into another "
          f"function. {_RESUME_HINT}")


def write_run_files(workdir, config) -> None:
  """``config.json`` and ``wiring.json``: what ``nifzoo.zoo.load(workdir)``
  rebuilds the model from, and what a resume is checked against."""
  (epath.Path(workdir) / variables.CONFIG_FILE).write_text(
      config.to_json_best_effort(indent=2))
  (epath.Path(workdir) / variables.WIRING_FILE).write_text(
      json.dumps(models.wiring(config), indent=1))


def check_checkpoint_fits(workdir, state) -> None:
  """Raises :class:`ConfigError` naming the variables when the newest
  checkpoint's shapes do not fit ``state`` (instead of refusing every
  checkpoint in turn as damaged). An unreadable one is left to the restore."""
  step = variables.latest_step(workdir)
  path = epath.Path(workdir) / variables.CHECKPOINTS_DIR / str(step) / "state"
  try:
    variables.check_shapes(str(path), {"params": state.params, "rest": state.rest},
                          hint=_RESUME_HINT)
  except variables.ShapeMismatchError as e:
    raise ConfigError(str(e)) from e
  except variables.CheckpointError:
    pass


def create_state(config, mesh):
  """Builds the model (same on every process) -> (graphdef, tx, replicated TrainState).

  The model is built from the seed (identical on every process) and each
  array becomes a global array replicated over the mesh. Initialisers draw
  from an "rbg" key; each scanned stack is initialised by one jitted program
  (``flows.stack``). ``step.new_train_state(config, abstract=True)`` is the
  same state without allocating (``nifzoo.tpu`` compiles for TPUs on it).
  """
  graphdef, tx, state = step_lib.new_train_state(config)
  repl = mesh_lib.replicated(mesh)
  state = jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(repl, np.asarray(x)),
      state)
  return graphdef, tx, state


def initialize_actnorms(graphdef, state, images, mesh):
  """Data-dependent init of every ActNorm from one global batch (under jit)."""

  @functools.partial(jax.jit, out_shardings=mesh_lib.replicated(mesh))
  def init_fn(params, rest, images, rng):
    model = nnx.merge(graphdef, params, rest)
    # Dequantisation noise as in training (a key no train step uses).
    model.initialize(images, key=jax.random.split(jax.random.wrap_key_data(rng))[1])
    _, params, rest = step_lib.split_model(model)
    return params, rest

  params, rest = init_fn(state.params, state.rest, images, state.rng)
  return state._replace(params=params, rest=rest)


def init_from(state, config, mesh):
  """``state`` with params and variables of the workdir ``config.init_from``.

  That workdir's model must be wired as ``config``'s (same fields of
  ``models.wiring``); its optimiser state, if any, is not used.
  """
  src = config.init_from
  try:
    src_config = variables.workdir_config(src)
  except variables.CheckpointError as e:
    raise ValueError(f"init_from={src!r}: {e}") from e
  diff = models.wiring_differences(models.wiring(src_config), config)
  if diff:
    raise ValueError(f"init_from={src!r} holds a differently wired model: "
                     f"{'; '.join(diff)}.")
  ckpt_path, partial, _ = variables.source(src)
  restored = variables.restore(
      ckpt_path, {"params": state.params, "rest": state.rest},
      mesh_lib.replicated(mesh), partial=partial)
  return state._replace(params=restored["params"], rest=restored["rest"])


def restore_or_initialize(config, workdir, mngr, graphdef, state, train_iter,
                          mesh):
  """-> ``(start step, state)``: the newest intact checkpoint of ``workdir``
  (``train_iter`` restored to its position), else step 0 with the variables of
  ``config.init_from``, else with every ActNorm initialised from one batch."""
  if variables.latest_step(workdir) is not None:
    check_checkpoint_fits(workdir, state)
  start, restored = ckpt_lib.restore_newest_intact(
      mngr, variables.abstract_like(state, mesh_lib.replicated(mesh)), train_iter)
  if start is not None:
    logging.info("Resumed from %s at step %d.", mngr.directory, start)
    return start, restored
  if config.get("init_from"):
    state = init_from(state, config, mesh)
    logging.info("Started from the variables of %s.", config.init_from)
    return 0, state
  init_iter = iter(data_lib.make_dataset(
      config.data, "train", global_batch_size=config.batch_size,
      seed=config.seed + 1, shuffle=True, repeat=True))
  state = initialize_actnorms(
      graphdef, state, mesh_lib.global_batch(mesh, next(init_iter)["image"]), mesh)
  if not ckpt_lib.is_finite(state):
    raise FloatingPointError(
        "The data-dependent ActNorm initialisation gave NaN or inf "
        "parameters (a constant or corrupted first batch?).")
  logging.info("Initialised every ActNorm from one batch of %d images.",
               config.batch_size)
  return 0, state
