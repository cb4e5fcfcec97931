"""GaussianNIF against float64 numpy/scipy brute force (docs/math.md §1, §2).

Every oracle below is dense and independent of the library's formulas: the marginal
from scipy's multivariate normal with covariance AAᵀ + s²Σ, posteriors by Gaussian
conditioning of the joint (z, x), log h as the flat-prior limit of a dense Gaussian or
by quadrature over z, and the ELBO gap as a dense Gaussian KL.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import integrate, stats

from nifzoo.nif import GaussianNIF
from nifzoo.nif import linalg

import helpers

CONFIGS = [(5, 2), (4, 1), (7, 3)]
SCALES = [0.3, 1.0, 2.0]
TOL = dict(rtol=2e-4, atol=2e-3)


# --------------------------------------------------------------------------
# Dense float64 oracles.
# --------------------------------------------------------------------------


def oracle_log_prob(A, b, lv, x, s):
  cov = A @ A.T + s**2 * np.diag(np.exp(lv))
  return stats.multivariate_normal(b, cov).logpdf(x)


def oracle_log_h(A, b, lv, x, s, tau=1e3):
  """h(x) = ∫N(x; Az+b, s²Σ)dz = lim (2πτ²)^{k/2} N(x; b, τ²AAᵀ + s²Σ)."""
  k = A.shape[1]
  cov = tau**2 * A @ A.T + s**2 * np.diag(np.exp(lv))
  return (stats.multivariate_normal(b, cov).logpdf(x)
          + 0.5 * k * np.log(2 * np.pi * tau**2))


def oracle_stochastic_inverse(A, b, lv, x, s):
  P = np.diag(np.exp(-lv)) / s**2
  C = np.linalg.inv(A.T @ P @ A)
  return (x - b) @ (C @ A.T @ P).T, C


def oracle_posterior(A, b, lv, x, s):
  """z|x for the joint z ~ N(0, I), x = Az + b + N(0, s²Σ)."""
  S = A @ A.T + s**2 * np.diag(np.exp(lv))
  K = A.T @ np.linalg.inv(S)
  return (x - b) @ K.T, np.eye(A.shape[1]) - K @ A


def diag_normal_logpdf(x, mean, var):
  return -0.5 * np.sum((x - mean)**2 / var + np.log(2 * np.pi * var), axis=-1)


def gauss_kl(m0, C0, m1, C1):
  k = C0.shape[0]
  C1i = np.linalg.inv(C1)
  d = m1 - m0
  return 0.5 * (np.trace(C1i @ C0) + np.einsum("bi,ij,bj->b", d, C1i, d) - k
                + np.linalg.slogdet(C1)[1] - np.linalg.slogdet(C0)[1])


# --------------------------------------------------------------------------
# Fixtures.
# --------------------------------------------------------------------------


def make_layer(D, k, seed=0):
  """A layer with random A, b, log_var, and its parameters in float64."""
  rng = np.random.default_rng(seed)
  layer = GaussianNIF(D, k, rngs=nnx.Rngs(seed))
  layer.A[...] = jnp.asarray(rng.normal(size=(D, k)), jnp.float32)
  layer.b[...] = jnp.asarray(rng.normal(size=D), jnp.float32)
  layer.log_var[...] = jnp.asarray(rng.uniform(-1, 1, D), jnp.float32)
  params = tuple(np.asarray(v[...], np.float64)
                 for v in (layer.A, layer.b, layer.log_var))
  return layer, params


def make_x(params, n=4, seed=1):
  """Points from the model (s = 1), plus one far off the manifold."""
  A, b, lv = params
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n - 1, A.shape[1]))
  x = z @ A.T + b + np.exp(0.5 * lv) * rng.normal(size=(n - 1, A.shape[0]))
  x = np.concatenate([x, b + 3.0 * rng.normal(size=(1, A.shape[0]))])
  return x.astype(np.float32)


@functools.cache  # Built when first used, not while every worker collects.
def _case_layer(D, k):
  return make_layer(D, k, seed=D + k)


log_prob = nnx.jit(lambda layer, x, s: layer.log_prob(x, noise_scale=s))


@functools.partial(nnx.jit, static_argnames=("n", "log_prior"))
def iw(layer, x, key, n, s=1.0, log_prior=None):
  return layer.iw_bound(x, key, n, log_prior, noise_scale=s)


def case(D, k, s=1.0):
  layer, params = _case_layer(D, k)
  x = make_x(params)
  return layer, params, x, x.astype(np.float64), helpers.quantities(layer, x, s)


grid = pytest.mark.parametrize("D,k", CONFIGS)
scales = pytest.mark.parametrize("s", SCALES)


# --------------------------------------------------------------------------
# Closed-form quantities vs dense brute force.
# --------------------------------------------------------------------------


@grid
@scales
def test_log_prob_matches_dense(D, k, s):
  layer, p, x, x64, got = case(D, k, s)
  assert got["log_prob"].shape == (4,) and got["log_prob"].dtype == jnp.float32
  np.testing.assert_allclose(got["log_prob"], oracle_log_prob(*p, x64, s), **TOL)


@grid
@scales
def test_log_normalizer_matches_flat_prior_limit(D, k, s):
  layer, p, x, x64, got = case(D, k, s)
  np.testing.assert_allclose(got["log_h"], oracle_log_h(*p, x64, s), **TOL)


@grid
@scales
def test_stochastic_inverse_and_posterior_match_dense(D, k, s):
  layer, p, x, x64, got = case(D, k, s)
  for name, oracle in [("q", oracle_stochastic_inverse), ("post", oracle_posterior)]:
    mean, cov = got[name]
    want_mean, want_cov = oracle(*p, x64, s)
    assert mean.shape == (4, k) and cov.shape == (k, k)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-4, atol=1e-5)


@grid
@scales
def test_elbo_gap_is_kl_to_posterior(D, k, s):
  layer, p, x, x64, got = case(D, k, s)
  q_mean, q_cov = oracle_stochastic_inverse(*p, x64, s)
  post_mean, post_cov = oracle_posterior(*p, x64, s)
  kl = gauss_kl(q_mean, q_cov, post_mean, post_cov)
  assert np.all(kl > 0)
  np.testing.assert_allclose(got["elbo"], oracle_log_prob(*p, x64, s) - kl, **TOL)


def test_eager_matches_jit():
  layer, p, x, x64, got = case(5, 2, 0.3)
  np.testing.assert_allclose(layer.log_prob(x, 0.3), got["log_prob"], rtol=1e-5)


@scales
def test_log_h_by_quadrature_k1(s):
  layer, (A, b, lv), x, x64, got = case(4, 1, s)
  var = s**2 * np.exp(lv)
  for xi, got in zip(x64, np.asarray(got["log_h"])):
    logf = lambda z: diag_normal_logpdf(xi, A[:, 0] * z + b, var)
    m = -np.sum(A[:, 0] * (b - xi) / var) / np.sum(A[:, 0]**2 / var)
    width = 1.0 / np.sqrt(np.sum(A[:, 0]**2 / var))
    ref = logf(m)
    val, _ = integrate.quad(lambda z: np.exp(logf(z) - ref), m - 15 * width,
                            m + 15 * width, epsabs=0, epsrel=1e-10, points=[m])
    np.testing.assert_allclose(got, ref + np.log(val), rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("s", [0.5, 1.0])
def test_density_integrates_to_one_d2_k1(s):
  layer, (A, b, lv) = make_layer(2, 1, seed=3)
  sd = np.sqrt(np.diag(A @ A.T + s**2 * np.diag(np.exp(lv))))
  n = 401
  g0 = np.linspace(b[0] - 9 * sd[0], b[0] + 9 * sd[0], n)
  g1 = np.linspace(b[1] - 9 * sd[1], b[1] + 9 * sd[1], n)
  X = np.stack(np.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
  dens = np.exp(np.asarray(log_prob(layer, X.astype(np.float32), s), np.float64))
  total = integrate.trapezoid(integrate.trapezoid(dens.reshape(n, n), g1), g0)
  assert abs(total - 1.0) < 2e-3


# --------------------------------------------------------------------------
# Importance-weighted bound.
# --------------------------------------------------------------------------


def test_iw_bound_increases_to_log_prob():
  layer, p, x, x64, got = case(4, 1, 2.0)
  s, R = 2.0, 2000                   # s = 2: q (flat prior) is far from the posterior
  log_p = oracle_log_prob(*p, x64, s)
  elbo = np.asarray(got["elbo"])
  est = {}
  for n, reps, key in [(1, R, 0), (10, R, 1), (1000, 20, 2)]:
    e = iw(layer, np.repeat(x, reps, axis=0), jax.random.key(key), n, s)
    est[n] = np.asarray(e).reshape(len(x), reps)
  mean = {n: e.mean(1) for n, e in est.items()}
  stderr = {n: e.std(1) / np.sqrt(e.shape[1]) for n, e in est.items()}
  assert np.all(log_p - elbo > 0.3)                    # a real gap to close
  # N = 1 is a one-sample ELBO.
  assert np.all(np.abs(mean[1] - elbo) < 5 * stderr[1])
  assert np.all(mean[1] < mean[10]) and np.all(mean[10] < mean[1000])
  assert np.all(mean[1000] <= log_p + 5 * stderr[1000] + 1e-3)
  np.testing.assert_allclose(mean[1000], log_p, atol=0.01)


def test_iw_bound_non_gaussian_prior_k1():
  """Laplace prior: exact log p(x) = log ∫ N(x; az+b, Σ) Laplace(z) dz by quadrature."""
  layer, (A, b, lv), x, x64, _ = case(4, 1)
  seen = []

  def log_laplace(z):
    seen.append(z.shape)
    return jnp.sum(-jnp.abs(z) - math.log(2.0), axis=-1)

  exact = []
  for xi in x64:
    f = lambda z: np.exp(diag_normal_logpdf(xi, A[:, 0] * z + b, np.exp(lv))
                         - abs(z) - np.log(2) + 30.0)
    val, _ = integrate.quad(f, -40, 40, points=[0.0], limit=200, epsrel=1e-10)
    exact.append(np.log(val) - 30.0)
  exact = np.array(exact)
  est = iw(layer, np.repeat(x, 8, 0), jax.random.key(0), 2000,
           log_prior=log_laplace)
  est = np.asarray(est).reshape(4, 8).mean(1)
  assert seen[0] == (2000 * 32, 1)   # log_prior maps (M, k) -> (M,), one call
  one = np.asarray(iw(layer, np.repeat(x, 200, 0), jax.random.key(1), 1,
                      log_prior=log_laplace)).reshape(4, 200).mean(1)
  assert np.all(est <= exact + 0.01) and np.all(one < est)
  np.testing.assert_allclose(est, exact, atol=0.02)


# --------------------------------------------------------------------------
# Sampling, decoding, the manifold.
# --------------------------------------------------------------------------


def test_decode_at_zero_noise_is_on_manifold():
  layer, (A, b, lv), *_ = case(5, 2)
  z = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
  want = z.astype(np.float64) @ A.T + b
  x0 = layer.decode(z)
  assert x0.shape == (6, 5)
  np.testing.assert_allclose(x0, want, rtol=1e-6, atol=1e-5)
  key = jax.random.key(3)
  np.testing.assert_array_equal(layer.decode(z, key, 0.0), x0)
  np.testing.assert_array_equal(layer.decode(z, key, 0.0, noise="isotropic"), x0)
  assert not np.allclose(layer.decode(z, key, 0.5), x0)
  xs = np.asarray(layer.sample(key, 6, noise_scale=0.0), np.float64)
  coef, *_ = np.linalg.lstsq(A, (xs - b).T, rcond=None)
  np.testing.assert_allclose(A @ coef, (xs - b).T, atol=1e-4)


@pytest.mark.parametrize("noise", ["learned", "isotropic"])
def test_sample_statistics(noise):
  layer, (A, b, lv), *_ = case(4, 1)
  T, s, n = 0.7, 0.8, 200_000
  xs = np.asarray(layer.sample(jax.random.key(7), n, temperature=T,
                               noise_scale=s, noise=noise), np.float64)
  assert xs.shape == (n, 4)
  noise_cov = np.diag(np.exp(lv)) if noise == "learned" else np.eye(4)
  want = T**2 * A @ A.T + s**2 * noise_cov
  np.testing.assert_allclose(xs.mean(0), b, atol=0.02)
  np.testing.assert_allclose(np.cov(xs.T), want, atol=0.03 * np.abs(want).max())


def test_manifold_log_prob():
  layer, (A, b, lv), *_ = case(5, 2)
  z = np.random.default_rng(2).normal(size=(3, 2))
  x = (z @ A.T + b).astype(np.float32)
  want = (stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(z)
          - 0.5 * np.linalg.slogdet(A.T @ A)[1])
  np.testing.assert_allclose(layer.manifold_log_prob(x), want, rtol=1e-4, atol=1e-3)


def test_init():
  layer = GaussianNIF(6, 2, rngs=nnx.Rngs(0))
  assert isinstance(layer.A, nnx.Param) and layer.A.shape == (6, 2)
  assert layer.A[...].dtype == jnp.float32
  assert 0.1 < np.std(layer.A[...]) < 2.0  # Glorot normal: var = 2 / (6 + 2)
  np.testing.assert_array_equal(layer.b[...], np.zeros(6))
  np.testing.assert_array_equal(layer.log_var[...], np.zeros(6))


# --------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------


def test_bad_input():
  layer, _, x, *_ = case(5, 2)
  with pytest.raises(ValueError, match="latent_dim must be < dim"):
    GaussianNIF(3, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
    GaussianNIF(3, 0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"x must have shape \(B, 5\)"):
    layer.log_prob(x[0])
  with pytest.raises(ValueError, match=r"x must have shape \(B, 5\)"):
    layer.elbo(x[:, :4])
  with pytest.raises(TypeError, match="x must be a floating-point array"):
    layer.log_prob(np.ones((2, 5), np.int32))
  with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
    layer.log_prob(x, noise_scale=-1.0)
  with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
    layer.decode(np.ones((2, 2), np.float32), jax.random.key(0), -0.5)
  with pytest.raises(ValueError, match="noise_scale must be > 0 for densities"):
    layer.log_normalizer(x, noise_scale=0.0)
  with pytest.raises(ValueError, match=r"noise must be one of \('learned', "):
    layer.sample(jax.random.key(0), 3, noise="gaussian")
  with pytest.raises(ValueError, match=r"noise must be one of"):
    layer.decode(np.ones((2, 2), np.float32), noise="iso")
  with pytest.raises(ValueError, match=r"z must have shape \(B, 2\)"):
    layer.decode(np.ones((2, 3), np.float32))
  with pytest.raises(ValueError, match="num_samples must be a positive integer"):
    layer.iw_bound(x, jax.random.key(0), 0)
  with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
    layer.sample(jax.random.key(0), 3, temperature=-1.0)


def test_noise_needs_a_key_and_traced_s0_is_not_nan():
  layer = GaussianNIF(4, 2, rngs=nnx.Rngs(0))
  z = jnp.ones((3, 2))
  with pytest.raises(ValueError, match="needs a `key`"):
    layer.decode(z, noise_scale=0.5)
  np.testing.assert_array_equal(layer.decode(z, noise_scale=0.0),
                                layer.decode(z, key=jax.random.key(0), noise_scale=0.0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
  # A jitted sweep over s that includes 0: -inf there (x is off the manifold), no NaN.
  sweep = jax.jit(jax.vmap(lambda s: layer.log_prob(x, noise_scale=s)))
  out = np.asarray(sweep(jnp.array([0.0, 0.5, 1.0])))
  assert np.all(out[0] == -np.inf) and np.all(np.isfinite(out[1:]))
  np.testing.assert_allclose(out[2], layer.log_prob(x), rtol=1e-6)


@pytest.mark.parametrize("D,k", [(7, 3), (6, 1)])
def test_log_prob_gradient_matches_dense(D, k):
  """d log p / d(A, log σ²) against the dense float64 formula: with C = AAᵀ + s²Σ,
  r = x − b and M = C⁻¹rrᵀC⁻¹ − C⁻¹ (summed over the batch), ∂/∂A = M A and
  ∂/∂ℓᵢ = ½ s² σᵢ² Mᵢᵢ. Guards the one-GEMM derivative of G (linalg.gram_matrix)."""
  rng = np.random.default_rng(7)
  nif = GaussianNIF(D, k, rngs=nnx.Rngs(0))
  A, b = rng.normal(size=(D, k)), rng.normal(size=D)
  lv, s = rng.normal(size=D) * 0.5, 0.8
  nif.A[...], nif.b[...] = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
  nif.log_var[...] = jnp.asarray(lv, jnp.float32)
  x = rng.normal(size=(5, D)) * 2.0
  grads = nnx.grad(lambda m: jnp.sum(m.log_prob(jnp.asarray(x, jnp.float32),
                                                noise_scale=s)))(nif)
  cinv = np.linalg.inv(A @ A.T + s**2 * np.diag(np.exp(lv)))
  r = (x - b) @ cinv
  M = r.T @ r - len(x) * cinv
  np.testing.assert_allclose(grads.A[...], M @ A, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grads.log_var[...],
                             0.5 * s**2 * np.exp(lv) * np.diag(M), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [3, linalg._GRAM_SPLIT_MIN_K])
def test_gram_matrix_and_its_gradient_match_float64(k):
  """G = aᵀa (one GEMM below the split size, three half-size blocks from it on):
  exactly symmetric and equal to the float64 product; its VJP is a(Ḡ + Ḡᵀ)."""
  rng = np.random.default_rng(3)
  a = rng.normal(size=(40, k))
  g_bar = rng.normal(size=(k, k))
  G, vjp = jax.vjp(linalg.gram_matrix, jnp.asarray(a, jnp.float32))
  G = np.asarray(G)
  np.testing.assert_array_equal(G, G.T)
  np.testing.assert_allclose(G, a.T @ a, rtol=1e-5, atol=1e-4)
  (a_bar,) = vjp(jnp.asarray(g_bar, jnp.float32))
  np.testing.assert_allclose(a_bar, a @ (g_bar + g_bar.T), rtol=1e-4, atol=1e-3)
