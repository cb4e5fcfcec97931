"""Evaluation jobs (nifzoo.evaluate.run): the config names the evaluations and
their settings, the metrics come from the one builder; end to end on a tiny
registry entry (metrics.json, PNGs, the metrics written into the entry); the
results page's claims."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from nifzoo import configs
from nifzoo import evaluate
from nifzoo import models
from nifzoo import registry
from nifzoo.evaluate import claims
from nifzoo.evaluate import classifier
from nifzoo.evaluate import config as config_lib
from nifzoo.evaluate import inception
from nifzoo.evaluate import job
from nifzoo.evaluate import metrics

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_model():
  """An untrained tiny NIF-4 (initialised on test images) as ``zoo.load``
  returns a workdir's model: its config, no registry entry."""
  c = configs.get_config("digits-nif4,tiny")
  m = models.build(c, rngs=models.seeded_rngs(0))
  x, _ = classifier.load_split(c.data, "test", max_images=32)
  m.initialize(jnp.asarray(x))
  m.config, m.entry = ml_collections.FrozenConfigDict(c), None
  return m


# ------------------------------------------------------------------ config


def test_registry_metric_is_the_one_shape():
  m = metrics.registry_metric(2.123456789, command="python x", digits=5,
                              split="test", num_samples=None, num_draws=4)
  assert m == {"value": 2.12346, "command": "python x", "split": "test",
               "num_draws": 4}
  assert metrics.registry_metric(0.98765, command="c")["value"] == 0.9877
  r = {"bits_per_dim": 2.0000049, "split": "test", "num_images": 300,
       "num_draws": 4, "noise_scale": 0.5, "num_samples": None}
  assert metrics.bits_per_dim_metric(r, "c") == {"test_bits_per_dim_s0.5": {
      "value": 2.0, "command": "c", "split": "test", "num_images": 300,
      "num_draws": 4, "noise_scale": 0.5}}
  assert metrics.bits_per_dim_metric(None, "c") == {}


def test_config_names_evaluations_and_settings_it_knows():
  assert tuple(job.EVALUATORS) == config_lib.EVALS  # One evaluator per name.
  c = config_lib.get_config()
  assert list(c.evals) == sorted(config_lib.DEFAULT_EVALS.split(","))
  assert c.evals.knob.test_draws == 20 and c.evals.knob.grid[0] == 0.5
  assert config_lib.get_config("s_sweep").evals.s_sweep.scales[0] == 0.0
  assert len(config_lib.get_config("s_sweep").evals.s_sweep.scales) == 15
  with pytest.raises(ValueError, match=r"Unknown evals \['bogus'\]"):
    config_lib.get_config("bpd,bogus")
  with pytest.raises(ValueError, match=r"Unknown settings \['draws'\] of the 'bpd'"):
    config_lib.resolve({"evals": {"bpd": {"draws": 2}}})
  with pytest.raises(ValueError, match=r"Unknown evaluation job fields \['batch'\]"):
    config_lib.resolve({"batch": 2})
  with pytest.raises(ValueError, match="names no evaluation"):
    config_lib.resolve({"evals": {}})
  # A partial config: the rest at the defaults stated in config.py.
  r = config_lib.resolve({"evals": {"fd": {}, "bpd": {"num_draws": 2}},
                          "registry": "/r"})
  assert r.evals.bpd.num_draws == 2 and r.evals.bpd.iw_samples is None
  assert r.evals.fd.num_samples == 1000 and r.registry == ("/r",)
  assert r.batch_size == 256 and "s_sweep" not in r.evals
  # Shortcuts set the settings of the evaluations the job runs, and no others.
  s = config_lib.with_shortcuts(r, num_samples=7, bpd_draws=3, seed=5,
                                tune_size=None, registry=["/a", "/b"])
  assert s.evals.fd.num_samples == 7 and s.evals.bpd.num_draws == 3
  assert s.seed == 5 and s.registry == ("/a", "/b") and "fid" not in s.evals
  assert r.evals.fd.num_samples == 1000  # Not changed in place.


def test_job_gives_each_evaluator_its_settings_and_key(tiny_model, tmp_path,
                                                       monkeypatch):
  """A spy evaluator in place of two real ones sees its own settings, its own
  key (fold_in(key(seed), index)) and the earlier evaluations' results; the
  job runs them in the canonical order and writes what they return."""
  seen = []

  class Spy:
    def __init__(self, name):
      self.name = name

    def run(self, model, settings, context):
      seen.append((self.name, settings.to_dict(), context))
      m = metrics.registry_metric(len(seen), command=context.command)
      return {"results": {"earlier": sorted(context.results)},
              "metrics": {f"spy_{self.name}": m}, "summary": "spied"}

  monkeypatch.setitem(job.EVALUATORS, "fd", (Spy("fd"), 2))
  monkeypatch.setitem(job.EVALUATORS, "bpd", (Spy("bpd"), 1))
  out = evaluate.run(tiny_model, {
      "evals": {"fd": {"num_samples": 12}, "bpd": {"num_draws": 2}},
      "outdir": str(tmp_path), "seed": 3, "batch_size": 32, "progress": False,
      "command": "python job"})
  assert [s[0] for s in seen] == ["bpd", "fd"]
  assert seen[0][1] == {"num_draws": 2, "iw_samples": None}
  assert seen[1][1] == {"num_samples": 12}
  for (_, _, ctx), index in zip(seen, (1, 2)):
    assert ctx.batch_size == 32 and ctx.seed == 3 and ctx.command == "python job"
    assert ctx.name == "digits-nif4" and ctx.outdir == str(tmp_path)
    assert jnp.array_equal(jax.random.key_data(ctx.key), jax.random.key_data(
        jax.random.fold_in(jax.random.key(3), index)))
  assert out["evals"] == ["bpd", "fd"]
  assert out["results"]["fd"] == {"earlier": ["bpd"]}
  assert out["metrics"] == {"spy_bpd": {"value": 1, "command": "python job"},
                            "spy_fd": {"value": 2, "command": "python job"}}
  saved = json.load(open(tmp_path / "metrics.json"))
  assert saved["metrics"] == out["metrics"]


def test_job_refuses_what_it_cannot_run(tiny_model, tmp_path):
  with pytest.raises(ValueError, match=r"Unknown evals \['bogus'\]"):
    evaluate.run(tiny_model, {"evals": {"bogus": {}}, "outdir": str(tmp_path)})
  with pytest.raises(ValueError, match="inception_weights"):
    evaluate.run(tiny_model, {"evals": {"fid": {}}, "outdir": str(tmp_path)})
  with pytest.raises(ValueError, match="config.outdir"):
    evaluate.run(tiny_model, {"evals": {"bpd": {}}})
  with pytest.raises(ValueError, match="needs a registry entry"):
    evaluate.run(tiny_model, {"evals": {"bpd": {}}, "outdir": str(tmp_path),
                              "write_metrics": str(tmp_path)})


def test_bpd_evaluation_reports_the_split_and_its_metric(tiny_model, tmp_path):
  out = evaluate.run(tiny_model, {"evals": {"bpd": {"num_draws": 2}},
                                  "outdir": str(tmp_path), "batch_size": 64,
                                  "progress": False, "command": "python c"})
  r = out["results"]["bpd"]
  # The protocol: the library's bits/dim with the job's key for bpd, which is
  # its default key, at any batch size: one number per model.
  direct = evaluate.bits_per_dim(tiny_model, tiny_model.config.data, "test",
                                 batch_size=256, num_draws=2)
  np.testing.assert_allclose(r["values"], direct["values"], rtol=1e-6)
  assert r["bits_per_dim"] == pytest.approx(direct["bits_per_dim"], rel=1e-6)
  again = evaluate.bits_per_dim(tiny_model, tiny_model.config.data, "test",
                                batch_size=64, num_draws=2,
                                key=jax.random.fold_in(jax.random.key(0), 1))
  assert again["bits_per_dim"] == r["bits_per_dim"] and r["num_images"] == 300
  assert out["metrics"] == {"test_bits_per_dim": {
      "value": round(r["bits_per_dim"], 5), "command": "python c",
      "se": round(r["se_bits_per_dim"], 5),
      "split": "test", "num_images": 300, "num_draws": 2, "noise_scale": 1.0}}


def test_training_registry_and_job_give_one_bits_per_dim(tiny_run, tmp_path):
  """The loop's final evaluation (batch 8), the registry metric it writes and
  an evaluation job (batch 256) of the registered model: one number."""
  import helpers  # pylint: disable=g-import-not-at-top
  from nifzoo import registry  # pylint: disable=g-import-not-at-top
  _, reg, result = tiny_run
  metric = registry.find(helpers.TINY_NAME, reg).metrics["test_bits_per_dim"]
  out = evaluate.run(helpers.TINY_NAME, {
      "evals": {"bpd": {"num_draws": metric["num_draws"]}}, "registry": reg,
      "outdir": str(tmp_path), "progress": False})
  job = out["results"]["bpd"]
  assert job["bits_per_dim"] == pytest.approx(result["test_eval"]["bits_per_dim"],
                                              rel=1e-6)
  assert metric["value"] == round(result["test_eval"]["bits_per_dim"], 5)
  assert metric["se"] == pytest.approx(job["se_bits_per_dim"], abs=1e-5)


def test_fid_scores_s1_and_the_knobs_s_star(tiny_model, tmp_path, monkeypatch):
  """fid after knob (a stub giving s* = 0.5, T* = 0.8): FIDs at s = T = 1 and
  at (s*, T*), the metric at (s*, T*). The weights file is read by inception.load_inception, and
  the features are 8 pixels (Inception itself: test_evaluate_inception.py)."""
  class Knob:
    @staticmethod
    def run(model, settings, context):
      del model, settings, context
      return {"results": {"knob": "noise_scale", "knob_star": 0.5, "knobs_star": {
          "noise_scale": 0.5, "temperature": 0.8}}, "metrics": {}}

  monkeypatch.setitem(job.EVALUATORS, "knob", (Knob, 7))
  loaded = []
  monkeypatch.setattr(inception, "load_inception", loaded.append)
  monkeypatch.setattr(inception, "feature_fn",
                      lambda net, mesh: lambda y: y.reshape(len(y), -1)[:, :8])
  out = evaluate.run(tiny_model, {
      "evals": {"knob": {}, "fid": {"weights": "w.npz", "num_samples": 16}},
      "outdir": str(tmp_path), "batch_size": 16, "progress": False,
      "command": "c"})
  r = out["results"]["fid"]
  star, one = "s=0.5,T=0.8", "s=1,T=1"
  assert loaded == ["w.npz"] and sorted(r) == [star, one]
  assert r[star]["features"] == "inception" and r[star]["num_samples"] == 16
  assert r[star]["temperature"] == 0.8 and r[one]["temperature"] == 1.0
  assert r[star]["fd"] != r[one]["fd"]
  assert out["metrics"] == {"test_fid_inception": {
      "value": round(r[star]["fd"], 4), "command": "c", "noise_scale": 0.5,
      "temperature": 0.8, "num_samples": 16, "num_reference": 300}}


@pytest.mark.slow  # Starts a Python process that imports jax.
def test_launcher_names_an_unknown_evaluation():
  """launch/evaluate.py builds the job from its flags before loading anything."""
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "evaluate.py"),
       "--model=digits-nif4", "--outdir=/nonexistent", "--evals=bpd,bogus"],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, "PYTHONPATH": ROOT + os.pathsep
           + os.environ.get("PYTHONPATH", "")})
  assert proc.returncode != 0
  assert "Unknown evals ['bogus']" in proc.stderr


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_entry(tiny_run, tmp_path_factory):
  """(a private copy of the tiny run's registry, a scratch directory)."""
  root = tmp_path_factory.mktemp("eval")
  return helpers.copy_tree(tiny_run[1], root), str(root)


@pytest.mark.slow
def test_evaluation_job_end_to_end(tiny_entry):
  reg, root = tiny_entry
  outdir = os.path.join(root, "out")
  config = config_lib.get_config("bpd,fd,s_sweep,knob,figures,embeddings")
  config.evals.s_sweep.scales = (0.0, 1.0)
  k = config.evals.knob
  k.tune_draws, k.test_draws, k.grid, k.lower, k.upper = 2, 3, (0.9, 1.0, 1.1), 0.8, 1.2
  config.outdir, config.registry, config.write_metrics = outdir, (reg,), reg
  config.batch_size, config.progress = 64, False
  config.classifier_dir = os.path.join(ROOT, "registry", "checkpoints",
                                       "digits-classifier")
  config = config_lib.with_shortcuts(config, num_samples=32, tune_size=40,
                                     bpd_draws=1, embedding_method="pca")
  out = evaluate.run("digits-nif4-tiny", config)
  saved = json.load(open(os.path.join(outdir, "metrics.json")))
  assert saved["metrics"] == json.loads(json.dumps(out["metrics"]))
  r = saved["results"]
  assert r["bpd"]["num_images"] == 300 and r["bpd"]["noise_scale"] == 1.0
  assert r["bpd"]["num_draws"] == 1 and r["fd"]["num_samples"] == 32
  assert r["s_sweep"]["scales"] == [0.0, 1.0] and r["s_sweep"]["tune_split"] == "train"
  assert r["s_sweep"]["tune_size"] == 40 and r["embeddings"]["figure_method"] == "PCA"
  assert r["classifier"]["dataset"] == "digits"
  for f in ("sweep.png", "temperature.png", "s_strip.png", "samples_s0.png",
            "samples_s1.png", "reconstructions.png", "interpolations.png",
            "embedding.png"):
    assert Image.open(os.path.join(outdir, f)).format == "PNG", f
  entry = registry.find("digits-nif4-tiny", reg)
  for m in ("test_bits_per_dim", "test_fd_classifier", "test_fd_classifier_s1",
            "test_probe_accuracy"):
    assert m in entry.metrics, m
    assert entry.metrics[m]["command"].startswith("python launch/evaluate.py")
  fd = entry.metrics["test_fd_classifier"]
  assert fd["s_star"] == r["knob"]["knob_star"] and 0.8 <= fd["s_star"] <= 1.2
  assert fd["temperature_star"] == r["knob"]["knobs_star"]["temperature"]
  assert r["knob"]["tune_temperature"]["best"] == fd["temperature_star"]
  # s* at T = 1 is scored with the draws of every other setting (common keys).
  assert len(r["knob"]["tuned_s"]["fds"]) == 3
  assert fd["num_draws"] == 3 and fd["value"] == round(r["knob"]["tuned"]["mean"], 4)
  # One FD metric per model: the knob's, not the single draws of fd or s_sweep.
  assert saved["metrics"]["test_fd_classifier_s1"]["command"] == fd["command"]
  assert "se" in saved["metrics"]["test_fd_classifier_s1"]
  assert 0.0 <= entry.metrics["test_probe_accuracy"]["value"] <= 1.0


# ------------------------------------------------------------------ claims


def _claims_inputs():
  """Per-image bits/dim sharing a common part (so that pairing matters), FD
  draws and probes of an NF, two NIF-k and a deep NIF."""
  rng = np.random.default_rng(0)
  common = rng.normal(2.1, 0.2, size=(300, 4))
  noise = lambda sd: rng.normal(0, sd, size=(300, 4))
  bpd = {"digits-nf": common + noise(0.01),
         "digits-nif4": common + 0.05 + noise(0.01),      # clearly worse
         "digits-nif8": common + noise(0.01),             # a match
         "digits-deepnif8": common - 0.03 + noise(0.01)}  # bound, clearly lower
  fds = {"digits-nf": rng.normal(9.0, 0.5, 20), "digits-nif4": rng.normal(7.0, 0.5, 20),
         "digits-nif8": rng.normal(9.1, 0.5, 20),
         "digits-deepnif8": rng.normal(9.0, 0.5, 20)}
  knob = {n: {"tuned": {"fds": f.tolist()}, "default": {"fds": (f + 1.0).tolist()}}
          for n, f in fds.items()}
  probe = {"digits-nf": {"accuracy": 0.90, "num_test": 300},
           "digits-nif4": {"accuracy": 0.56, "num_test": 300},
           "digits-nif8": {"accuracy": 0.893, "num_test": 300},
           "digits-deepnif8": {"accuracy": 0.8, "num_test": 300}}
  return ({n: {"values": v, "num_samples": 16 if "deep" in n else None}
           for n, v in bpd.items()}, knob, probe)


def test_results_page_claims_are_tests_of_the_numbers():
  """Oracle: the paired difference and the Welch SE written out with numpy."""
  bpd, knob, probe = _claims_inputs()
  v = claims.claims(bpd, knob, probe, nf="digits-nf")
  d = (bpd["digits-nif4"]["values"] - bpd["digits-nf"]["values"]).mean(axis=1)
  assert v["bpd"]["digits-nif4"]["diff"] == pytest.approx(d.mean())
  assert v["bpd"]["digits-nif4"]["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(300))
  assert v["bpd"]["digits-nif4"]["verdict"] == "worse"
  assert v["bpd"]["digits-nif8"]["verdict"] == "inconclusive"
  a, b = (np.asarray(knob[n]["tuned"]["fds"]) for n in ("digits-nif4", "digits-nf"))
  assert v["fd"]["digits-nif4"]["se"] == pytest.approx(
      np.sqrt(a.var(ddof=1) / 20 + b.var(ddof=1) / 20))
  assert v["fd"]["digits-nif4"]["verdict"] == "better"
  assert v["fd"]["digits-nif8"]["verdict"] == "inconclusive"
  # A tie within the binomial noise is not a loss; 34 points is.
  assert v["probe"]["digits-nif8"]["verdict"] == "inconclusive"
  assert v["probe"]["digits-nif4"]["verdict"] == "worse"
  assert "digits-deepnif8" not in v["bpd"] and "digits-deepnif8" not in v["fd"]
  assert v["probe"]["digits-deepnif8"]["verdict"] == "worse"  # 0.80 vs 0.90
  deep = v["deep_nif"]["digits-deepnif8"]
  assert deep["nif"] == "digits-nif8" and deep["bpd"]["verdict"] == "better"
  assert deep["fd"]["verdict"] == "inconclusive"
  text = claims.markdown(v, dataset="digits", nf="digits-nf")
  assert text.startswith("## The paper's claims on digits")
  assert "**bound**" in text and "N = 16" in text
  assert "- `digits-nif8`: " in text and "**inconclusive**" in text
