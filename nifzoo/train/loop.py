"""The training loop: data -> jit step on a data-parallel mesh -> metrics,
samples and checkpoints, resuming exactly from the workdir (``setup``).
"""

from __future__ import annotations

import contextlib
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
from flax import nnx
from flax import traverse_util

from nifzoo import data as data_lib
from nifzoo import evaluate as evaluate_lib
from nifzoo import images as images_lib
from nifzoo import mesh as mesh_lib
from nifzoo import models
from nifzoo import variables
from nifzoo.train import checkpoint as ckpt_lib
from nifzoo.train import lease as lease_lib
from nifzoo.train import setup as setup_lib
from nifzoo.train import step as step_lib
from nifzoo.train import writers as writers_lib


class NonFiniteLossError(FloatingPointError):
  """Raised when a step's loss or gradient is not finite and the config says stop."""


class DivergedError(NonFiniteLossError):
  """Raised after ``config.max_consecutive_skips`` non-finite steps in a row."""


class Preempted(Exception):
  """SIGTERM (a preemption notice) stopped the run after saving its state."""


# Errors the launcher reports as one message (no traceback) and a non-zero exit.
STOP_ERRORS = (NonFiniteLossError, Preempted, setup_lib.ConfigError,
               variables.CheckpointError, ckpt_lib.CheckpointSaveError,
               lease_lib.LeaseError)


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
  bits/dim, number of skipped non-finite steps of the run). The run holds the
  workdir's lease (``train/lease.py``) from before it writes anything until it
  ends: a workdir held by another live trainer raises ``lease.LeaseHeldError``,
  and a lease taken over by another trainer stops the run before its next save
  (``lease.LeaseLostError``).
  """
  setup_lib.check_config(config, workdir)
  config = data_lib.finalize(config)
  if variables.latest_step(workdir) is not None:
    setup_lib.check_resume_config(workdir, config)
  if _writes_tensorboard(config):
    writers_lib.start_import()
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  with lease_lib.hold(workdir, stale_secs=config.lease_stale_secs) as lease:
    return _train(config, workdir, lease)


def _writes_tensorboard(config) -> bool:
  return config.tensorboard and jax.process_index() == 0


class _StepMetrics:
  """The train steps' metrics, read from the device at the steps that need
  them: summed for the log, and checked for non-finite steps, which stop the
  run as the config says."""

  def __init__(self, config, mngr):
    self.config, self.mngr = config, mngr
    self.unread = []   # (step, metrics on the device), in order.
    self.sums, self.count = {}, 0
    self.skipped = None  # Skipped steps of the run, as of the last read step.

  def read(self) -> None:
    """Reads every unread step's metrics (one transfer), in step order."""
    steps, unread = [n for n, _ in self.unread], [m for _, m in self.unread]
    self.unread = []
    for n, m in zip(steps, jax.device_get(unread)):
      self.skipped = int(m["skipped_steps"])
      if m["finite"]:
        for k in ("bits_per_dim", "grad_norm", "learning_rate"):
          self.sums[k] = self.sums.get(k, 0.0) + float(m[k])
        self.count += 1
      else:
        self._skipped(n, m)

  def _skipped(self, n, m) -> None:
    config, in_a_row = self.config, int(m["skips_in_a_row"])
    max_skips = config.max_consecutive_skips
    msg = (f"Non-finite loss, gradient or update at step {n} (bits/dim="
           f"{m['bits_per_dim']}, grad_norm={m['grad_norm']}).")
    if config.on_nonfinite == "stop":
      raise NonFiniteLossError(msg + " Stopping (config.on_nonfinite='stop').")
    if in_a_row >= max_skips:
      raise DivergedError(
          f"{msg} That is {in_a_row} non-finite steps in a row "
          f"(config.max_consecutive_skips={max_skips}): training has "
          f"diverged. The newest good checkpoint is step "
          f"{self.mngr.latest_step()} in {self.mngr.directory}. Try a lower "
          f"learning rate (now {config.learning_rate}; resuming with "
          "--config.learning_rate=... continues from that checkpoint), "
          "a longer warmup or a smaller grad_clip.")
    logging.warning("%s Step skipped: parameters unchanged.", msg)

  def summary(self) -> dict:
    """The means since the last summary and the skipped steps of the run."""
    out = {f"train_{k}": v / max(self.count, 1) for k, v in self.sums.items()}
    out["skipped_steps"] = self.skipped
    self.sums, self.count = {}, 0
    return out


def _train(config, workdir: str, lease: lease_lib.Lease) -> dict:
  """:func:`train_and_evaluate` once the config is checked and the workdir's
  ``lease`` is held; ``lease.check`` before every save."""
  is_chief = jax.process_index() == 0
  if is_chief:
    setup_lib.write_run_files(workdir, config)
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(config.batch_size)
  train_iter = iter(data_lib.make_dataset(
      config.data, "train", global_batch_size=config.batch_size,
      seed=config.seed, shuffle=True, repeat=True))
  graphdef, tx, state = setup_lib.create_state(config, mesh)
  mngr = ckpt_lib.manager(workdir, max_to_keep=config.keep_checkpoints)
  start, state = setup_lib.restore_or_initialize(
      config, workdir, mngr, graphdef, state, train_iter, mesh)

  # After the model is built: tensorflow's import (writers.start_import) overlaps it.
  writer = writers_lib.create_writer(
      workdir, tensorboard=_writes_tensorboard(config), just_logging=not is_chief)
  hparams = traverse_util.flatten_dict(config.to_dict(), sep=".")
  writer.write_hparams({k: v for k, v in hparams.items()
                        if isinstance(v, (int, float, str, bool))})

  train_step = step_lib.jit_train_step(graphdef, tx, config, mesh)
  sample_fn = make_sample_fn(graphdef)
  final_eval = {}
  sample_key = jax.random.key(config.seed + 2)

  def write_samples(step):
    if models.PRIORS[config.model.prior].has_manifold:
      settings = {"samples_s0": 0.0, "samples_s1": 1.0}
    else:
      settings = {"samples": 1.0}
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
          batch_size=config.batch_size, num_draws=config.eval_num_draws, mesh=mesh,
          max_images=None if final else config.eval_batches * config.batch_size)
    except FloatingPointError as e:  # Finite parameters that give NaN.
      logging.warning("Evaluating the state of step %s: %s", step, e)
      result = {"bits_per_dim": float("nan")}
    if step is not None:
      writer.write_scalars(step, {"test_bits_per_dim": result["bits_per_dim"]})
    if final:
      final_eval.update({k: v for k, v in result.items()
                         if k not in ("values", "indices")})  # Per-image arrays.
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

  # Progress: steps/s and ETA of the train steps alone. The clock given to
  # report_progress stops in paused() blocks (sampling, evaluating, saving),
  # which report_progress shows as shares of the time.
  report = writers_lib.report_progress(config.total_steps, config.log_every)
  paused_secs = 0.0

  @contextlib.contextmanager
  def paused(name):
    nonlocal paused_secs
    t = time.monotonic()
    with report.timed(name, wait_jax_async_dispatch=False):
      yield
    paused_secs += time.monotonic() - t

  metrics = _StepMetrics(config, mngr)
  last = {}
  step = start
  saved_step = start if start else None
  iter_state = None
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
          metrics.read()
          raise Preempted(f"Stopped by SIGTERM (preemption) at step {step}.")
        ckpt_lib.check_save(mngr)
        # The iterator position that matches `state`, for an exit checkpoint
        # taken between fetching a batch and finishing its step.
        iter_state = train_iter.get_state()
        images = mesh_lib.global_batch(mesh, next(train_iter)["image"])
        state, step_metrics = train_step(state, images)
        step += 1
        iter_state = None
        metrics.unread.append((step, step_metrics))
        last_step = step == config.total_steps
        logs = last_step or step % config.log_every == 0
        samples = last_step or step % config.sample_every == 0
        saves = last_step or step % config.checkpoint_every == 0
        # The host reads the metrics where it logs, samples or saves (so that
        # it never saves past a step that stops the run), and at every step
        # when any step may stop the run.
        if logs or samples or saves or config.on_nonfinite == "stop":
          metrics.read()
        report(step, time.monotonic() - paused_secs)
        if logs:
          last = metrics.summary()
          writer.write_scalars(step, last)
        if samples:
          with paused("sample"):
            write_samples(step)
        if saves:
          with paused("save"):
            last["test_bits_per_dim"] = evaluate(step)
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
          if save(step, evaluate(None)):
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
  last["skipped_steps"] = int(state.opt_state.total_notfinite)
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


# Libraries whose INFO records are dropped unless asked for (launch/train.py
# --library_logs): Orbax alone logs every step of every save and restore.
QUIET_LIBRARIES = ("orbax", "grain", "clu", "etils", "tensorflow_datasets", "jax")
# The loop's lines that clu logs: the metrics (its LoggingWriter) and the
# progress (ReportProgress's work unit notes).
_LOOP_LINES = {(os.path.join("clu", "metric_writers", "logging_writer.py"),
                "write_scalars"),
               (os.path.join("clu", "platform", "local.py"), "set_notes")}


class _LibraryInfoFilter(py_logging.Filter):

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING or any(
        record.pathname.endswith(path) and record.funcName == func
        for path, func in _LOOP_LINES):
      return True
    parts = record.pathname.split(os.sep)
    return not any(lib in parts for lib in QUIET_LIBRARIES)


def quiet_library_logs() -> None:
  """Shows only WARNING and above from :data:`QUIET_LIBRARIES` (absl handler)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())
