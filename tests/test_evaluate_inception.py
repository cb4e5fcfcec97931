"""Inception-v3 FID network: shapes with random weights, the weight file round
trip and its errors, and the layers against float64 numpy in PyTorch layout."""

import numpy as np
import pytest
import jax.numpy as jnp

from nifzoo.evaluate import inception


@pytest.fixture(scope="module")
def net():
  return inception.InceptionV3FID(resize=75, seed=0)


@pytest.fixture(scope="module")
def weights_file(net, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("inc") / "w.npz")
  sd = inception.torch_state_dict(net)
  sd["fc.weight"] = np.zeros((1008, 2048), np.float32)  # Unused keys are ignored.
  np.savez(path, **sd)
  return path, sd


def test_pool3_shape_and_weight_round_trip(net, weights_file):
  path, sd = weights_file
  assert len(sd) == 94 * 5 + 1  # 94 conv + BatchNorm units in the FID Inception.
  assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)  # OIHW.
  assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
  rng = np.random.default_rng(0)
  grey = jnp.asarray(rng.uniform(size=(2, 8, 8, 1)), jnp.float32)
  f = inception.feature_fn(net)
  out = np.asarray(f(grey))
  assert out.shape == (2, inception.FEATURE_DIM) and np.all(np.isfinite(out))
  assert np.all(out >= 0) and out.std() > 0  # Means of ReLU outputs.
  # Grey images are the same as their 3-channel copies.
  np.testing.assert_allclose(f(jnp.repeat(grey, 3, -1)), out, rtol=1e-5, atol=1e-6)
  loaded = inception.load_inception(path, resize=75)
  np.testing.assert_allclose(inception.feature_fn(loaded)(grey), out, rtol=1e-5,
                             atol=1e-6)


def test_weight_file_errors(weights_file, tmp_path):
  path, sd = weights_file
  with pytest.raises(FileNotFoundError, match="cannot download"):
    inception.load_inception(str(tmp_path / "none.npz"))
  broken = dict(sd)
  del broken["Mixed_5b.branch1x1.bn.running_var"]
  broken["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
  np.savez(tmp_path / "b.npz", **broken)
  with pytest.raises(ValueError, match="1 missing keys.*Mixed_5b.branch1x1.bn.running_var"
                     ".*1 wrong shapes.*Conv2d_1a_3x3"):
    inception.load_inception(str(tmp_path / "b.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="Could not read"):
    inception.load_inception(str(tmp_path / "junk.npz"))
  with pytest.raises(ValueError, match="at least 75"):
    inception.InceptionV3FID(resize=32)


def _torch_conv_bn_relu(x, w_oihw, gamma, beta, mean, var, stride, pad):
  """float64 NCHW-style cross-correlation with OIHW weights, on NHWC arrays."""
  x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
  o, i, kh, kw = w_oihw.shape
  hout = (x.shape[1] - kh) // stride + 1
  wout = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], hout, wout, o))
  for a in range(hout):
    for b in range(wout):
      patch = x[:, a * stride:a * stride + kh, b * stride:b * stride + kw, :]
      out[:, a, b, :] = np.einsum("nhwi,oihw->no", patch, w_oihw)
  out = (out - mean) / np.sqrt(var + 1e-3) * gamma + beta
  return np.maximum(out, 0)


@pytest.mark.parametrize("kernel,stride,pad", [((3, 3), 2, (0, 0)), ((1, 7), 1, (0, 3))])
def test_basic_conv_matches_pytorch_semantics(kernel, stride, pad, tmp_path):
  rng = np.random.default_rng(1)
  conv = inception.BasicConv2d(4, 5, kernel, stride=stride, padding=pad, rng=rng)
  w = rng.normal(size=(5, 4, *kernel))
  gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
  mean, var = rng.normal(size=5), rng.uniform(0.5, 2, 5)
  conv.kernel[...] = jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32)
  conv.scale[...], conv.bias[...] = jnp.asarray(gamma, jnp.float32), jnp.asarray(beta, jnp.float32)
  conv.mean[...], conv.var[...] = jnp.asarray(mean, jnp.float32), jnp.asarray(var, jnp.float32)
  x = rng.normal(size=(2, 9, 9, 4))
  np.testing.assert_allclose(conv(jnp.asarray(x, jnp.float32)),
                             _torch_conv_bn_relu(x, w, gamma, beta, mean, var, stride, pad),
                             rtol=1e-4, atol=1e-4)


def test_pools():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 5, 6, 2))
  got = np.asarray(inception.avg_pool_exclude_pad(jnp.asarray(x, jnp.float32)))
  for a in range(5):
    for b in range(6):
      window = x[0, max(a - 1, 0):a + 2, max(b - 1, 0):b + 2]
      np.testing.assert_allclose(got[0, a, b], window.mean((0, 1)), rtol=1e-5)
  mp = np.asarray(inception.max_pool(jnp.asarray(x, jnp.float32)))
  assert mp.shape == (1, 2, 2, 2)
  np.testing.assert_allclose(mp[0, 1, 1], x[0, 2:5, 2:5].max((0, 1)), rtol=1e-6)
