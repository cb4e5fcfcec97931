"""The training loop's metric writer without tensorflow (the `tensorboard` extra).

With it, tests/test_train.py checks the TensorBoard event files of a run.
"""

import json
import subprocess
import sys

import clu
import pytest

from nifzoo.train import writers


@pytest.fixture
def no_tensorflow(monkeypatch):
  """As if the `tensorboard` extra were not installed: `import tensorflow` fails."""
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  for name in [m for m in sys.modules if m.split(".")[:2] == ["clu", "metric_writers"]]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.delattr(clu, "metric_writers", raising=False)


def test_without_tensorflow_metrics_go_to_json_lines(tmp_path, monkeypatch, no_tensorflow):
  warnings = []
  monkeypatch.setattr(writers.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  writer = writers.create_writer(str(tmp_path))
  assert isinstance(writer, writers.JsonWriter)
  assert len(warnings) == 1 and 'pip install "nifzoo[tensorboard]"' in warnings[0]
  assert "tensorflow" in warnings[0] and str(tmp_path / "metrics.jsonl") in warnings[0]
  writer.write_hparams({"lr": 1e-3, "name": "digits-nif8"})
  writer.write_scalars(10, {"train_bits_per_dim": 2.5, "skipped_steps": 0})
  writer.write_images(10, {"samples": None})
  writer.write_scalars(20, {"test_bits_per_dim": 2.25})
  writer.flush()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"hparams": {"lr": 1e-3, "name": "digits-nif8"}},
                   {"step": 10, "train_bits_per_dim": 2.5, "skipped_steps": 0.0},
                   {"step": 20, "test_bits_per_dim": 2.25}]


def test_without_tensorflow_other_processes_only_log(tmp_path, no_tensorflow):
  writer = writers.create_writer(str(tmp_path), just_logging=True)
  writer.write_scalars(1, {"x": 1.0})
  assert isinstance(writer, writers.JsonWriter) and not list(tmp_path.iterdir())


@pytest.mark.slow  # Starts a Python process that imports jax.
def test_without_tensorboard_no_tensorflow_is_imported(tmp_path):
  """tensorboard=False (and every process but the chief): JsonWriter, and
  neither the writer nor the progress report imports tensorflow (a fresh
  process; the test session may have imported it)."""
  code = (
      "import sys\n"
      "from absl import logging\n"
      "from nifzoo.train import writers\n"
      "logging.set_verbosity(logging.INFO)\n"
      f"w = writers.create_writer({str(tmp_path)!r}, tensorboard=False)\n"
      "assert isinstance(w, writers.JsonWriter)\n"
      "r = writers.report_progress(total_steps=4, every_steps=2)\n"
      "for step in range(1, 5):\n"
      "  r(step, t=float(step))\n"
      "with r.timed('eval', wait_jax_async_dispatch=False):\n"
      "  pass\n"
      "loaded = [m for m in sys.modules if m.split('.')[0] == 'tensorflow']\n"
      "assert 'clu.periodic_actions' in sys.modules and not loaded, loaded\n"
      "assert 'clu.metric_writers' not in sys.modules\n"
      # Installed, so an import would have shown (clu's writer, which imports
      # it: test_background_import_gives_clu_writer).
      "import importlib.util\n"
      "assert importlib.util.find_spec('tensorflow')\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1.0 steps/s, 50.0% (2/4)" in proc.stderr, proc.stderr[-3000:]
  assert "1.0 steps/s, 100.0% (4/4), ETA: 0m" in proc.stderr



@pytest.fixture
def fresh_import_thread(monkeypatch):
  monkeypatch.setattr(writers, "_import_thread", None)


def test_background_import_without_tensorflow_still_falls_back(
    tmp_path, monkeypatch, no_tensorflow, fresh_import_thread):
  """start_import's thread meets the ImportError quietly; create_writer, which
  waits for it, reports it and falls back as without the thread."""
  warnings = []
  monkeypatch.setattr(writers.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  writers.start_import()
  writer = writers.create_writer(str(tmp_path))
  assert not writers._import_thread.is_alive()
  assert isinstance(writer, writers.JsonWriter)
  assert len(warnings) == 1 and "tensorflow" in warnings[0]


def test_background_import_gives_clu_writer(tmp_path, fresh_import_thread):
  writers.start_import()
  thread = writers._import_thread
  writers.start_import()  # Once per process: the same thread.
  assert writers._import_thread is thread
  writer = writers.create_writer(str(tmp_path))
  assert not thread.is_alive()
  assert not isinstance(writer, writers.JsonWriter)
  assert type(writer).__module__.startswith("clu.metric_writers")
  writer.close()
