"""The training loop's metric writer: TensorBoard when tensorflow is installed.

clu's metric writers import tensorflow (its TensorBoard summaries), which is the
optional ``tensorboard`` extra. Without it, training still runs: ``JsonWriter``
logs every scalar to the console and adds it to ``<workdir>/metrics.jsonl``,
one ``{"step": ..., "name": value, ...}`` object a line (images are the sample
PNGs the loop saves in ``<workdir>/samples/``). Object stores cannot append:
the file is rewritten whole at each write (a resumed run keeps its lines).

Importing tensorflow takes several seconds; the loop starts it in a background
thread (:func:`start_import`) before building the model and creates the writer
after, so the two overlap.
"""

from __future__ import annotations

import json
import threading

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
  """Starts importing clu's writers (and so tensorflow, several seconds) in a
  background thread, so that it overlaps building and compiling the model;
  :func:`create_writer` waits for it."""
  global _import_thread
  if _import_thread is None:
    _import_thread = threading.Thread(target=_import_clu, name="nifzoo-import-clu",
                                      daemon=True)
    _import_thread.start()


def create_writer(workdir: str, *, just_logging: bool = False):
  """clu's default writer (console + TensorBoard), or ``JsonWriter`` without tensorflow."""
  if _import_thread is not None:
    _import_thread.join()
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    writer = JsonWriter(workdir, just_logging=just_logging)
    logging.warning(MISSING_TENSORBOARD.format(
        error=e, path=writer.path or "nowhere else (not the chief process)"))
    return writer
  return metric_writers.create_default_writer(
      workdir, just_logging=just_logging, asynchronous=False)
