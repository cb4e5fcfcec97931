"""launch/evaluate.py end to end on a tiny registry entry: metrics.json, PNGs and
the metrics written back into the user registry entry."""

import importlib.util
import json
import os

import pytest
from PIL import Image

from nifzoo import configs
from nifzoo import registry
from nifzoo import zoo
from nifzoo.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launcher():
  spec = importlib.util.spec_from_file_location(
      "evaluate_launcher", os.path.join(ROOT, "launch", "evaluate.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def tiny_entry(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  workdir, reg = str(root / "run"), str(root / "reg")
  c = configs.get_config("digits-nif4,tiny")
  c.total_steps, c.checkpoint_every, c.sample_every, c.log_every = 4, 4, 100, 4
  loop.train_and_evaluate(c, workdir)
  zoo.register(workdir, reg, name="digits-nif4-tiny", command="tiny run")
  return reg, str(root)


def test_evaluate_launcher_end_to_end(tiny_entry):
  reg, root = tiny_entry
  launcher = _launcher()
  outdir = os.path.join(root, "out")
  out = launcher.evaluate(
      "digits-nif4-tiny", ["bpd", "fd", "s_sweep", "figures", "embeddings"], outdir,
      registry=[reg], num_samples=32, tune_size=40, scales=[0.0, 1.0],
      bpd_draws=1, batch_size=64, write_metrics=reg, progress=False,
      embedding_method="pca",
      classifier_dir=os.path.join(ROOT, "registry", "checkpoints",
                                  "digits-classifier"))
  saved = json.load(open(os.path.join(outdir, "metrics.json")))
  assert saved["metrics"] == json.loads(json.dumps(out["metrics"]))
  r = saved["results"]
  assert r["bpd"]["num_images"] == 300 and r["bpd"]["noise_scale"] == 1.0
  assert r["s_sweep"]["scales"] == [0.0, 1.0] and r["s_sweep"]["tune_split"] == "train"
  for f in ("sweep.png", "temperature.png", "s_strip.png", "samples_s0.png",
            "samples_s1.png", "reconstructions.png", "interpolations.png",
            "embedding.png"):
    assert Image.open(os.path.join(outdir, f)).format == "PNG", f
  entry = registry.find("digits-nif4-tiny", reg)
  for m in ("test_bits_per_dim", "test_fd_classifier", "test_fd_classifier_s1",
            "test_probe_accuracy"):
    assert m in entry.metrics, m
  assert entry.metrics["test_fd_classifier"]["s_star"] in (0.0, 1.0)
  assert 0.0 <= entry.metrics["test_probe_accuracy"]["value"] <= 1.0
  with pytest.raises(ValueError, match="Unknown evals"):
    launcher.evaluate("digits-nif4-tiny", ["bogus"], outdir, registry=[reg])
  with pytest.raises(ValueError, match="inception_weights"):
    launcher.evaluate("digits-nif4-tiny", ["fid"], outdir, registry=[reg])
