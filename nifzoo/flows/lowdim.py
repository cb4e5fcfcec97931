"""The deep NIF's low-dimensional flow (paper Fig. 2, App. B.4).

``num_layers`` x [VectorAffineCoupling(k, hidden, mlp_depth) -> ActNorm(k) -> Reverse]
on (B, k), one scanned stack; base density N(0, I_k)::

    log p(z) = log N(eps; 0, I) + log_det,     (eps, log_det) = forward(z)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from nifzoo import checks
from nifzoo.flows import _base
from nifzoo.flows.actnorm import ActNorm
from nifzoo.flows.coupling import VectorAffineCoupling
from nifzoo.flows.permute import Reverse
from nifzoo.flows.stack import ScannedStack


class LowDimStep(nnx.Module):
  """VectorAffineCoupling -> ActNorm -> Reverse on (B, dim)."""

  def __init__(self, dim: int, hidden: int, mlp_depth: int, *, rngs: nnx.Rngs):
    self.coupling = VectorAffineCoupling(dim, hidden, mlp_depth, rngs=rngs)
    self.actnorm = ActNorm(dim)
    self.reverse = Reverse()

  def forward(self, x):
    x, ld0 = self.coupling.forward(x)
    x, ld1 = self.actnorm.forward(x)
    x, _ = self.reverse.forward(x)
    return x, ld0 + ld1

  def inverse(self, z):
    z = self.reverse.inverse(z)
    z = self.actnorm.inverse(z)
    return self.coupling.inverse(z)


class LowDimFlow(nnx.Module):
  """Flow on R^dim with a standard-normal base: forward (B, dim) -> (eps, log_det)."""

  def __init__(self, dim: int, num_layers: int = 10, hidden: int = 1024,
               mlp_depth: int = 4, *, rngs: nnx.Rngs):
    self.dim = checks.check_positive_int(dim, "dim")
    if dim < 2:
      raise ValueError(f"dim must be >= 2 for coupling layers, got {dim}.")
    checks.check_positive_int(num_layers, "num_layers")
    self.layers = ScannedStack(
        functools.partial(LowDimStep, dim, hidden, mlp_depth), num_layers,
        rngs=rngs)

  def _check(self, x, name):
    return _base.check_features(x, name, self.dim, rank=2)

  def forward(self, z):
    """z (B, dim) -> (eps (B, dim), log_det (B,))."""
    return self.layers.forward(self._check(z, "z"))

  def inverse(self, eps):
    """eps (B, dim) -> z (B, dim)."""
    return self.layers.inverse(self._check(eps, "eps"))

  def log_prob(self, z):
    """log p(z) (B,) under the flow with an N(0, I) base."""
    eps, log_det = self.forward(z)
    return _base.standard_normal_log_prob(eps) + log_det

  def sample(self, key: jax.Array, n: int, *, temperature: float = 1.0):
    """n samples (n, dim): z = inverse(temperature * eps), eps ~ N(0, I)."""
    eps = temperature * jax.random.normal(key, (n, self.dim), jnp.float32)
    return self.inverse(eps)
