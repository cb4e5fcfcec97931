"""Reliability of the model API (issue 12): bad values are refused eagerly with
a clear error, tiny noise scales stay exact, a constant init batch or a model
used before ``initialize`` no longer gives silent NaNs or identity ActNorms, and
``checks.checked`` (checkify) raises for the value errors a plain jit cannot."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from nifzoo import checks
from nifzoo import configs
from nifzoo import data
from nifzoo import flows
from nifzoo import models
from nifzoo.nif import GaussianNIF

L = 17  # digits' grey levels


@pytest.fixture(scope="module")
def digits():
  src = data.get_source(configs.get_config("digits-nif8").data, "test")
  return jnp.asarray(np.stack([src[i]["image"] for i in range(8)]), jnp.int32)


def _log_prob(m, x):
  return m.log_prob(x)


def _build(seed=0):
  return models.build(configs.get_config("digits-nif8,tiny"),
                      rngs=models.seeded_rngs(seed))


@pytest.fixture(scope="module")
def model(digits):
  m = _build()
  m.initialize(digits)
  return m


@pytest.fixture(scope="module")
def fresh():
  """A model whose ActNorms were never initialised."""
  return _build()


# ------------------------------------------------------------------ eager checks


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_refuses_non_finite_latents(model, bad):
  z = np.zeros((3, model.latent_dim), np.float32)
  z[1, 2] = z[2, 0] = bad
  with pytest.raises(ValueError, match=r"z must be finite, got 2 NaN or inf entries"):
    model.decode(jnp.asarray(z))


def test_string_noise_scale_and_temperature_are_type_errors(model, digits):
  with pytest.raises(TypeError, match=r"noise_scale must be a real number, got str"):
    model.log_prob(digits, noise_scale="1")
  with pytest.raises(TypeError, match=r"noise_scale must be a real number, got str"):
    model.decode(jnp.zeros((1, model.latent_dim)), noise_scale="0")
  with pytest.raises(TypeError, match=r"temperature must be a real number, got str"):
    model.sample(jax.random.key(0), 2, temperature="1")
  with pytest.raises(TypeError, match=r"noise_scale must be a real number, got NoneType"):
    model.log_prob(digits, noise_scale=None)


def test_empty_batch_is_named(model):
  empty = jnp.zeros((0, 8, 8, 1), jnp.int32)
  msg = r"must hold at least one image, got shape \(0, 8, 8, 1\)"
  for call in (model.log_prob, model.encode, model.bits_per_dim):
    with pytest.raises(ValueError, match="x " + msg):
      call(empty)
  with pytest.raises(ValueError, match="batch " + msg):
    _build().initialize(empty)


# ------------------------------------------------------------------ tiny s


def _oracle_log_prob(A, b, lv, x, s):
  """log N(x; b, AAᵀ + s²Σ) in float64 by the Σ⁻¹-orthogonal split r = Aμ + e:
  rᵀC⁻¹r = eᵀΣ⁻¹e/s² + μᵀ(I + s²G⁻¹)⁻¹μ, log|C| = (D−k) log s² + Σℓ + log|G + s²I|
  (exact for any s > 0; no D×D matrix near singularity)."""
  D, k = A.shape
  prec = np.exp(-lv)
  G = A.T @ (prec[:, None] * A)
  r = x - b
  mu = np.linalg.solve(G, ((r * prec) @ A).T).T
  e = r - mu @ A.T
  M = np.eye(k) + s**2 * np.linalg.inv(G)
  quad = (prec * e * e).sum(-1) / s**2 + np.einsum("bi,ij,bj->b", mu, np.linalg.inv(M), mu)
  logdet = (D - k) * math.log(s**2) + lv.sum() + np.linalg.slogdet(G + s**2 * np.eye(k))[1]
  return -0.5 * (quad + logdet + D * math.log(2 * math.pi))


@pytest.fixture(scope="module")
def small_nif():
  rng = np.random.default_rng(0)
  layer = GaussianNIF(4, 2, rngs=nnx.Rngs(0))
  layer.A[...] = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  layer.b[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
  layer.log_var[...] = jnp.asarray(rng.uniform(-1, 1, 4), jnp.float32)
  A, b, lv = (np.asarray(v[...], np.float64) for v in (layer.A, layer.b, layer.log_var))
  z = rng.normal(size=(3, 2))
  x = (z @ A.T + b + 0.1 * rng.normal(size=(3, 4))).astype(np.float32)
  return layer, (A, b, lv), x


def test_oracle_is_the_dense_gaussian(small_nif):
  _, (A, b, lv), x = small_nif
  s = 0.7
  dense = stats.multivariate_normal(b, A @ A.T + s**2 * np.diag(np.exp(lv)))
  np.testing.assert_allclose(_oracle_log_prob(A, b, lv, x.astype(np.float64), s),
                             dense.logpdf(x.astype(np.float64)), rtol=1e-10)


@pytest.mark.parametrize("s", [1e-10, 1e-15, 1e-19])
def test_log_prob_at_tiny_noise_scale_matches_float64(small_nif, s):
  layer, params, x = small_nif
  want = _oracle_log_prob(*params, x.astype(np.float64), s)
  assert np.all(np.abs(want) < 3e38)  # representable in float32
  got = np.asarray(layer.log_prob(jnp.asarray(x), noise_scale=s))
  np.testing.assert_allclose(got, want, rtol=1e-4)  # float32 residuals


def test_log_prob_below_float32_range_is_minus_inf_not_nan(small_nif, model, digits):
  layer, params, x = small_nif
  assert np.all(_oracle_log_prob(*params, x.astype(np.float64), 1e-38) < -3.5e38)
  assert np.all(np.asarray(layer.log_prob(jnp.asarray(x), noise_scale=1e-38)) == -np.inf)
  lp = np.asarray(model.log_prob(digits[:2], noise_scale=1e-38))
  assert not np.any(np.isnan(lp)), lp


# ------------------------------------------------------------------ initialisation


def test_initialize_on_a_constant_batch_keeps_densities_finite(digits):
  m = _build()
  m.initialize(jnp.full((8, 8, 8, 1), 3, jnp.int32))
  params = jax.tree.leaves(nnx.state(m, nnx.Param))
  assert all(np.all(np.isfinite(np.asarray(p))) for p in params)
  lp = np.asarray(jax.jit(_log_prob)(m, digits))
  assert np.all(np.isfinite(lp)), lp


def test_use_before_initialize_warns_once_per_call(fresh, digits):
  z = jnp.zeros((2, fresh.latent_dim))
  calls = {"log_prob": lambda: fresh.log_prob(digits),
           "encode": lambda: fresh.encode(digits),
           "decode": lambda: fresh.decode(z),
           "sample": lambda: fresh.sample(jax.random.key(0), 2, noise_scale=0.0),
           "reconstruct": lambda: fresh.reconstruct(digits)}
  for name, call in calls.items():
    with pytest.warns(UserWarning, match=r"ActNorms are not initialised.*"
                      r"model\.initialize\(batch\)") as record:
      call()
    assert len(record) == 1 and f"ImageFlow.{name}" in str(record[0].message)


def test_initialised_and_traced_calls_do_not_warn(model, fresh, digits):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    model.log_prob(digits)  # Initialised.
    jax.jit(_log_prob)(fresh, digits)  # Traced: never warns.


# ------------------------------------------------------------------ under jit


def test_plain_jit_cannot_check_values_and_returns_wrong_numbers(model, digits):
  # What the README documents: out-of-range images are not refused under jit.
  lp = jax.jit(_log_prob)(model, jnp.full_like(digits, L))
  assert lp.shape == (8,)  # It ran; its values are meaningless.
  with pytest.raises(ValueError, match="z must be finite"):
    model.decode(jnp.full((1, model.latent_dim), jnp.nan))  # Eagerly refused...
  x = nnx.jit(lambda m, z: m.decode(z))(model, jnp.full((1, model.latent_dim), jnp.nan))
  assert x.shape == (1, 8, 8, 1)  # ... but not under jit.


def test_checked_raises_for_out_of_range_images(model, digits):
  bad = jnp.full_like(digits, L)
  jax.jit(_log_prob)(model, bad)  # A plain jit of the same function, traced first.
  log_prob = checks.checked(_log_prob)
  np.testing.assert_allclose(log_prob(model, digits), model.log_prob(digits),
                             rtol=1e-5)
  with pytest.raises(ValueError, match=r"x values must lie in \[0, 17\).*\[17, 17\]"):
    log_prob(model, bad)
  jax.jit(_log_prob)(model, bad)  # And still runs after the checked trace.


def test_checked_raises_for_non_finite_latents(model):
  decode = checks.checked(lambda m, z: m.decode(z))
  z = jnp.zeros((2, model.latent_dim)).at[0, 1].set(jnp.inf)
  with pytest.raises(ValueError, match=r"z must be finite, got 1 NaN or inf entries"):
    decode(model, z)


def test_checked_initialize_refuses_out_of_range_data(digits):
  m = _build()
  graphdef, state = nnx.split(m)

  def init(state, x):  # As loop.initialize_actnorms: state in, state out.
    model = nnx.merge(graphdef, state)
    model.initialize(x)
    return nnx.state(model)

  with pytest.raises(ValueError, match=r"batch values must lie in \[0, 17\)"):
    checks.checked(init)(state, digits + 1)
  nnx.update(m, checks.checked(init)(state, digits))
  assert flows.is_initialized(m)
  params = jax.tree.leaves(nnx.state(m, nnx.Param))
  assert all(np.all(np.isfinite(np.asarray(p))) for p in params)
