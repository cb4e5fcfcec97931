"""The evaluation suite on tiny models: FD plumbing, the s sweep (s chosen on
train), figures (interpolations decode every step), embeddings, probe, tables."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from scipy import linalg

from nifzoo import configs
from nifzoo import models
from nifzoo.evaluate import classifier
from nifzoo.evaluate import fd as fd_lib
from nifzoo.evaluate import figures
from nifzoo.evaluate import probe
from nifzoo.evaluate import sweep
from nifzoo.evaluate import tables

import helpers


@pytest.fixture(scope="module")
def data_config():
  return configs.get_config("digits-nif4,tiny").data


@pytest.fixture(scope="module")
def test_images(data_config):
  return classifier.load_split(data_config, "test", max_images=16)[0]


@pytest.fixture(scope="module")
def tiny_models(test_images):
  out = {}
  for name in ("digits-nf,tiny", "digits-nif4,tiny"):
    m = models.build(configs.get_config(name), rngs=models.seeded_rngs(0))
    m.initialize(jnp.asarray(test_images))
    helpers.perturb(m, 0.02, seed=1)
    out[m.prior.name] = m
  return out


@pytest.fixture(scope="module")
def clf(data_config):
  model, info = classifier.train_classifier(data_config, hidden=(32, 8),
                                            steps=150, progress=False)
  return model, info


# Jitted model calls for the oracles (op by op, a Glow takes seconds).
_decode = nnx.jit(lambda m, z: m.decode(z))
_encode = nnx.jit(lambda m, x: m.encode(x))
_sample = nnx.jit(lambda m, key: m.sample(key, 32, noise_scale=0.5, output="continuous"))


def _scipy_fd(f1, f2):
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  return float(np.sum((mu1 - mu2) ** 2)
               + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(s1 @ s2 + 1e-12 * np.eye(len(s1))))))


# ------------------------------------------------------------------ classifier


def test_classifier_learns_and_round_trips(clf, data_config, tmp_path):
  model, info = clf
  assert info["test_accuracy"] > 0.6  # 10 classes: chance is 0.1.
  x, y = classifier.load_split(data_config, "test")
  assert len(x) == 300
  d = classifier.save_classifier(model, str(tmp_path / "clf"), info)
  loaded, info2 = classifier.load_classifier(d)
  assert info2["test_accuracy"] == info["test_accuracy"]
  yb = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 8, 8, 1)), jnp.float32)
  np.testing.assert_allclose(loaded(yb), model(yb), rtol=1e-6)
  assert classifier.feature_fn(loaded)(yb).shape == (5, 8)
  with pytest.raises(FileNotFoundError, match="No classifier"):
    classifier.load_classifier(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="shape"):
    model.features(jnp.zeros((2, 7, 8, 1)))


def test_shipped_digits_classifier():
  d = os.path.join(os.path.dirname(os.path.dirname(__file__)), "registry",
                   "checkpoints", "digits-classifier")
  model, info = classifier.load_classifier(d)
  c = configs.get_config("digits-nf")
  x, y = classifier.load_split(c.data, "test")
  acc = classifier.accuracy(model, x, y, 17, key=jax.random.key(123))
  assert acc > 0.95 and abs(acc - info["test_accuracy"]) < 0.02


# ------------------------------------------------------------------ FD plumbing


def test_split_and_sample_features(tiny_models, clf, data_config):
  model = tiny_models["nif"]
  ffn = classifier.feature_fn(clf[0])
  key = jax.random.key(3)
  f = fd_lib.split_features(ffn, data_config, "test", key=key, batch_size=128)
  assert f.shape == (300, 8)
  x, _ = classifier.load_split(data_config, "test", max_images=140)
  # Image i's noise: its own key, whatever the batch (rows 128-139: batch 2).
  u = jnp.stack([jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, i), 0),
                                    x.shape[1:], jnp.float32) for i in range(140)])
  np.testing.assert_allclose(f[:140], ffn((x + u) / 17.0), rtol=1e-5, atol=1e-6)
  sub = fd_lib.split_features(ffn, data_config, "test", key=key, batch_size=32,
                              indices=np.arange(130, 140))
  np.testing.assert_allclose(sub, f[130:140], rtol=1e-5, atol=1e-6)
  s = fd_lib.sample_features(fd_lib.make_sampler(model), ffn, 40, key=key,
                             noise_scale=0.5, batch_size=32)
  assert s.shape == (40, 8)
  direct = _sample(model, jax.random.fold_in(key, 1))
  np.testing.assert_allclose(s[32:], ffn(direct)[:8], rtol=1e-4, atol=1e-5)
  r = fd_lib.frechet_distance(model, ffn, data_config, num_samples=64,
                              batch_size=64, key=key)
  assert r["fd"] > 0 and r["num_reference"] == 300 and r["num_samples"] == 64


# ------------------------------------------------------------------ sweep


def test_sweep_chooses_s_on_train_and_reports_test(tiny_models, clf, data_config):
  """A spy feature function sees every batch: the tuning reference must be the
  train subsample (never a test image), and s* the argmin of the FD to it,
  recomputed here with scipy's sqrtm."""
  model = tiny_models["nif"]
  ffn = classifier.feature_fn(clf[0])
  calls = []

  def spy(y):
    calls.append(np.asarray(y))
    return ffn(y)

  scales = (0.0, 0.6, 1.2)
  r = sweep.noise_scale_sweep(model, spy, data_config, scales=scales,
                              num_samples=64, tune_size=50, batch_size=64,
                              key=jax.random.key(4), seed=7)
  train, _ = classifier.load_split(data_config, "train")
  test, _ = classifier.load_split(data_config, "test")
  idx = sweep.tune_indices(data_config, "train", 50, 7)
  levels = lambda y: np.floor(y * 17).astype(np.int32)
  # Call 0: the tuning reference (50 images in one padded batch of 64).
  np.testing.assert_array_equal(levels(calls[0][:50]), train[idx])
  test_set = {t.tobytes() for t in test}
  assert not any(levels(im).tobytes() in test_set for im in calls[0][:50])
  # Calls 1-5: the test reference, every test image.
  np.testing.assert_array_equal(
      levels(np.concatenate(calls[1:6]))[:300], test)
  # Then per s: tuning samples, eval samples.
  tune_ref = np.asarray(ffn(jnp.asarray(calls[0])), np.float64)[:50]
  eval_ref = np.asarray(ffn(jnp.asarray(np.concatenate(calls[1:6]))), np.float64)[:300]
  for i, s in enumerate(scales):
    ft = np.asarray(ffn(jnp.asarray(calls[6 + 2 * i])), np.float64)
    fe = np.asarray(ffn(jnp.asarray(calls[7 + 2 * i])), np.float64)
    np.testing.assert_allclose(r["fd_tune"][i], _scipy_fd(ft, tune_ref), rtol=1e-3)
    np.testing.assert_allclose(r["fd_eval"][i], _scipy_fd(fe, eval_ref), rtol=1e-3)
  best = int(np.argmin(r["fd_tune"]))
  assert r["s_star"] == scales[best]
  assert r["fd_eval_at_s_star"] == r["fd_eval"][best]
  # s = 1 is not among these scales: its FD is computed with the eval draws.
  fe1 = np.asarray(ffn(jnp.asarray(calls[12])), np.float64)
  np.testing.assert_allclose(r["fd_eval_at_s1"], _scipy_fd(fe1, eval_ref), rtol=1e-3)
  assert len(calls) == 13
  assert r["bits_per_dim"][0] is None  # s = 0: zero density off the manifold.
  assert all(np.isfinite(b) for b in r["bits_per_dim"][1:])
  assert r["bits_per_dim"][1] != r["bits_per_dim"][2]
  assert r["tune_split"] == "train" and r["eval_split"] == "test"


def test_nf_sweep_is_one_point_and_plot(tiny_models, clf, data_config, tmp_path):
  r = sweep.noise_scale_sweep(tiny_models["normal"], classifier.feature_fn(clf[0]),
                              data_config, num_samples=32, batch_size=32)
  assert r["scales"] == [1.0] and r["s_star"] == 1.0 and r["fd_eval_at_s1"] > 0
  fake = dict(r, scales=[0.0, 0.5, 1.0], fd_tune=[3.0, 1.0, 2.0],
              fd_eval=[3.5, 1.5, 2.5], bits_per_dim=[None, 2.3, 2.2], s_star=0.5,
              fd_eval_at_s_star=1.5)
  path = sweep.plot_sweep({"nf": r, "nif": fake}, str(tmp_path / "sweep.png"))
  assert Image.open(path).format == "PNG"
  assert sweep.DEFAULT_SCALES[0] == 0.0 and sweep.DEFAULT_SCALES[-1] == 1.2
  assert len(sweep.DEFAULT_SCALES) == 15


# ------------------------------------------------------------------ figures


def test_interpolation_decodes_every_step(tiny_models, test_images):
  for model in tiny_models.values():
    a, b = test_images[:3], test_images[3:6]
    frames = figures.interpolations(model, a, b, steps=5)
    assert frames.shape == (3, 5, 8, 8, 1)
    za = np.asarray(_encode(model, jnp.asarray(a)))
    zb = np.asarray(_encode(model, jnp.asarray(b)))
    for j, t in enumerate(np.linspace(0, 1, 5)):
      zt = jnp.asarray((1 - t) * za + t * zb, jnp.float32)
      expected = (np.asarray(_decode(model, zt)) + 0.5) / 17
      # Decoded levels agree up to a rare level flip at a bin boundary.
      assert np.mean(np.abs(frames[:, j] - expected) > 1e-4) < 0.02
    # The middle frames are new images, not copies of the end points.
    assert np.abs(frames[:, 2] - frames[:, 0]).max() > 0
    assert np.abs(frames[:, 2] - frames[:, 4]).max() > 0
  with pytest.raises(ValueError, match="steps"):
    figures.interpolation_latents(za, zb, 1)


def test_grids_strips_samples_reconstructions(tiny_models, test_images, tmp_path):
  nif = tiny_models["nif"]
  g = figures.temperature_grid(nif, (0.5, 1.0), n=4)
  assert g.shape == (2, 4, 8, 8, 1) and 0 < g.min() and g.max() < 1
  strip = figures.noise_strip(nif, (0.0, 0.5, 1.0), n=3, key=jax.random.key(2))
  assert strip.shape == (3, 3, 8, 8, 1)
  z = jax.random.normal(jax.random.split(jax.random.key(2))[0], (3, nif.latent_dim))
  np.testing.assert_allclose(strip[:, 0], (np.asarray(_decode(nif, z)) + 0.5) / 17,
                             atol=1e-6)
  assert np.abs(strip[:, 2] - strip[:, 0]).max() > 0
  both = figures.samples_at(nif, n=4)
  assert set(both) == {0.0, 1.0} and both[0.0].shape == (4, 8, 8, 1)
  rec = figures.reconstructions(nif, test_images[:4])
  np.testing.assert_allclose(rec[0], (test_images[:4] + 0.5) / 17, rtol=1e-6)
  assert Image.open(figures.save_rows(strip, str(tmp_path / "s.png"))).size[0] > 0
  p = figures.save_labelled_grids({"NF": g, "NIF": g}, str(tmp_path / "t.png"),
                                  row_labels=["T=0.5", "T=1"])
  assert Image.open(p).format == "PNG"


# ------------------------------------------------------------------ embeddings


def test_embeddings_and_probe(tiny_models, data_config, test_images):
  for prior, dim in (("normal", 64), ("nif", 4)):
    model = tiny_models[prior]
    emb, labels = probe.embeddings(model, data_config, "test", batch_size=128)
    assert emb.shape == (300, dim) and labels.shape == (300,)
    np.testing.assert_allclose(emb[:16], _encode(model, jnp.asarray(test_images)),
                               rtol=1e-4, atol=1e-4)
  # The probe on an oracle: separable blobs are classified perfectly, and
  # features independent of the labels are not.
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 600)
  x = np.eye(3)[y] * 10 + rng.normal(size=(600, 3))
  assert probe.linear_probe(x[:400], y[:400], x[400:], y[400:])["accuracy"] == 1.0
  noise = rng.normal(size=(600, 3))
  assert probe.linear_probe(noise[:400], y[:400], noise[400:], y[400:])["accuracy"] < 0.5
  with pytest.raises(ValueError, match="same d"):
    probe.linear_probe(x[:10], y[:10], x[:10, :2], y[:10])


def test_embedding_2d_pca_fallback_matches_sklearn(tmp_path):
  from sklearn import decomposition
  rng = np.random.default_rng(1)
  emb = rng.normal(size=(100, 5)) * np.array([5, 3, 1, 0.5, 0.1])
  pts, method = figures.embedding_2d(emb, np.zeros(100), method="pca")
  ref = decomposition.PCA(2).fit_transform(emb)
  assert method == "PCA"
  np.testing.assert_allclose(np.abs(pts), np.abs(ref), rtol=1e-6, atol=1e-8)
  y = rng.integers(0, 3, 100)
  out = figures.save_embeddings({"a": (emb, y)}, str(tmp_path / "e.png"), method="pca",
                                probe={"a": 0.5})
  assert Image.open(out["path"]).format == "PNG" and out["method"] == "PCA"


# ------------------------------------------------------------------ tables


def test_tables_from_metrics(tmp_path):
  models_ = {
      "digits-nf": {"metrics": {
          "test_bits_per_dim": {"value": 2.1, "command": "c"},
          "test_fd_classifier": {"value": 5.0, "s_star": 1.0, "command": "c",
                                 "temperature_star": 1.2, "se": 0.25,
                                 "num_samples": 100, "num_reference": 300}},
          "paper": None},
      "fmnist-nif64": {"metrics": {}, "paper": {"fid": 23.97, "bits_per_dim": 1.506}},
  }
  rows = tables.table_rows(models_)
  assert rows[0]["fd"] == 5.0 and rows[0]["bits_per_dim"] == 2.1
  assert rows[1]["paper_fid"] == 23.97 and rows[1]["fd"] is None
  md, js = tables.write(rows, str(tmp_path))
  text = open(md).read()
  assert "| `digits-nf` | 5.00 ± 0.25 | s = 1, T = 1.2 |" in text
  assert "| `fmnist-nif64` | — | — |" in text and "| 23.97 |" in text
  assert "| `digits-nf` | 2.1000 |" in text
  assert json.load(open(js))[1]["paper_bits_per_dim"] == 1.506


# ------------------------------------------------------------------ progress


def test_progress_writes_one_finished_line_into_a_log(capsys):
  """Not a terminal (pytest captures stderr): no partial lines, one final one."""
  from nifzoo.evaluate import progress  # pylint: disable=g-import-not-at-top
  update = progress.meter("bits/dim", 300)
  for done in (100, 200, 300):
    update(done)
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("\rbits/dim: 300/300 images, ")
  progress.meter("x", 2, enabled=False)(2)
  assert capsys.readouterr().err == ""
