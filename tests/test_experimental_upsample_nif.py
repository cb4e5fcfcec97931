"""UpsampleNIF against dense float64 brute force with an explicitly built A (§3)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from nifzoo.nif import GaussianNIF
from nifzoo.experimental import UpsampleNIF
import helpers
from nif_oracles import dense_upsampling

# (H, W, C), (rh, rw): square, non-square and one-sided factors.
CONFIGS = [((4, 4, 1), (2, 2)), ((4, 3, 2), (2, 1)), ((6, 4, 1), (3, 2))]
SCALES = [0.3, 1.0, 2.0]
TOL = dict(rtol=2e-4, atol=2e-3)


def oracle(A, b, lv, x, s):
  """Dense §1 quantities by brute force (float64)."""
  Sig = s**2 * np.diag(np.exp(lv))
  S = A @ A.T + Sig
  log_p = stats.multivariate_normal(b, S).logpdf(x)
  P = np.linalg.inv(Sig)
  C = np.linalg.inv(A.T @ P @ A)
  mu = (x - b) @ (C @ A.T @ P).T
  K = A.T @ np.linalg.inv(S)
  post_mean, post_cov = (x - b) @ K.T, np.eye(A.shape[1]) - K @ A
  tau, k = 1e3, A.shape[1]
  log_h = (stats.multivariate_normal(b, tau**2 * A @ A.T + Sig).logpdf(x)
           + 0.5 * k * np.log(2 * np.pi * tau**2))
  Pi = np.linalg.inv(post_cov)
  d = post_mean - mu
  kl = 0.5 * (np.trace(Pi @ C) + np.einsum("bi,ij,bj->b", d, Pi, d) - k
              + np.linalg.slogdet(post_cov)[1] - np.linalg.slogdet(C)[1])
  return dict(log_prob=log_p, log_h=log_h, mu=mu, C=C, post_mean=post_mean,
              post_cov=post_cov, elbo=log_p - kl)


def make_case(shape, factors, seed=0):
  rng = np.random.default_rng(seed)
  layer = UpsampleNIF(shape, factors, rngs=nnx.Rngs(0))
  layer.b[...] = jnp.asarray(rng.normal(size=shape), jnp.float32)
  layer.log_var[...] = jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
  A = dense_upsampling(shape, factors)
  b = np.asarray(layer.b[...], np.float64).reshape(-1)
  lv = np.asarray(layer.log_var[...], np.float64).reshape(-1)
  k = A.shape[1]
  z = rng.normal(size=(3, k))
  x = z @ A.T + b + np.exp(0.5 * lv) * rng.normal(size=(3, A.shape[0]))
  x = np.concatenate([x, b + 2.0 * rng.normal(size=(1, A.shape[0]))])
  x = x.reshape((4,) + tuple(shape)).astype(np.float32)
  return layer, (A, b, lv), x


CASES = {c: make_case(*c, seed=i) for i, c in enumerate(CONFIGS)}


@pytest.mark.parametrize("shape,factors", CONFIGS)
@pytest.mark.parametrize("s", SCALES)
def test_matches_dense_oracle(shape, factors, s):
  layer, (A, b, lv), x = CASES[(shape, factors)]
  latent = layer.latent_shape
  assert latent == (shape[0] // factors[0], shape[1] // factors[1], shape[2])
  got = helpers.quantities(layer, x, s)
  want = oracle(A, b, lv, x.reshape(4, -1).astype(np.float64), s)
  for name in ("log_prob", "log_h", "elbo"):
    assert got[name].shape == (4,)
    np.testing.assert_allclose(got[name], want[name], **TOL, err_msg=name)
  for name, (mean, cov), (want_mean, want_cov) in [
      ("q", got["q"], (want["mu"], want["C"])),
      ("post", got["post"], (want["post_mean"], want["post_cov"]))]:
    assert mean.shape == (4,) + latent and cov.shape == latent, name
    np.testing.assert_allclose(mean.reshape(4, -1), want_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(want_cov, np.diag(np.diag(want_cov)), atol=1e-12)
    np.testing.assert_allclose(cov.reshape(-1), np.diag(want_cov), rtol=1e-4,
                               atol=1e-6)


def test_equals_gaussian_nif_with_dense_a():
  shape, factors = CONFIGS[2]
  layer, (A, b, lv), x = CASES[(shape, factors)]
  dense = GaussianNIF(A.shape[0], A.shape[1], rngs=nnx.Rngs(0))
  dense.A[...] = jnp.asarray(A, jnp.float32)
  dense.b[...] = jnp.asarray(b, jnp.float32)
  dense.log_var[...] = jnp.asarray(lv, jnp.float32)
  xf = x.reshape(4, -1)
  for s in (0.3, 1.5):
    got, want = helpers.quantities(layer, x, s), helpers.quantities(dense, xf, s)
    for name in ("log_prob", "log_h", "elbo"):
      np.testing.assert_allclose(got[name], want[name], **TOL)
    np.testing.assert_allclose(got["q"][0].reshape(4, -1), want["q"][0], atol=1e-4)
    np.testing.assert_allclose(got["q"][1].reshape(-1), np.diag(want["q"][1]),
                               rtol=1e-5)


def test_no_dense_algebra():
  """O(D): no matmul, Cholesky or triangular solve appears in the computation."""
  layer, _, x = CASES[CONFIGS[1]]
  jaxpr = str(jax.make_jaxpr(lambda x: layer.log_prob(x, 0.5) + layer.elbo(x, 0.5))(x))
  for prim in ("dot_general", "cholesky", "triangular_solve"):
    assert prim not in jaxpr


@functools.partial(nnx.jit, static_argnames=("n",))
def iw(layer, x, key, n, s):
  return layer.iw_bound(x, key, n, noise_scale=s)


def test_iw_bound():
  layer, (A, b, lv), x = CASES[CONFIGS[0]]
  s = 1.5
  got = helpers.quantities(layer, x, s)
  one = np.asarray(iw(layer, np.repeat(x, 1000, 0), jax.random.key(0), 1, s))
  one = one.reshape(4, 1000)
  np.testing.assert_allclose(one.mean(1), got["elbo"],
                             atol=5 * one.std(1).max() / np.sqrt(1000))
  many = np.asarray(iw(layer, np.repeat(x, 10, 0), jax.random.key(1), 2000, s))
  many = many.reshape(4, 10).mean(1)
  assert np.all(many > one.mean(1))
  np.testing.assert_allclose(many, got["log_prob"], atol=0.03)


def test_sample_and_decode():
  shape, factors = (2, 2, 1), (2, 1)
  layer, (A, b, lv), _ = make_case(shape, factors, seed=5)
  z = np.random.default_rng(1).normal(size=(3, 1, 2, 1)).astype(np.float32)
  x0 = layer.decode(z)
  np.testing.assert_allclose(x0.reshape(3, -1), z.reshape(3, -1) @ A.T + b,
                             atol=1e-6)
  np.testing.assert_array_equal(layer.decode(z, jax.random.key(0), 0.0), x0)
  T, s, n = 0.5, 0.7, 200_000
  for noise, noise_cov in [("learned", np.diag(np.exp(lv))), ("isotropic", np.eye(4))]:
    xs = layer.sample(jax.random.key(2), n, T, s, noise)
    assert xs.shape == (n,) + shape
    xs = np.asarray(xs, np.float64).reshape(n, -1)
    want = T**2 * A @ A.T + s**2 * noise_cov
    np.testing.assert_allclose(xs.mean(0), b, atol=0.02)
    np.testing.assert_allclose(np.cov(xs.T), want, atol=0.03 * want.max())
  xs = np.asarray(layer.sample(jax.random.key(3), 3, noise_scale=0.0))
  # On the manifold: both rows of a block differ from b by the same latent value.
  r = xs.reshape(3, -1) - b
  np.testing.assert_allclose(r[:, 0], r[:, 2], atol=1e-6)
  np.testing.assert_allclose(r[:, 1], r[:, 3], atol=1e-6)


def test_manifold_log_prob():
  layer, (A, b, lv), _ = CASES[CONFIGS[0]]
  z = np.random.default_rng(0).normal(size=(2,) + layer.latent_shape)
  x = (z.reshape(2, -1) @ A.T + b).reshape((2,) + layer.shape).astype(np.float32)
  want = (stats.multivariate_normal(np.zeros(A.shape[1])).logpdf(z.reshape(2, -1))
          - 0.5 * np.linalg.slogdet(A.T @ A)[1])
  np.testing.assert_allclose(layer.manifold_log_prob(x), want, rtol=1e-5, atol=1e-4)


def test_bad_input():
  with pytest.raises(ValueError, match=r"factors \(3, 2\) must divide"):
    UpsampleNIF((4, 4, 1), (3, 2))
  with pytest.raises(ValueError, match="factors must be .* positive ints"):
    UpsampleNIF((4, 4, 1), (0, 2))
  with pytest.raises(ValueError, match="no dimension reduction"):
    UpsampleNIF((4, 4, 1), (1, 1))
  with pytest.raises(ValueError, match=r"shape must be \(H, W, C\)"):
    UpsampleNIF((4, 4), (2, 2))
  layer = UpsampleNIF((4, 2, 1), (2, 2))
  with pytest.raises(ValueError, match=r"x must have shape \(B, 4, 2, 1\)"):
    layer.log_prob(np.zeros((2, 4, 2), np.float32))
  with pytest.raises(TypeError, match="x must be a floating-point array"):
    layer.elbo(np.zeros((2, 4, 2, 1), np.uint8))
  with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
    layer.posterior(np.zeros((2, 4, 2, 1), np.float32), noise_scale=-0.1)
  with pytest.raises(ValueError, match=r"z must have shape \(B, 2, 1, 1\)"):
    layer.decode(np.zeros((2, 2, 2, 1), np.float32))
