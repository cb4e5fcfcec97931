"""The matmul 3x3 convolution equals XLA's native convolution (both branches)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nifzoo import flows


@pytest.mark.parametrize("cin,cout", [(3, 16), (16, 4), (5, 5)])
def test_conv3x3_equals_lax_conv(cin, cout):
  rng = np.random.default_rng(cin * 10 + cout)
  x = rng.normal(size=(2, 5, 6, cin))
  w = rng.normal(size=(3, 3, cin, cout))
  with jax.enable_x64(True):
    expected = jax.lax.conv_general_dilated(
        jnp.asarray(x), jnp.asarray(w), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = flows.conv3x3(jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_conv3x3_module_matches_nnx_conv_layout():
  layer = flows.Conv3x3(4, 6, rngs=nnx.Rngs(0))
  ref = nnx.Conv(4, 6, (3, 3), padding="SAME", rngs=nnx.Rngs(1))
  assert layer.kernel.shape == ref.kernel.shape and layer.bias.shape == ref.bias.shape
  ref.kernel[...] = layer.kernel[...]
  ref.bias[...] = jnp.arange(6.0)
  layer.bias[...] = jnp.arange(6.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 4)), jnp.float32)
  np.testing.assert_allclose(layer(x), ref(x), rtol=1e-5, atol=1e-5)
