"""Single bijective layers: inverse(forward(x)) == x and log_det == log|det jacfwd|."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nifzoo import flows
from test_flows_oracles import assert_bijection, normal, num_params, perturb, rngs

RNG = np.random.default_rng(0)


def _key(seed):
  return jax.random.key(seed, impl="rbg")   # fast to compile, see test_flows_oracles.rngs


_images = normal


# -- ActNorm ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 4, 4, 3), (16, 5)])
def test_actnorm_data_init_normalises_and_is_bijective(shape):
  layer = flows.ActNorm(shape[-1])
  x = _images(shape, loc=2.0, scale=3.0) * jnp.arange(1, shape[-1] + 1)
  assert not flows.is_initialized(layer)
  with flows.data_init(layer):
    z, _ = layer.forward(x)
  assert flows.is_initialized(layer) and not layer.data_init_mode
  axes = tuple(range(len(shape) - 1))
  np.testing.assert_allclose(z.mean(axes), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(axes), 1.0, atol=1e-4)
  assert "initialized" in nnx.state(layer, flows.ActNormInitialized)
  assert_bijection(layer, x[:3])
  # log_det counts the spatial positions: P * sum(-log_scale).
  p = int(np.prod(shape[1:-1]))
  np.testing.assert_allclose(layer.forward(x)[1][0],
                             -p * layer.log_scale[...].sum(), rtol=1e-6)


def test_actnorm_data_init_twice_changes_nothing():
  layer = flows.ActNorm(3)
  with flows.data_init(layer):
    layer.forward(_images((8, 2, 2, 3), seed=1))
  before = jax.tree.map(np.asarray, nnx.state(layer))
  with flows.data_init(layer):
    nnx.jit(lambda m, x: m.forward(x))(layer, _images((8, 2, 2, 3), seed=2, loc=5.0))
  after = jax.tree.map(np.asarray, nnx.state(layer))
  jax.tree.map(np.testing.assert_array_equal, before, after)


# -- 1x1 convolution -------------------------------------------------------------

@pytest.mark.parametrize("parameterization", ["lu", "colnorm"])
def test_invconv1x1(parameterization):
  layer = flows.InvConv1x1(4, parameterization=parameterization, rngs=rngs(1))
  perturb(layer, 2, scale=0.2)
  assert num_params(layer) == 16
  x = _images((2, 3, 3, 4))
  z, _ = assert_bijection(layer, x)
  # matches the dense weight matrix, z = x @ W^T
  w = np.asarray(layer.weight_matrix(), np.float64)
  np.testing.assert_allclose(z, np.asarray(x) @ w.T, atol=1e-5)
  if parameterization == "colnorm":
    # The authors: z = x @ Wn, Wn = W / sqrt(sum(W**2, axis=0) + 1e-5).
    raw = np.asarray(layer.weight[...], np.float64)
    wn = raw / np.sqrt(np.sum(raw**2, axis=0) + 1e-5)
    np.testing.assert_allclose(z, np.asarray(x, np.float64) @ wn, atol=1e-5)
  else:
    assert not isinstance(layer.perm, nnx.Param)
    assert not isinstance(layer.sign_s, nnx.Param)


def test_invconv1x1_init_is_orthogonal():
  w = np.asarray(flows.InvConv1x1(6, rngs=rngs(3)).weight_matrix())
  np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-5)


# -- couplings -------------------------------------------------------------------

def _coupling_params(c, f, out):
  return 9 * (c // 2) * f + f + f * f + f + 9 * f * out + out


@pytest.mark.parametrize("cls,out", [(flows.AffineCoupling, 1.0),
                                     (flows.AdditiveCoupling, 0.5)])
def test_image_couplings(cls, out):
  c, f = 4, 6
  layer = cls(c, f, rngs=rngs(0))
  x = _images((2, 3, 3, c))
  z0, ld0 = layer.forward(x)            # zero-init last conv: identity
  np.testing.assert_allclose(z0, x)
  np.testing.assert_allclose(ld0, 0.0)
  assert num_params(layer) == _coupling_params(c, f, int(c * out))
  perturb(layer, 5, scale=0.3)
  z, ld = assert_bijection(layer, x)
  assert not np.allclose(z, x)
  np.testing.assert_array_equal(z[..., c // 2:], x[..., c // 2:])
  if cls is flows.AffineCoupling:
    assert np.abs(ld).max() > 1e-2
  else:
    np.testing.assert_array_equal(ld, 0.0)


@pytest.mark.parametrize("dim", [4, 5])
def test_vector_affine_coupling(dim):
  layer = flows.VectorAffineCoupling(dim, 8, 2, rngs=rngs(0))
  perturb(layer, 1, scale=0.3)
  x = _images((3, dim))
  _, ld = assert_bijection(layer, x)
  assert np.abs(ld).max() > 1e-2


def test_reverse():
  x = _images((2, 3, 3, 5))
  z, _ = assert_bijection(flows.Reverse(), x)
  np.testing.assert_array_equal(z, x[..., ::-1])


# -- squeeze ---------------------------------------------------------------------

def squeeze_oracle(x, order):
  b, h, w, c = x.shape
  y = np.zeros((b, h // 2, w // 2, 4 * c), x.dtype)
  for hh in range(h // 2):
    for ww in range(w // 2):
      for i in range(2):
        for j in range(2):
          for cc in range(c):
            k = (2 * i + j) * c + cc if order == "glow" else 4 * cc + 2 * i + j
            y[:, hh, ww, k] = x[:, 2 * hh + i, 2 * ww + j, cc]
  return y


@pytest.mark.parametrize("order", ["glow", "channel_major"])
def test_squeeze_orders_match_index_formula(order):
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  z = flows.squeeze(jnp.asarray(x), order)
  np.testing.assert_array_equal(z, squeeze_oracle(x, order))
  np.testing.assert_array_equal(flows.unsqueeze(z, order), x)
  with pytest.raises(ValueError, match="order"):
    flows.squeeze(jnp.asarray(x), "nchw")


# -- preprocessing ---------------------------------------------------------------

def test_logit_bijection():
  y = jnp.asarray(RNG.uniform(0.01, 0.99, (3, 2, 2, 2)), jnp.float32)
  assert_bijection(flows.Logit(0.05), y, atol_inv=1e-5)
  with pytest.raises(ValueError, match=r"y must lie in \[0, 1\]"):
    flows.Logit().forward(y + 1.0)


@pytest.mark.parametrize("num_levels", [8, 17])
def test_dequantize(num_levels):
  x = jnp.asarray(RNG.integers(0, num_levels, (4, 3, 3, 1)), jnp.int32)
  layer = flows.Dequantize(num_levels)
  for key in (None, _key(1)):
    y, ld = layer.forward(x, key)
    assert y.dtype == jnp.float32
    assert np.all(y >= x / num_levels) and np.all(y < (x + 1) / num_levels)
    np.testing.assert_allclose(ld, -9 * np.log(num_levels), rtol=1e-6)
    back = layer.inverse(y)
    assert back.dtype == jnp.int32
    np.testing.assert_array_equal(back, x)
  y, _ = layer.forward(x)
  np.testing.assert_allclose(y, (x + 0.5) / num_levels)
  np.testing.assert_array_equal(layer.inverse(jnp.array([[-0.1, 1.5]])),
                                [[0, num_levels - 1]])
  with pytest.raises(ValueError, match=r"\[0, %d\]" % (num_levels - 1)):
    layer.forward(x + num_levels)
  with pytest.raises(TypeError, match="x_int"):
    layer.forward(x > 0)


def test_preprocess_roundtrip_and_log_det():
  x = jnp.asarray(RNG.integers(0, 8, (3, 2, 2, 3)), jnp.int32)
  pre = flows.Preprocess(8, 0.05)
  v, ld = pre.forward(x, _key(2))
  np.testing.assert_array_equal(pre.inverse(v), x)
  y, ld1 = pre.dequantize.forward(x, _key(2))
  np.testing.assert_allclose(ld, ld1 + pre.logit.forward(y)[1], rtol=1e-6)


# -- bad input -------------------------------------------------------------------

def test_bad_input_is_named():
  with pytest.raises(ValueError, match="x must have 3 features"):
    flows.ActNorm(3).forward(jnp.zeros((2, 4)))
  with pytest.raises(TypeError, match="x must be a floating-point"):
    flows.InvConv1x1(2, rngs=rngs(0)).forward(jnp.zeros((2, 2), jnp.int32))
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    flows.AffineCoupling(2, 4, rngs=rngs(0)).forward(jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="even"):
    flows.AffineCoupling(3, 4, rngs=rngs(0))
  with pytest.raises(ValueError, match="parameterization"):
    flows.InvConv1x1(2, parameterization="qr", rngs=rngs(0))
  with pytest.raises(ValueError, match=r"z must have shape \(B, D\)"):
    flows.VectorAffineCoupling(4, 8, 1, rngs=rngs(0)).inverse(jnp.zeros((2, 2, 4)))
