"""The image models: every kind (NF, NIF-k, deep NIF) on tiny configs, checked
against independent oracles (jax.jacfwd, dense float64 Gaussians)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from nifzoo import configs
from nifzoo import data
from nifzoo import flows
from nifzoo import models

import helpers


# One batch size for the samples of every test: a model kind's sample and
# reconstruct programs are compiled once and shared.
N = 6


def rngs(seed):
  # "rbg" keys: on CPU, XLA compiles each eager threefry draw for about a second.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _config(kind):
  c = configs.get_config("digits-nf,tiny" if kind == "normal" else "digits-nif8,tiny")
  if kind == "deepnif":
    c.model.prior = "deepnif"
  return c


@pytest.fixture(scope="module")
def digits_batch():
  c = configs.get_config("digits-nif8")
  src = data.get_source(c.data, "test")
  return jnp.asarray(np.stack([src[i]["image"] for i in range(16)]), jnp.int32)


@pytest.fixture(scope="module", params=["normal", "nif", "deepnif"])
def trained_like(request, digits_batch):
  """A tiny model of each kind, initialised on data and perturbed."""
  config = _config(request.param)
  model = models.build(config, rngs=rngs(0))
  model.initialize(digits_batch)
  helpers.perturb(model, 0.02, seed=1)
  return request.param, model


def test_log_prob_and_bits_per_dim(trained_like, digits_batch):
  kind, model = trained_like
  key = jax.random.key(0)
  lp = model.log_prob(digits_batch, key=key)
  assert lp.shape == (16,) and np.all(np.isfinite(lp))
  bpd = model.bits_per_dim(digits_batch, key=key)
  np.testing.assert_allclose(bpd, -lp / (64 * math.log(2)), rtol=1e-6)
  # A fresh model should sit near the uniform code length log2(17) = 4.09.
  assert 1.0 < float(jnp.mean(bpd)) < 12.0


def test_sample_encode_decode(trained_like):
  kind, model = trained_like
  key = jax.random.key(3)
  # One compilation per noise mode (s traced) instead of one eager run per call.
  sample = jax.jit(lambda s, noise: model.sample(key, N, temperature=0.8,
                                                 noise_scale=s, noise=noise),
                   static_argnums=1)
  for s in (0.0, 1.0):
    for noise in ("learned", "isotropic"):
      x = sample(s, noise)
      assert x.shape == (N, 8, 8, 1) and x.dtype == jnp.int32
      assert int(x.min()) >= 0 and int(x.max()) < 17
  x = model.sample(key, N)
  lp = model.log_prob(x, key=key)  # Samples round-trip through the density.
  assert np.all(np.isfinite(lp))
  k = 64 if kind == "normal" else 8
  if kind == "deepnif":  # (mu(x), eps = f(mu(x))); the posterior is refused.
    code = model.encode(x)
    assert code.mu.shape == code.eps.shape == (N, k)
    np.testing.assert_allclose(model.lowdim.inverse(code.eps), code.mu, atol=1e-4)
    with pytest.raises(ValueError, match="no closed form"):
      model.encode(x, kind="posterior")
  else:
    for kind_ in models.ENCODINGS:
      z = model.encode(x, kind=kind_)
      assert z.shape == (N, k)
  recon = model.reconstruct(x)
  assert recon.shape == x.shape
  floats = model.to_float_images(recon)
  assert floats.dtype == jnp.float32 and 0.0 <= float(floats.min()) <= float(floats.max()) <= 1.0


def test_continuous_output_floors_to_the_levels(trained_like):
  """"continuous" is the flow's sigmoid output before flooring: recomputed here
  in float64 numpy from the Glow inverse, and floor(y L) gives the levels."""
  kind, model = trained_like
  key = jax.random.key(5)
  L = model.num_levels
  ints = model.sample(key, N, noise_scale=1.0)
  y = model.sample(key, N, noise_scale=1.0, output="continuous")
  assert y.dtype == jnp.float32 and y.shape == ints.shape
  assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
  np.testing.assert_array_equal(np.clip(np.floor(np.asarray(y) * L), 0, L - 1), ints)
  z = jax.random.normal(jax.random.key(6), (N, model.latent_dim))
  u = np.asarray(model.glow.inverse(
      model.nif.decode(z).reshape(N, 8, 8, 1) if kind != "normal"
      else z.reshape(N, 8, 8, 1)), np.float64)
  lam = model.preprocess.logit.lam
  expected = np.clip((1 / (1 + np.exp(-u)) - lam) / (1 - 2 * lam), 0, 1)
  np.testing.assert_allclose(model.decode(z, output="continuous"), expected, atol=1e-5)
  rec = model.reconstruct(ints, output="continuous")
  np.testing.assert_array_equal(np.clip(np.floor(np.asarray(rec) * L), 0, L - 1),
                                model.reconstruct(ints))
  # The plotting helper maps a level to its bin centre, which floors back to it.
  centres = np.asarray(model.to_float_images(jnp.arange(L).reshape(1, 1, L, 1)))
  np.testing.assert_allclose(centres.ravel(), (np.arange(L) + 0.5) / L, rtol=1e-6)
  with pytest.raises(ValueError, match="output must be one of"):
    model.sample(key, 2, output="floats")


def test_decode_at_s0_lies_on_the_manifold(trained_like):
  kind, model = trained_like
  if kind == "normal":
    pytest.skip("the NF has no manifold")
  z = jax.random.normal(jax.random.key(4), (N, 8))
  v = model.nif.decode(z, noise_scale=0.0)
  a, b = np.asarray(model.nif.A[...], np.float64), np.asarray(model.nif.b[...], np.float64)
  np.testing.assert_allclose(np.asarray(v), np.asarray(z) @ a.T + b, atol=1e-4)
  mean, _ = model.nif.stochastic_inverse(v)
  np.testing.assert_allclose(mean, z, atol=1e-3)
  residual = np.asarray(v) - np.asarray(mean) @ a.T - b
  assert np.abs(residual).max() < 1e-3
  # The Glow inverse then forward returns the same flow latent (before rounding).
  img = model.glow.inverse(v.reshape(N, 8, 8, 1))
  back, _ = model.glow.forward(img)
  np.testing.assert_allclose(back.reshape(N, 64), v, atol=1e-3)


def test_nif_closed_form_equals_dense_gaussian_prior(digits_batch):
  model = models.build(_config("nif"), rngs=rngs(1))
  model.initialize(digits_batch)
  helpers.perturb(model, 0.05, seed=2)
  lp = model.log_prob(digits_batch, noise_scale=0.7)
  v, log_det = model.flow_latent(digits_batch)
  a = np.asarray(model.nif.A[...], np.float64)
  b = np.asarray(model.nif.b[...], np.float64)
  var = np.exp(np.asarray(model.nif.log_var[...], np.float64)) * 0.7 ** 2
  dense = stats.multivariate_normal(b, a @ a.T + np.diag(var)).logpdf(
      np.asarray(v, np.float64))
  np.testing.assert_allclose(lp, dense + np.asarray(log_det), rtol=2e-5, atol=2e-3)


def test_deep_nif_bound_approaches_dense_marginal(digits_batch):
  """With an identity low-dim flow (fresh: zero-init couplings, ActNorm not yet
  initialised) the deep NIF's prior is N(0, I), so its IW bound must approach the
  dense-Gaussian log p of the NIF-k model from below as N grows."""
  model = models.build(_config("deepnif"), rngs=rngs(2))
  with flows.data_init(model.glow):
    model.glow.forward(model.preprocess.forward(digits_batch)[0])
  params = nnx.state(model.glow, nnx.Param)
  rng = np.random.default_rng(3)
  nnx.update(model.glow, jax.tree.map(
      lambda p: p + jnp.asarray(0.02 * rng.normal(size=p.shape), p.dtype), params))
  model.nif.log_var[...] = jnp.asarray(rng.normal(size=64) * 0.3 - 1.0, jnp.float32)
  x = digits_batch[:4]
  v, log_det = model.flow_latent(x)
  a = np.asarray(model.nif.A[...], np.float64)
  b = np.asarray(model.nif.b[...], np.float64)
  cov = a @ a.T + np.diag(np.exp(np.asarray(model.nif.log_var[...], np.float64)))
  dense = stats.multivariate_normal(b, cov).logpdf(np.asarray(v, np.float64))
  dense = dense + np.asarray(log_det, np.float64)
  # N = 1 in expectation is the ELBO: a strict bound (the KL of q to the posterior).
  elbo_gap = dense - np.asarray(model.nif.elbo(v) + log_det, np.float64)
  assert np.all(elbo_gap > 0.1), elbo_gap
  bound = model.nif.iw_bound(v, jax.random.key(0), 4000,
                             log_prior=model.lowdim.log_prob)
  gap = dense - np.asarray(bound + log_det, np.float64)
  assert np.all(np.abs(gap) < 0.05) and np.all(gap < elbo_gap), (gap, elbo_gap)
  # Small N, averaged over 500 independent draws per image: below log p (the
  # bound is a bound in expectation), and closer at N = 4 than at N = 1.
  reps = 500
  v_rep = jnp.tile(v, (reps, 1))
  def mean_gap(n, seed):
    b = model.nif.iw_bound(v_rep, jax.random.key(seed), n,
                           log_prior=model.lowdim.log_prob)
    return dense - np.asarray(b, np.float64).reshape(reps, 4).mean(0) - np.asarray(
        log_det, np.float64)
  gap1, gap4 = mean_gap(1, 1), mean_gap(4, 2)
  # N = 1 estimates the ELBO (Monte Carlo error ~0.2 nats at 500 draws).
  np.testing.assert_allclose(gap1, elbo_gap, atol=0.3)
  assert np.all(gap4 > 0.02) and np.all(gap4 < gap1), (gap4, gap1)


def test_total_log_det_equals_jacfwd():
  """Dequantised pixels -> logit -> Glow on a 4x4x1 toy, against jax.jacfwd."""
  m = dict(configs.model_defaults(), num_scales=2, steps_per_scale=2, width=8)
  for field in ("prior", "latent_dim", *models.priors.FIELDS):
    m.pop(field, None)
  model = models.ImageFlow((4, 4, 1), 8, prior=models.NIFPrior(3, True, "learned"),
                           **m, rngs=rngs(0))
  x = jax.random.randint(jax.random.key(0), (3, 4, 4, 1), 0, 8)
  model.initialize(x)
  helpers.perturb(model, 0.1, seed=5)
  key = jax.random.key(1)
  v, log_det = model.flow_latent(x, key=key)
  y, _ = model.preprocess.dequantize.forward(x, key=key)

  def f(y1):
    u, _ = model.preprocess.logit.forward(y1[None])
    u, _ = model.glow.forward(u)
    return u.reshape(-1)

  # (3, 16, 4, 4, 1) and f(y), in one compilation.
  jacs, fy = jax.jit(lambda y: (jax.vmap(jax.jacfwd(f))(y), jax.vmap(f)(y)))(y)
  for i, jac in enumerate(np.asarray(jacs, np.float64)):
    _, expected = np.linalg.slogdet(jac.reshape(16, 16))
    expected -= 16 * math.log(8)  # Dequantisation: y = (x + u) / L.
    np.testing.assert_allclose(log_det[i], expected, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(v, fy, atol=1e-5)


def test_initialize_sets_every_actnorm_and_is_idempotent(digits_batch):
  model = models.build(_config("deepnif"), rngs=rngs(0))
  assert not flows.is_initialized(model)
  model.initialize(digits_batch)
  assert flows.is_initialized(model)
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  other = jnp.clip(digits_batch[::-1] + 3, 0, 16)  # Different statistics.
  model.initialize(other, key=jax.random.key(1))
  after = nnx.state(model, nnx.Param)
  for p, q in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(p, q)


def test_bad_input_is_named(digits_batch):
  model = models.build(_config("nif"), rngs=rngs(0))
  with pytest.raises(ValueError, match=r"shape \(B, 8, 8, 1\)"):
    model.log_prob(jnp.zeros((2, 28, 28, 1), jnp.int32))
  with pytest.raises(TypeError, match="integer"):
    model.log_prob(jnp.zeros((2, 8, 8, 1), jnp.float32))
  with pytest.raises(ValueError, match=r"\[0, 17\).*\[20, 20\]"):
    model.log_prob(jnp.full((2, 8, 8, 1), 20, jnp.int32))
  with pytest.raises(ValueError, match="noise_scale"):
    model.log_prob(digits_batch, noise_scale=-1.0)
  with pytest.raises(ValueError, match="noise_scale must be > 0"):
    model.log_prob(digits_batch, noise_scale=0.0)
  with pytest.raises(ValueError, match="kind"):
    model.encode(digits_batch, kind="mean")
  with pytest.raises(ValueError, match="z must have shape"):
    model.decode(jnp.zeros((2, 5)))
  c = _config("nif")
  c.model.prior = "gmm"
  with pytest.raises(ValueError, match="prior must be one of"):
    models.build(c, rngs=rngs(0))


def _add_model_field(monkeypatch, value):
  """Adds ``model.new_field`` (default 0) as a new field would be added: a
  default in configs.model_defaults, an ImageFlow argument; the recipe sets
  ``value``."""
  defaults, base, init = configs.model_defaults, configs.base_config, models.ImageFlow.__init__

  def with_field():
    m = defaults()
    m.new_field = 0
    return m

  def base_with_value(*args):
    c = base(*args)
    c.model.new_field = value
    return c

  def init_with_field(self, *args, new_field, **kwargs):
    init(self, *args, **kwargs)
    self.new_field = new_field

  monkeypatch.setattr(configs, "model_defaults", with_field)
  monkeypatch.setattr(configs, "base_config", base_with_value)
  monkeypatch.setattr(models.ImageFlow, "__init__", init_with_field)


def test_a_new_model_field_at_its_default_loads_shipped_checkpoints(monkeypatch):
  from nifzoo import zoo
  x = jnp.asarray(np.random.default_rng(0).integers(0, 17, (2, 8, 8, 1)), jnp.int32)
  before = zoo.load("digits-nif16").log_prob(x)
  _add_model_field(monkeypatch, 0)
  assert models.wiring(configs.get_config("digits-nif16"))["model.new_field"] == 0
  model = zoo.load("digits-nif16")
  assert model.new_field == 0
  np.testing.assert_array_equal(model.log_prob(x), before)


def test_a_new_model_field_off_its_default_is_refused(monkeypatch):
  from nifzoo import zoo
  _add_model_field(monkeypatch, 1)
  with pytest.raises(zoo.ZooError, match=r"model.new_field: checkpoint None, code 1"):
    zoo.load("digits-nif16")
