"""Stochastic couplings (§4) against exact dense marginals.

With z₁ ~ N(0, I), x₁ | x₂ is Gaussian N(b(x₂), AAᵀ + s²Σ(x₂)), so under a standard
normal prior on (z₁, x₂)

    log p(x) = log N(x₂; 0, I) + log N(x₁; b(x₂), AAᵀ + s²Σ(x₂))

exactly (scipy, float64, A dense or built explicitly from the upsampling pattern).
The conditioners are perturbed away from their zero init so b and Σ depend on x₂.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from scipy.special import logsumexp

from nifzoo.experimental import StochasticCoupling
from nifzoo.experimental import VectorStochasticCoupling
from nif_oracles import dense_upsampling

R = 2000  # samples per point for the bound estimates


def std_normal_logpdf(v):
  v = v.reshape(v.shape[0], -1)
  return -0.5 * np.sum(v**2 + np.log(2 * np.pi), axis=1)


def make_vector(seed=0):
  layer = VectorStochasticCoupling(5, 3, 2, 8, rngs=nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  d3 = layer.conditioner.out
  d3.kernel[...] = jnp.asarray(0.5 * rng.normal(size=d3.kernel.shape), jnp.float32)
  d3.bias[...] = jnp.asarray(0.3 * rng.normal(size=d3.bias.shape), jnp.float32)
  x = rng.normal(size=(4, 5)).astype(np.float32)
  return layer, np.asarray(layer.A[...], np.float64), x


def make_image(seed=0):
  shape, factors = (4, 4, 3), (2, 1)
  layer = StochasticCoupling(shape, factors, hidden=8, rngs=nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  c3 = layer.conditioner.conv_out
  c3.kernel[...] = jnp.asarray(0.2 * rng.normal(size=c3.kernel.shape), jnp.float32)
  c3.bias[...] = jnp.asarray(0.3 * rng.normal(size=c3.bias.shape), jnp.float32)
  x = rng.normal(size=(4,) + shape).astype(np.float32)
  return layer, dense_upsampling((4, 4, 1), factors), x


LAYERS = pytest.mark.parametrize("which", ["vector", "image"])


@functools.cache  # Built when first used, not while every worker collects.
def get(which):
  return make_vector() if which == "vector" else make_image()


@nnx.jit
def run_forward(layer, x, key, s):
  return layer.forward(x, key, noise_scale=s)


@functools.partial(nnx.jit, static_argnames=("noise",))
def run_inverse(layer, z1, x2, key, s, noise="learned"):
  return layer.inverse(z1, x2, key, noise_scale=s, noise=noise)


def exact_pieces(layer, A, x, s):
  """Per example (float64): b(x₂), ℓ(x₂), the exact log p(x), q and posterior."""
  x1, x2 = x[..., :layer.split], x[..., layer.split:]
  b, lv = (np.asarray(v, np.float64).reshape(len(x), -1)
           for v in layer.conditional(x2))
  x1 = x1.reshape(len(x), -1).astype(np.float64)
  out = dict(log_p=[], mu=[], C=[], kl=[], log_h=[])
  k = A.shape[1]
  for i in range(len(x)):
    Sig = s**2 * np.diag(np.exp(lv[i]))
    S = A @ A.T + Sig
    out["log_p"].append(stats.multivariate_normal(b[i], S).logpdf(x1[i]))
    P = np.linalg.inv(Sig)
    C = np.linalg.inv(A.T @ P @ A)
    mu = C @ A.T @ P @ (x1[i] - b[i])
    K = A.T @ np.linalg.inv(S)
    pm, pc = K @ (x1[i] - b[i]), np.eye(k) - K @ A
    d = pm - mu
    pci = np.linalg.inv(pc)
    out["kl"].append(0.5 * (np.trace(pci @ C) + d @ pci @ d - k
                            + np.linalg.slogdet(pc)[1] - np.linalg.slogdet(C)[1]))
    tau = 1e3
    out["log_h"].append(stats.multivariate_normal(b[i], tau**2 * A @ A.T + Sig)
                        .logpdf(x1[i]) + 0.5 * k * np.log(2 * np.pi * tau**2))
    out["mu"].append(mu)
    out["C"].append(C)
  out = {n: np.array(v) for n, v in out.items()}
  out["log_p"] = out["log_p"] + std_normal_logpdf(np.asarray(x2, np.float64))
  return out, b, lv


# --------------------------------------------------------------------------


@LAYERS
def test_conditioner_is_zero_at_init(which):
  if which == "vector":
    layer = VectorStochasticCoupling(5, 3, 2, 8, rngs=nnx.Rngs(1))
    x2 = np.ones((4, 2), np.float32)
  else:
    layer = StochasticCoupling((4, 4, 3), (2, 1), hidden=8, rngs=nnx.Rngs(1))
    x2 = np.ones((4, 4, 4, 2), np.float32)
  b, lv = layer.conditional(x2)
  np.testing.assert_array_equal(b, 0.0)
  np.testing.assert_array_equal(lv, 0.0)


@LAYERS
@pytest.mark.parametrize("s", [0.5, 1.0])
def test_layer_terms_match_dense(which, s):
  layer, A, x = get(which)
  want, _, lv = exact_pieces(layer, A, x, s)
  assert np.ptp(lv) > 0.2  # Σ really depends on x₂
  np.testing.assert_allclose(layer.log_normalizer(x, s), want["log_h"],
                             rtol=2e-4, atol=2e-3)
  mean, cov = layer.stochastic_inverse(x, s)
  np.testing.assert_allclose(mean.reshape(4, -1), want["mu"], rtol=1e-4, atol=1e-4)
  if which == "vector":
    assert cov.shape == (4, 2, 2)
    np.testing.assert_allclose(cov, want["C"], rtol=1e-4, atol=1e-6)
  else:
    assert cov.shape == (4, 2, 4, 1)
    np.testing.assert_allclose(cov.reshape(4, -1),
                               np.diagonal(want["C"], axis1=1, axis2=2), rtol=1e-4)


@LAYERS
def test_one_sample_bound_below_iw_estimate_below_exact(which):
  layer, A, x = get(which)
  s = 0.5
  want, _, _ = exact_pieces(layer, A, x, s)
  z1, x2, log_h = run_forward(layer, np.repeat(x, R, 0), jax.random.key(0), s)
  assert z1.shape == (4 * R,) + layer.z1_shape and log_h.shape == (4 * R,)
  w = (std_normal_logpdf(np.asarray(z1, np.float64))
       + std_normal_logpdf(np.asarray(x2, np.float64))
       + np.asarray(log_h, np.float64)).reshape(4, R)
  one_sample = w.mean(1)
  iw = logsumexp(w, axis=1) - np.log(R)
  # E[one-sample bound] = log p − KL(q ‖ posterior), exactly.
  np.testing.assert_allclose(one_sample, want["log_p"] - want["kl"],
                             atol=5 * w.std(1).max() / np.sqrt(R))
  assert np.all(want["kl"] > 1e-3)
  # The importance-sampled estimate is unbiased for p(x): its log is within a few
  # delta-method standard errors of log p(x) (and below it in expectation).
  ratio = np.exp(w - w.max(1, keepdims=True))
  se = ratio.std(1) / ratio.mean(1) / np.sqrt(R)
  assert np.all(one_sample < iw - 0.05)
  assert np.all(iw <= want["log_p"] + 4 * se + 1e-3)
  np.testing.assert_array_less(np.abs(iw - want["log_p"]), 4 * se + 0.01)


@LAYERS
def test_inverse_on_conditional_manifold_and_roundtrip(which):
  layer, A, x = get(which)
  xr = np.repeat(x, R, 0)  # the batch of the bound test: compiled once
  z1, x2, _ = run_forward(layer, xr, jax.random.key(1), 1.0)
  _, b, _ = exact_pieces(layer, A, x, 1.0)
  x_back = run_inverse(layer, z1, x2, jax.random.key(2), 0.0)
  assert x_back.shape == xr.shape
  np.testing.assert_array_equal(x_back[..., layer.split:], xr[..., layer.split:])
  x1 = np.asarray(x_back[..., :layer.split], np.float64).reshape(4 * R, -1)
  want = np.asarray(z1, np.float64).reshape(4 * R, -1) @ A.T + np.repeat(b, R, 0)
  np.testing.assert_allclose(x1, want, rtol=1e-5, atol=1e-5)


@LAYERS
def test_generation_noise(which):
  layer, A, x = get(which)
  s = 0.7
  z1, x2, _ = run_forward(layer, np.repeat(x, R, 0), jax.random.key(1), 1.0)
  _, _, lv = exact_pieces(layer, A, x, 1.0)
  x0 = run_inverse(layer, z1, x2, jax.random.key(3), 0.0)
  for noise in ("learned", "isotropic"):
    xs = run_inverse(layer, z1, x2, jax.random.key(3), s, noise)
    sd = s * (np.exp(0.5 * np.repeat(lv, R, 0)) if noise == "learned" else 1.0)
    eps = (np.asarray(xs - x0)[..., :layer.split].reshape(4 * R, -1) / sd)
    np.testing.assert_allclose(eps.std(0), 1.0, atol=0.06)
    np.testing.assert_array_equal(xs[..., layer.split:], x2)


def test_image_shapes_and_split():
  # hidden=8, 2 channels in x2: the conditioner's shapes are get("image")'s (fast init).
  layer = StochasticCoupling((8, 6, 4), (2, 3), hidden=8, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 8, 6, 4)).astype(np.float32)
  z1, x2, log_h = run_forward(layer, x, jax.random.key(0), 1.0)
  assert z1.shape == (2, 4, 2, 2) and x2.shape == (2, 8, 6, 2)
  assert log_h.shape == (2,) and np.all(np.isfinite(log_h))
  np.testing.assert_array_equal(x2, x[..., 2:])
  layer = get("image")[0]  # (4, 4, 3), factors (2, 1): C₁ = 3 // 2 = 1
  assert layer.z1_shape == (2, 4, 1) and layer.x2_shape == (4, 4, 2)


def test_bad_input():
  layer, _, x = get("vector")
  with pytest.raises(ValueError, match=r"x must have shape \(B, 5\)"):
    layer.forward(x[:, :4], jax.random.key(0))
  with pytest.raises(TypeError, match="x must be a floating-point array"):
    layer.forward(np.ones((2, 5), np.int64), jax.random.key(0))
  with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
    layer.forward(x, jax.random.key(0), noise_scale=-1.0)
  with pytest.raises(ValueError, match="noise_scale must be > 0 for densities"):
    layer.forward(x, jax.random.key(0), noise_scale=0.0)
  with pytest.raises(ValueError, match=r"z1 must have shape \(B, 2\)"):
    layer.inverse(np.ones((2, 3), np.float32), np.ones((2, 2), np.float32))
  with pytest.raises(ValueError, match="same batch size"):
    layer.inverse(np.ones((2, 2), np.float32), np.ones((3, 2), np.float32))
  with pytest.raises(ValueError, match=r"noise must be one of"):
    layer.inverse(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),
                  noise="none")
  with pytest.raises(ValueError, match="latent_dim must be < split"):
    VectorStochasticCoupling(5, 3, 3, 8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="split must be < dim"):
    VectorStochasticCoupling(5, 5, 2, 8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"split must be an int in \[1, C-1\]"):
    StochasticCoupling((4, 4, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"factors \(3, 2\) must divide"):
    StochasticCoupling((4, 4, 2), (3, 2), rngs=nnx.Rngs(0))
  img, _, xi = get("image")
  with pytest.raises(ValueError, match=r"x must have shape \(B, 4, 4, 3\)"):
    img.forward(xi[..., :2], jax.random.key(0))
  with pytest.raises(ValueError, match=r"x2 must have shape \(B, 4, 4, 2\)"):
    img.inverse(np.zeros((1, 2, 4, 1), np.float32), np.zeros((1, 4, 4, 1), np.float32))
