"""launch/evaluate.py end to end on a tiny registry entry: metrics.json, PNGs and
the metrics written back into the user registry entry."""

import importlib.util
import json
import os
import sys

import pytest
from PIL import Image

from nifzoo import configs
from nifzoo import registry
from nifzoo import zoo
from nifzoo.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str, module: str):
  """launch/<name>.py as ``module``, once per process (absl flags are global)."""
  if module not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        module, os.path.join(ROOT, "launch", f"{name}.py"))
    sys.modules[module] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[module])
  return sys.modules[module]


def _launcher():
  return _load("evaluate", "nifzoo_launch_evaluate")


@pytest.fixture(scope="module")
def tiny_entry(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  workdir, reg = str(root / "run"), str(root / "reg")
  c = configs.get_config("digits-nif4,tiny")
  c.total_steps, c.checkpoint_every, c.sample_every, c.log_every = 4, 4, 100, 4
  loop.train_and_evaluate(c, workdir)
  zoo.register(workdir, reg, name="digits-nif4-tiny", command="tiny run")
  return reg, str(root)


@pytest.mark.slow
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


# The protocol facts write_page prints (any values; the pages only quote them).
PAGE_EXTRA = {"wall_time_s": 1.0, "hardware": "cpu", "bpd_draws": 4, "num_samples": 10,
              "tune_size": 300, "fd_real": 1.0, "classifier_accuracy": 0.99,
              "embedding_method": "PCA", "repeats": 5, "pixel_probe": 0.9}


def test_results_page_claims(tmp_path):
  """The digits results page: the claims are computed from the numbers."""
  results = _load("results_digits", "nifzoo_launch_results_digits")
  rows = {
      "digits-nf": {"bits_per_dim": 2.10, "fd": 9.0, "fd_s1": 9.0, "s_star": 1.0,
                    "probe_accuracy": 0.80},
      "digits-nif4": {"bits_per_dim": 2.20, "fd": 8.0, "fd_s1": 8.5, "s_star": 0.9,
                      "probe_accuracy": 0.85},
      "digits-nif16": {"bits_per_dim": 2.12, "fd": 9.5, "fd_s1": 9.6, "s_star": 1.2,
                       "probe_accuracy": 0.70},
  }
  v = results.claims(rows)
  assert not v["bpd"]["digits-nif4"]["within_2_percent"]   # +4.8 %
  assert v["bpd"]["digits-nif16"]["within_2_percent"]      # +1.0 %
  assert v["fd"]["digits-nif4"]["nif_better"] and not v["fd"]["digits-nif16"]["nif_better"]
  assert v["probe"]["digits-nif4"]["nif_better"]
  assert not v["probe"]["digits-nif16"]["nif_better"]
  page = str(tmp_path / "r.md")
  results.write_page(page, rows, "TABLES\n", v, PAGE_EXTRA, {}, "python x")
  text = open(page).read()
  assert "`digits-nif4`: 2.2000 vs NF 2.1000 (+4.76%): **no**" in text
  assert "TABLES" in text


def test_results_page_compares_the_deep_nif_with_nif_k(tmp_path):
  """A deep NIF is compared with the NIF-k of its k (not listed under the
  NF claims); the FD verdict uses the spread over sample draws."""
  results = _load("results_digits", "nifzoo_launch_results_digits")
  row = lambda bpd, fd, s: {"bits_per_dim": bpd, "fd": fd, "fd_s1": fd,
                            "s_star": s, "probe_accuracy": 0.8}
  rows = {"digits-nf": row(2.13, 9.0, 1.0), "digits-nif8": row(2.13, 9.5, 1.0),
          "digits-deepnif8": row(2.11, 8.0, 1.1)}
  spread = {"digits-nf": {"s_star": {"mean": 9.0, "std": 0.5}},
            "digits-nif8": {"s_star": {"mean": 9.5, "std": 0.5}},
            "digits-deepnif8": {"s_star": {"mean": 8.8, "std": 0.2}}}
  iw = {"digits-deepnif8": {"num_samples": [1, 16, 256],
                            "bits_per_dim_by_n": [2.2, 2.11, 2.105]}}
  v = results.claims(rows, spread, iw)
  assert "digits-deepnif8" not in v["bpd"] and "digits-deepnif8" not in v["fd"]
  d = v["deep_nif"]["digits-deepnif8"]
  assert d["nif"] == "digits-nif8" and d["bpd_n256"] == 2.105
  assert d["bpd_better"] and d["fd_better"]
  assert not d["fd_beyond_2_std"]   # |8.8 - 9.5| = 0.7 <= 2 * 0.5
  spread["digits-deepnif8"]["s_star"]["mean"] = 12.0
  v = results.claims(rows, spread, iw)
  assert not v["deep_nif"]["digits-deepnif8"]["fd_better"]
  assert v["deep_nif"]["digits-deepnif8"]["fd_beyond_2_std"]
  page = str(tmp_path / "r.md")
  results.write_page(page, rows, "TABLES\n", v, PAGE_EXTRA, {}, "python x")
  text = open(page).read()
  assert "## The deep NIF against NIF-k" in text
  assert "| `digits-deepnif8` | 2.1100 | 2.1050 | `digits-nif8` | 2.1300 |" in text
