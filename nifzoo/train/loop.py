"""The training loop: data -> jit step on a data-parallel mesh -> metrics,
samples and checkpoints, resuming exactly from the workdir.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging as py_logging
import math
import os
import signal
import threading
import time

import jax
import numpy as np
from absl import logging
from etils import epath
import ml_collections
from flax import nnx
from flax import traverse_util

from nifzoo import data as data_lib
from nifzoo import evaluate as evaluate_lib
from nifzoo import images as images_lib
from nifzoo import models
from nifzoo.train import checkpoint as ckpt_lib
from nifzoo.train import lease as lease_lib
from nifzoo import mesh as mesh_lib
from nifzoo.train import step as step_lib
from nifzoo.train import writers as writers_lib


class NonFiniteLossError(FloatingPointError):
  """Raised when a step's loss or gradient is not finite and the config says stop."""


class DivergedError(NonFiniteLossError):
  """Raised after ``config.max_consecutive_skips`` non-finite steps in a row."""


class Preempted(Exception):
  """SIGTERM (a preemption notice) stopped the run after saving its state."""


class ConfigError(ValueError):
  """A config that cannot train (or cannot resume the workdir's run)."""


# Errors the launcher reports as one message (no traceback) and a non-zero exit.
STOP_ERRORS = (NonFiniteLossError, Preempted, ConfigError,
               ckpt_lib.CheckpointError, ckpt_lib.CheckpointSaveError,
               lease_lib.LeaseError)

# Fields a resumed run may change: how long and how often, the optimiser's
# hyperparameters (to recover from a divergence), where the data lives, how the
# step's loops are compiled (same parameters and numbers). Any
# other change (model, data, batch, seed) is refused: the checkpoints hold a
# different run.
RESUMABLE_FIELDS = (
    "total_steps", "learning_rate", "warmup_steps", "grad_clip",
    "checkpoint_every", "keep_checkpoints", "log_every", "sample_every",
    "num_sample_images", "eval_batches", "eval_num_draws", "on_nonfinite",
    "max_consecutive_skips", "init_from", "data.data_dir", "model.unroll",
    "lease_stale_secs")


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
  v = config.get("lease_stale_secs", lease_lib.DEFAULT_STALE_SECS)
  if (isinstance(v, bool) or not isinstance(v, (int, float)) or
      not math.isfinite(v) or v <= 0):
    raise ConfigError(f"config.lease_stale_secs must be a finite number > 0, "
                      f"got {v!r}.")


def _flat_json(config) -> dict:
  return traverse_util.flatten_dict(json.loads(config.to_json_best_effort()),
                                    sep=".")



_RESUME_HINT = ("Use a new --workdir for this config, or resume with the config "
                "(and nifzoo version) that wrote the checkpoints; moving the "
                "newest checkpoint aside does not help, every checkpoint of the "
                "run has the same shapes.")


def check_resume_config(workdir, config) -> None:
  """Refuses to resume ``workdir`` with a config whose fields outside
  :data:`RESUMABLE_FIELDS` differ from its recorded ``config.json``, or whose
  ``models.wiring`` (which includes the code's ``WIRING_REVISION``) differs
  from the recorded ``wiring.json``."""
  path = epath.Path(workdir) / ckpt_lib.CONFIG_FILE
  if path.exists():
    saved = traverse_util.flatten_dict(json.loads(path.read_text()), sep=".")
    now = _flat_json(config)
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
  path = epath.Path(workdir) / ckpt_lib.WIRING_FILE
  if path.exists():
    diff = models.wiring_differences(json.loads(path.read_text()), config)
    if diff:
      raise ConfigError(
          f"{workdir} holds checkpoints of a model wired differently from what "
          f"this code builds for the config ({path}): {'; '.join(diff)}. "
          "(`revision` is the code's models.WIRING_REVISION: the layers changed "
          "since the run started.) Resuming would load them into another "
          f"function. {_RESUME_HINT}")


def check_checkpoint_fits(workdir, state) -> None:
  """Raises :class:`ConfigError` naming the variables when the newest
  checkpoint's shapes do not fit ``state`` (instead of refusing every
  checkpoint in turn as damaged). An unreadable one is left to the restore."""
  step = ckpt_lib.latest_step(workdir)
  path = epath.Path(workdir) / "checkpoints" / str(step) / "state"
  try:
    ckpt_lib.check_shapes(str(path), {"params": state.params, "rest": state.rest},
                          hint=_RESUME_HINT)
  except ckpt_lib.ShapeMismatchError as e:
    raise ConfigError(str(e)) from e
  except ckpt_lib.CheckpointError:
    pass


def create_state(config, mesh):
  """Builds the model (same on every process) -> (graphdef, tx, replicated TrainState).

  The model is built from the seed (identical on every process) and
  each array becomes a global array replicated over the mesh. Initialisers
  draw from an "rbg" key: on CPU, XLA compiles each threefry draw for about a
  second. Each scanned stack is initialised by one jitted program
  (``flows.stack``); the whole model in one jit program was tried: XLA:CPU in
  jax 0.10.2 hung executing it for the CIFAR-10 paper config.
  ``step.new_train_state(config, abstract=True)`` is the same state without
  allocating (``nifzoo.tpu`` compiles for TPUs on it).
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
  path = epath.Path(src) / ckpt_lib.CONFIG_FILE
  if not path.exists():
    raise ValueError(f"init_from={src!r}: no {ckpt_lib.CONFIG_FILE} there (not a "
                     "nifzoo workdir or launch/convert.py output).")
  src_config = ml_collections.ConfigDict(json.loads(path.read_text()))
  diff = models.wiring_differences(models.wiring(src_config), config)
  if diff:
    raise ValueError(f"init_from={src!r} holds a differently wired model: "
                     f"{'; '.join(diff)}.")
  ckpt_path, partial, _ = ckpt_lib.variables_source(src)
  target = {"params": state.params, "rest": state.rest}
  ckpt_lib.check_shapes(ckpt_path, target)
  restored = ckpt_lib.restore_variables(
      ckpt_path, ckpt_lib.abstract_like(target, mesh_lib.replicated(mesh)),
      partial=partial)
  return state._replace(params=restored["params"], rest=restored["rest"])


def make_sample_fn(graphdef):
  """(params, rest, key, n, noise_scale) -> (n, H, W, C) floats: ``sample``
  compiles itself (``nifzoo.compiled``; one program per n, s an input)."""

  def sample_fn(params, rest, key, n, noise_scale):
    model = nnx.merge(graphdef, params, rest)
    return model.to_float_images(model.sample(key, n, noise_scale=noise_scale))

  return sample_fn


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints).

  Returns the final metrics (train bits/dim averaged since the last log, test
  bits/dim, number of skipped non-finite steps). The run holds the workdir's
  lease (``train/lease.py``) from before it writes anything until it ends: a
  workdir held by another live trainer raises ``lease.LeaseHeldError``, and a
  lease taken over by another trainer stops the run before its next save
  (``lease.LeaseLostError``).
  """
  check_config(config, workdir)
  writers_lib.start_import()
  config = data_lib.finalize(config)
  if ckpt_lib.latest_step(workdir) is not None:
    check_resume_config(workdir, config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  with lease_lib.hold(workdir, stale_secs=config.get(
      "lease_stale_secs", lease_lib.DEFAULT_STALE_SECS)) as lease:
    return _train(config, workdir, lease)


def _train(config, workdir: str, lease: lease_lib.Lease) -> dict:
  """:func:`train_and_evaluate` once the config is checked and the workdir's
  ``lease`` is held; ``lease.check`` before every save."""
  is_chief = jax.process_index() == 0
  if is_chief:  # What nifzoo.zoo.load(workdir) rebuilds the model from.
    (epath.Path(workdir) / ckpt_lib.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
    (epath.Path(workdir) / ckpt_lib.WIRING_FILE).write_text(
        json.dumps(models.wiring(config), indent=1))
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(config.batch_size)
  train_iter = iter(data_lib.make_dataset(
      config.data, "train", global_batch_size=config.batch_size,
      seed=config.seed, shuffle=True, repeat=True))
  graphdef, tx, state = create_state(config, mesh)

  if ckpt_lib.latest_step(workdir) is not None:
    check_checkpoint_fits(workdir, state)
  mngr = ckpt_lib.manager(workdir, max_to_keep=config.keep_checkpoints)
  start, restored = ckpt_lib.restore_newest_intact(
      mngr, ckpt_lib.abstract_like(state, mesh_lib.replicated(mesh)), train_iter)
  if start is not None:
    state = restored
    local_batch = config.batch_size // jax.process_count()
    try:
      if data_lib.upgrade_iterator_position(train_iter, start, local_batch):
        logging.info("The data position of step %d was saved per example (older "
                     "nifzoo); converted to batches.", start)
    except ValueError as e:
      raise ConfigError(f"Cannot resume {workdir}: {e}") from e
    logging.info("Resumed from %s at step %d.", mngr.directory, start)
  else:
    start = 0
    if config.get("init_from"):
      state = init_from(state, config, mesh)
      logging.info("Started from the variables of %s.", config.init_from)
    else:
      init_iter = iter(data_lib.make_dataset(
          config.data, "train", global_batch_size=config.batch_size,
          seed=config.seed + 1, shuffle=True, repeat=True))
      init_batch = mesh_lib.global_batch(mesh, next(init_iter)["image"])
      state = initialize_actnorms(graphdef, state, init_batch, mesh)
      if not ckpt_lib.is_finite(state):
        raise FloatingPointError(
            "The data-dependent ActNorm initialisation gave NaN or inf "
            "parameters (a constant or corrupted first batch?).")
      logging.info("Initialised every ActNorm from one batch of %d images.",
                   config.batch_size)

  # Created here, after the model is built, so that importing tensorflow (clu's
  # TensorBoard writer) overlaps that work (writers.start_import).
  writer = writers_lib.create_writer(workdir, just_logging=not is_chief)
  hparams = traverse_util.flatten_dict(config.to_dict(), sep=".")
  writer.write_hparams({k: v for k, v in hparams.items()
                        if isinstance(v, (int, float, str, bool))})

  repl = mesh_lib.replicated(mesh)
  train_step = jax.jit(step_lib.make_train_step(graphdef, tx, config),
                       donate_argnums=(0,), out_shardings=(repl, repl))
  sample_fn = make_sample_fn(graphdef)
  final_eval = {}
  progress = Progress(config.total_steps)
  sample_key = jax.random.key(config.seed + 2)

  def write_samples(step):
    if config.model.prior == "normal":
      settings = {"samples": 1.0}
    else:
      settings = {"samples_s0": 0.0, "samples_s1": 1.0}
    grids = {}
    for name, s in settings.items():
      imgs = np.asarray(sample_fn(state.params, state.rest, sample_key,
                                  config.num_sample_images, s))
      grids[name] = images_lib.grid(imgs, scale=4 if imgs.shape[1] < 32 else 1)
      if is_chief:
        images_lib.save_png(
            os.path.join(workdir, "samples", f"{name}_{step:07d}.png"),
            grids[name])
    writer.write_images(step, {k: v[None] for k, v in grids.items()})

  def evaluate(step):
    """Test bits/dim: the first eval_batches batches of the test split at
    intermediate checkpoints, every test image (once) at the end; ``step``
    None: the intermediate evaluation, not logged."""
    final = step == config.total_steps
    try:
      result = evaluate_lib.bits_per_dim(
          nnx.merge(graphdef, state.params, state.rest), config.data, "test",
          batch_size=config.batch_size, key=jax.random.key(config.seed + 3),
          num_draws=config.eval_num_draws, mesh=mesh,
          max_images=None if final else config.eval_batches * config.batch_size)
    except FloatingPointError as e:  # Finite parameters that give NaN.
      logging.warning("Evaluating the state of step %s: %s", step, e)
      result = {"bits_per_dim": float("nan")}
    if step is not None:
      writer.write_scalars(step, {"test_bits_per_dim": result["bits_per_dim"]})
    if final:
      final_eval.update(result)
    return result["bits_per_dim"]

  def save(step, test_bpd):
    """Saves ``state`` unless its test bits/dim is not finite (a state that
    evaluates to NaN would poison every resume and rotate good ones out)."""
    if not math.isfinite(test_bpd):
      logging.warning(
          "Not saving step %d: its test bits/dim is %s. The newest good "
          "checkpoint stays step %s.", step, test_bpd, mngr.latest_step())
      return False
    lease.check(step)  # Another trainer took the workdir over: do not write.
    ckpt_lib.save(mngr, step, state, train_iter)
    return True

  max_skips = config.get("max_consecutive_skips", 10)
  sums, count, skipped, in_a_row, last = {}, 0, 0, 0, {}
  iter_state = None
  step = start

  def record(n, metrics):
    """Reads step n's metrics (waiting for the step): counts a non-finite step
    as skipped, or stops the run as the config says; else adds to the log sums."""
    nonlocal count, skipped, in_a_row
    metrics = jax.device_get(metrics)
    progress.step_done(n)
    if not metrics["finite"]:
      skipped += 1
      in_a_row += 1
      msg = (f"Non-finite loss, gradient or update at step {n} (bits/dim="
             f"{metrics['bits_per_dim']}, grad_norm={metrics['grad_norm']}).")
      if config.on_nonfinite == "stop":
        raise NonFiniteLossError(msg + " Stopping (config.on_nonfinite='stop').")
      if in_a_row >= max_skips:
        raise DivergedError(
            f"{msg} That is {in_a_row} non-finite steps in a row "
            f"(config.max_consecutive_skips={max_skips}): training has "
            f"diverged. The newest good checkpoint is step "
            f"{mngr.latest_step()} in {mngr.directory}. Try a lower "
            f"learning rate (now {config.learning_rate}; resuming with "
            "--config.learning_rate=... continues from that checkpoint), "
            "a longer warmup or a smaller grad_clip.")
      logging.warning("%s Step skipped: parameters unchanged.", msg)
    else:
      in_a_row = 0
      for k in ("bits_per_dim", "grad_norm", "learning_rate"):
        sums[k] = sums.get(k, 0.0) + float(metrics[k])
      count += 1

  # (step, metrics) of the newest step while its metrics are unread. They are
  # read after the next step is dispatched, so the host fetches the next batch
  # and dispatches while the device still runs this step (reading them first
  # left one idle while the other worked: bench/README.md, "The main job").
  # Deferred only when that step cannot stop the run (skip mode, short of
  # max_consecutive_skips) and it is not a step that logs, samples or saves:
  # a run stops, logs and saves exactly where it did with every step read.
  pending = None
  saved_step = start if start else None
  stop_error = None
  logging.info("Training %s for %d steps (batch %d on %d devices, %d processes).",
               config.name, config.total_steps, config.batch_size,
               jax.device_count(), jax.process_count())
  with _sigterm_flag() as sigterm:
    try:
      while step < config.total_steps:
        # A preemption notice: this process's SIGTERM, or (several hosts) the
        # sync point JAX agrees on, so that every host saves the same step
        # (False without JAX's preemption service, e.g. on one process).
        if sigterm.is_set() or mngr.reached_preemption(step):
          if pending:
            record(*pending)
            pending = None
          raise Preempted(f"Stopped by SIGTERM (preemption) at step {step}.")
        ckpt_lib.check_save(mngr)
        # The iterator position that matches `state`, for an exit checkpoint
        # taken between fetching a batch and finishing its step.
        iter_state = train_iter.get_state()
        batch = next(train_iter)
        images = mesh_lib.global_batch(mesh, batch["image"])
        state, metrics = train_step(state, images)
        step += 1
        iter_state = None
        last_step = step == config.total_steps
        logs = last_step or step % config.log_every == 0
        samples = last_step or step % config.sample_every == 0
        saves = last_step or step % config.checkpoint_every == 0
        if pending:
          record(*pending)
        pending = (step, metrics)
        if (logs or samples or saves or config.on_nonfinite == "stop"
            or in_a_row + 1 >= max_skips):
          record(*pending)
          pending = None
        if logs:
          last = {f"train_{k}": v / max(count, 1) for k, v in sums.items()}
          last["skipped_steps"] = skipped
          writer.write_scalars(step, last)
          logging.info("%s  train bits/dim %.4f", progress.line(step),
                       last.get("train_bits_per_dim", float("nan")))
          sums, count = {}, 0
        with progress.paused():  # Sampling, evaluation, saving: not train steps.
          if samples:
            write_samples(step)
          if saves:
            last["test_bits_per_dim"] = evaluate(step)
            logging.info("step %d  test bits/dim %.4f", step,
                         last["test_bits_per_dim"])
            save(step, last["test_bits_per_dim"])
            saved_step = step
    except BaseException as e:
      stop_error = e
      raise
    finally:
      # Whatever stopped the loop (an error, Ctrl-C, SIGTERM), keep the work,
      # unless saving is what failed or another trainer holds the workdir.
      # The state only ever takes finite updates, but finite parameters can
      # still evaluate to NaN: it is saved only if it evaluates finite.
      if isinstance(stop_error, ckpt_lib.CheckpointSaveError):
        saved_step = step
      if (step != saved_step and step > 0 and
          not isinstance(stop_error, lease_lib.LeaseError)):
        try:
          if iter_state is not None:  # Stopped inside a step: rewind one batch.
            train_iter.set_state(iter_state)
          # Finite parameters can still evaluate to NaN (a huge update).
          bpd = evaluate(None)
          if save(step, bpd):
            logging.warning("Saved a checkpoint at step %d before exiting.", step)
        except Exception as e:  # Never mask the error that stopped the loop.
          logging.error("Could not save the exit checkpoint at step %d: %s",
                        step, e)
      try:
        ckpt_lib.finish(mngr)
      except ckpt_lib.CheckpointSaveError as e:
        if stop_error is None:
          raise
        if not isinstance(stop_error, ckpt_lib.CheckpointSaveError):
          logging.error("%s", e)
      writer.flush()
  last["skipped_steps"] = skipped
  if final_eval:
    last["test_eval"] = final_eval
  return last


@contextlib.contextmanager
def _sigterm_flag():
  """Within the block SIGTERM sets the yielded ``threading.Event`` instead of
  killing the process (like Ctrl-C, the loop then saves and stops).

  Only in the main thread of a single-process run: with several processes,
  JAX's preemption service owns SIGTERM (``mngr.reached_preemption``).
  """
  flag = threading.Event()
  if (jax.process_count() > 1 or
      threading.current_thread() is not threading.main_thread()):
    yield flag
    return

  def handler(signum, frame):
    del signum, frame
    logging.warning("SIGTERM: stopping after the current step (saving first).")
    flag.set()

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


class Progress:
  """Steps/s and ETA of the train steps alone: the first step of a run (which
  compiles) and the time spent in ``paused()`` blocks are left out."""

  def __init__(self, total_steps: int):
    self.total_steps = total_steps
    self._first = None          # (step, time) when the first step finished.
    self._paused_secs = 0.0

  def step_done(self, step: int) -> None:
    if self._first is None:
      self._first = (step, time.perf_counter())

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      if self._first is not None:
        self._paused_secs += time.perf_counter() - t

  def steps_per_sec(self, step: int) -> float:
    if self._first is None or step <= self._first[0]:
      return float("nan")
    secs = time.perf_counter() - self._first[1] - self._paused_secs
    return (step - self._first[0]) / max(secs, 1e-9)

  def line(self, step: int) -> str:
    """``step 100/2000  37.1 steps/s  ETA 0h00m51s``."""
    rate = self.steps_per_sec(step)
    eta = ("?" if math.isnan(rate) else
           _format_secs((self.total_steps - step) / max(rate, 1e-9)))
    return f"step {step}/{self.total_steps}  {rate:.1f} steps/s  ETA {eta}"


def _format_secs(secs: float) -> str:
  secs = int(secs)
  return f"{secs // 3600}h{secs % 3600 // 60:02d}m{secs % 60:02d}s"


# Libraries whose INFO records are dropped unless asked for (launch/train.py
# --library_logs): Orbax alone writes about 30 lines per run.
QUIET_LIBRARIES = ("orbax", "grain", "clu", "etils", "tensorflow_datasets", "jax")


class _LibraryInfoFilter(py_logging.Filter):

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    parts = record.pathname.split(os.sep)
    return not any(lib in parts for lib in QUIET_LIBRARIES)


def quiet_library_logs() -> None:
  """Shows only WARNING and above from :data:`QUIET_LIBRARIES` (absl handler)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())
