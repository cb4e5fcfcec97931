"""NF -> NIF conversion: the PPCA / factor-analysis fits against known models and
scipy, and the converted image model against the NF it came from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nifzoo import configs
from nifzoo import convert
from nifzoo import data
from nifzoo import nif

import helpers


def _ppca_samples(n=40_000, dim=12, k=3, sigma2=0.3, seed=0):
  rng = np.random.default_rng(seed)
  A = rng.normal(size=(dim, k)) * np.array([3.0, 2.0, 1.5])
  b = rng.normal(size=dim)
  v = rng.normal(size=(n, k)) @ A.T + b + np.sqrt(sigma2) * rng.normal(size=(n, dim))
  return v, A, b, sigma2


def _batches(v, size=1000):
  return lambda: (v[i:i + size] for i in range(0, len(v), size))


def test_ppca_recovers_a_known_model_and_matches_scipy():
  from scipy import stats  # pylint: disable=g-import-not-at-top  (slow to import)
  v, A, b, sigma2 = _ppca_samples()
  m = convert.moments(_batches(v)())
  np.testing.assert_allclose(m.mean, v.mean(0), atol=1e-10)
  np.testing.assert_allclose(m.cov, np.cov(v.T, bias=True), atol=1e-9)
  fit = convert.fit_ppca(m, 3)
  # Sampling error with n = 40,000: a few per cent of the entries' scale.
  np.testing.assert_allclose(fit.A @ fit.A.T, A @ A.T, atol=0.35)
  np.testing.assert_allclose(fit.b, b, atol=0.05)
  np.testing.assert_allclose(np.exp(fit.log_var), sigma2, rtol=0.03)
  # The fitted log-likelihood equals scipy's with the fitted covariance (float64).
  cov = fit.A @ fit.A.T + np.diag(np.exp(fit.log_var))
  want = stats.multivariate_normal(fit.b, cov).logpdf(v).mean()
  assert convert.gaussian_log_likelihood(fit, m) == pytest.approx(want, rel=1e-10)
  # ... and the GaussianNIF layer loaded with the fit gives the same numbers.
  layer = nif.GaussianNIF(12, 3, rngs=nnx.Rngs(0))
  layer.A[...], layer.b[...] = jnp.asarray(fit.A, jnp.float32), jnp.asarray(fit.b, jnp.float32)
  layer.log_var[...] = jnp.asarray(fit.log_var, jnp.float32)
  np.testing.assert_allclose(layer.log_prob(jnp.asarray(v[:64], jnp.float32)),
                             stats.multivariate_normal(fit.b, cov).logpdf(v[:64]),
                             rtol=1e-4)
  # Maximum likelihood: no worse than the true parameters or N(0, I).
  true = convert.PriorFit(A, b, np.full(12, np.log(sigma2)), "true")
  nf = convert.PriorFit(np.zeros((12, 1)), np.zeros(12), np.zeros(12), "nf")
  ll = convert.gaussian_log_likelihood(fit, m)
  assert ll >= convert.gaussian_log_likelihood(true, m) - 1e-9
  assert ll > convert.gaussian_log_likelihood(nf, m)


def test_randomized_fit_matches_eigh_without_a_dense_covariance():
  rng = np.random.default_rng(1)
  dim, k = 200, 5
  A = rng.normal(size=(dim, k)) * np.linspace(4, 2, k)
  v = rng.normal(size=(5000, k)) @ A.T + 0.5 * rng.normal(size=(5000, dim))
  full = convert.moments(_batches(v)())
  light = convert.moments(_batches(v)(), full=False)
  assert light.cov is None and light.trace == pytest.approx(np.trace(full.cov), rel=1e-10)
  exact = convert.fit_ppca(full, k)
  approx = convert.fit_ppca_randomized(_batches(v), light, k)
  assert approx.method == "randomized"
  np.testing.assert_allclose(approx.A @ approx.A.T, exact.A @ exact.A.T,
                             atol=1e-6 * np.abs(exact.A).max() ** 2 * dim)
  np.testing.assert_allclose(approx.log_var, exact.log_var, atol=1e-8)


def test_factor_analysis_recovers_a_diagonal_noise_and_beats_ppca():
  from scipy import stats  # pylint: disable=g-import-not-at-top  (slow to import)
  rng = np.random.default_rng(2)
  dim, k, n = 10, 2, 40_000
  A = rng.normal(size=(dim, k)) * 2
  psi = np.linspace(0.1, 1.5, dim)
  v = rng.normal(size=(n, k)) @ A.T + rng.normal(size=(n, dim)) * np.sqrt(psi)
  m = convert.moments(_batches(v)())
  ppca = convert.fit_ppca(m, k)
  fa = convert.fit_factor_analysis(m, k, num_iters=300, init=ppca)
  np.testing.assert_allclose(np.exp(fa.log_var), psi, rtol=0.1, atol=0.03)
  np.testing.assert_allclose(fa.A @ fa.A.T, A @ A.T, atol=0.3)
  cov = fa.A @ fa.A.T + np.diag(np.exp(fa.log_var))
  assert convert.gaussian_log_likelihood(fa, m) == pytest.approx(
      stats.multivariate_normal(fa.b, cov).logpdf(v).mean(), rel=1e-10)
  assert convert.gaussian_log_likelihood(fa, m) > convert.gaussian_log_likelihood(ppca, m)


@pytest.fixture(scope="module")
def tiny_nf():
  return helpers.tiny_nf()


@pytest.mark.slow
def test_nf_to_nif_shares_the_glow_and_raises_the_training_likelihood(tiny_nf):
  key = jax.random.key(3)
  nif_model, report = convert.nf_to_nif(tiny_nf, 8, key=key, batch_size=256,
                                        max_images=512)
  assert nif_model.prior.name == "nif" and nif_model.latent_dim == 8
  assert nif_model.config.name == "digits-nif8-from-nf"
  assert report["num_latents"] == 512 and report["method"] == "eigh"
  assert report["train_log_prior_nif"] > report["train_log_prior_nf"]
  c = tiny_nf.config
  src = data.get_source(c.data, "train")
  images = np.stack([src[i]["image"] for i in range(256)]).astype(np.int32)
  # Same flow: identical latents and log-dets for the same dequantisation.
  v0, ld0 = tiny_nf.flow_latent(images, key=key)
  v1, ld1 = nif_model.flow_latent(images, key=key)
  np.testing.assert_array_equal(np.asarray(v0), np.asarray(v1))
  np.testing.assert_array_equal(np.asarray(ld0), np.asarray(ld1))
  # On the very latents it was fitted to (the first batch, same key), the
  # mean log p(x) is higher than the NF's by the prior's gain.
  k0 = jax.random.fold_in(key, 0)
  nf_lp = float(jnp.mean(tiny_nf.log_prob(images, key=k0)))
  nif_lp = float(jnp.mean(nif_model.log_prob(images, key=k0)))
  assert nif_lp > nf_lp
  x = nif_model.sample(jax.random.key(0), 4, noise_scale=0.0)
  assert x.shape == (4, 8, 8, 1)


def test_nf_to_nif_refuses_bad_input(tiny_nf):
  with pytest.raises(ValueError, match="latent_dim must be < D = 64"):
    convert.nf_to_nif(tiny_nf, 64)
  with pytest.raises(ValueError, match="noise must be one of"):
    convert.nf_to_nif(tiny_nf, 4, noise="full")
  with pytest.raises(ValueError, match="needs the full covariance"):
    convert.nf_to_nif(tiny_nf, 4, noise="diagonal", method="randomized")


@pytest.mark.slow
def test_converted_workdir_loads_and_fine_tunes_from_init_from(tiny_nf, tmp_path):
  """launch/convert.py's layout: zoo.load reads it; a run with init_from and
  learning rate 0 keeps exactly the converted variables (Adam's update is 0)."""
  from nifzoo import zoo
  from nifzoo.train import loop
  nif_model, _ = convert.nf_to_nif(tiny_nf, 4, max_images=256)
  out = tmp_path / "conv"
  convert.save_workdir(nif_model, {"method": "ppca"}, str(out))
  loaded = zoo.load(str(out))
  np.testing.assert_array_equal(np.asarray(loaded.nif.A[...]),
                                np.asarray(nif_model.nif.A[...]))
  c = configs.get_config("digits-nif4,tiny")
  c.init_from, c.learning_rate = str(out), 0.0
  c.total_steps, c.checkpoint_every, c.sample_every, c.log_every = 2, 2, 100, 2
  loop.train_and_evaluate(c, str(tmp_path / "ft"))
  tuned = zoo.load(str(tmp_path / "ft"))
  for a, b in zip(jax.tree.leaves(nnx.state(tuned, nnx.Param)),
                  jax.tree.leaves(nnx.state(nif_model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c8 = configs.get_config("digits-nif8,tiny")
  c8.init_from = str(out)
  with pytest.raises(ValueError, match="model.latent_dim: checkpoint 4, code 8"):
    loop.train_and_evaluate(c8, str(tmp_path / "bad"))
