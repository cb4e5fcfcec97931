"""nifzoo.experimental's Permute and Squeeze modules as bijections."""

import jax.numpy as jnp
import numpy as np
import pytest

from nifzoo import experimental
from test_flows_layers import squeeze_oracle
from test_flows_oracles import assert_bijection, normal, rngs


def test_permute():
  x = normal((2, 3, 3, 5))
  layer = experimental.Permute(5, rngs=rngs(0))
  z, _ = assert_bijection(layer, x)
  np.testing.assert_array_equal(z, np.asarray(x)[..., np.asarray(layer.perm[...])])
  with pytest.raises(ValueError, match="perm"):
    experimental.Permute(3, perm=[0, 0, 1])


@pytest.mark.parametrize("order", ["glow", "channel_major"])
def test_squeeze_module(order):
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  layer = experimental.Squeeze(order)
  z, ld = layer.forward(jnp.asarray(x))
  np.testing.assert_array_equal(z, squeeze_oracle(x, order))
  np.testing.assert_array_equal(layer.inverse(z), x)
  np.testing.assert_array_equal(ld, 0.0)
  assert_bijection(layer, jnp.asarray(x[:, :2, :2, :2]))


def test_squeeze_rejects_odd_sizes():
  with pytest.raises(ValueError, match="even H and W"):
    experimental.Squeeze().forward(jnp.zeros((1, 3, 4, 1)))
  with pytest.raises(ValueError, match="order"):
    experimental.Squeeze("nchw")
