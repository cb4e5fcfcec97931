"""A fixed random feature permutation (volume preserving: log_det = 0)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo import checks
from nifzoo.flows import _base


class Permute(nnx.Module):
  """A fixed permutation of the last axis: z[..., i] = x[..., perm[i]].

  ``perm`` defaults to a random permutation drawn from ``rngs.params()``; it is
  stored as a :class:`FlowConstant` (saved, never trained).
  """

  def __init__(self, num_features: int, *, perm=None,
               rngs: nnx.Rngs | None = None):
    checks.check_positive_int(num_features, "num_features")
    self.num_features = num_features
    if perm is None:
      if rngs is None:
        raise ValueError("Permute needs either perm or rngs.")
      perm = jax.random.permutation(rngs.params(), num_features)
    else:
      arr = np.asarray(perm)
      if sorted(arr.tolist()) != list(range(num_features)):
        raise ValueError(f"perm must be a permutation of range({num_features}), "
                         f"got {arr.tolist()}.")
      perm = jnp.asarray(arr)
    self.perm = _base.FlowConstant(perm.astype(jnp.int32))

  def forward(self, x):
    """x (B, ..., C) -> (x[..., perm], zeros (B,))."""
    x = _base.check_features(x, "x", self.num_features)
    return (jnp.take(x, self.perm[...], axis=-1),
            jnp.zeros((x.shape[0],), jnp.float32))

  def inverse(self, z):
    """z (B, ..., C) -> z[..., argsort(perm)]."""
    z = _base.check_features(z, "z", self.num_features)
    return jnp.take(z, jnp.argsort(self.perm[...]), axis=-1)
