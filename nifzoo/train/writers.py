"""The training loop's outputs: its metric writer and its progress report.

TensorBoard logs (``config.tensorboard``, on the chief process) go through clu's
metric writers, which import tensorflow: the optional ``tensorboard`` extra.
Every other process, and a run without them, uses ``JsonWriter``: every scalar
to the console and (on the chief) to ``<workdir>/metrics.jsonl``, one
``{"step": ..., "name": value, ...}`` object a line (images are the sample PNGs
the loop saves in ``<workdir>/samples/``). Object stores cannot append: the
file is rewritten whole at each write (a resumed run keeps its lines). Such a
process never imports tensorflow, neither through the progress report
(:func:`report_progress`).

Importing tensorflow is slow; the loop starts it in a background thread
(:func:`start_import`) before building the model and creates the writer
after, so the two overlap.
"""

from __future__ import annotations

import json
import sys
import threading
import types
import typing

from absl import logging

from nifzoo import fileio

METRICS_FILE = "metrics.jsonl"
MISSING_TENSORBOARD = (
    "TensorBoard logs need tensorflow ({error}): install them with "
    "`pip install \"nifzoo[tensorboard]\"`. Logging the metrics to the console "
    "and {path} instead.")


class JsonWriter:
  """Scalars to absl logging and (unless ``just_logging``) one JSON line per write.

  The subset of clu's ``MetricWriter`` interface the training loop uses.
  """

  def __init__(self, workdir: str, *, just_logging: bool = False):
    self.path = None if just_logging else fileio.as_path(workdir) / METRICS_FILE
    self._text = (self.path.read_text() if self.path is not None and
                  self.path.exists() else "")

  def _append(self, record: dict) -> None:
    if self.path is not None:  # Whole objects: gs:// has no append.
      self._text += json.dumps(record) + "\n"
      fileio.write_text(self.path, self._text)

  def write_hparams(self, hparams) -> None:
    self._append({"hparams": dict(hparams)})

  def write_scalars(self, step: int, scalars) -> None:
    values = {k: float(v) for k, v in scalars.items()}
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
    self._append({"step": int(step), **values})

  def write_images(self, step: int, images) -> None:
    del step, images  # The loop saves them as PNGs itself.

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


_import_thread = None


def _import_clu() -> None:
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pass  # create_writer reports it.


def start_import() -> None:
  """Starts importing clu's writers (and so tensorflow) in a background thread,
  so that it overlaps building and compiling the model; :func:`create_writer`
  waits for it."""
  global _import_thread
  if _import_thread is None:
    _import_thread = threading.Thread(target=_import_clu, name="nifzoo-import-clu",
                                      daemon=True)
    _import_thread.start()


def create_writer(workdir: str, *, tensorboard: bool = True,
                  just_logging: bool = False):
  """clu's default writer (console + TensorBoard) when ``tensorboard`` and not
  ``just_logging``; else, or without tensorflow (with a warning), ``JsonWriter``."""
  if just_logging or not tensorboard:
    return JsonWriter(workdir, just_logging=just_logging)
  if _import_thread is not None:
    _import_thread.join()
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    writer = JsonWriter(workdir)
    logging.warning(MISSING_TENSORBOARD.format(error=e, path=writer.path))
    return writer
  return metric_writers.create_default_writer(workdir, asynchronous=False)


def _periodic_actions():
  """``clu.periodic_actions``, imported without tensorflow.

  It imports the ``clu.metric_writers`` package (whose ``SummaryWriter``
  imports tensorflow) for one name, the ``MetricWriter`` type of an argument
  the loop does not pass. Unless that package is loaded already, a stand-in
  with that name is in ``sys.modules`` during the import only.
  """
  if "clu.metric_writers" in sys.modules or "clu.periodic_actions" in sys.modules:
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    return periodic_actions
  import clu  # pylint: disable=g-import-not-at-top
  stand_in = types.ModuleType("clu.metric_writers")
  stand_in.MetricWriter = typing.Any
  sys.modules["clu.metric_writers"] = stand_in
  try:
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["clu.metric_writers"]
    if getattr(clu, "metric_writers", None) is stand_in:
      del clu.metric_writers
  return periodic_actions


def report_progress(total_steps: int, every_steps: int):
  """clu's ``ReportProgress``: called after every step, it logs one line every
  ``every_steps`` steps and at ``total_steps``: steps/s since the last one,
  the share done, the ETA, and the share of the time spent in its ``timed``
  blocks."""
  return _periodic_actions().ReportProgress(
      num_train_steps=total_steps, every_steps=every_steps, every_secs=None)
