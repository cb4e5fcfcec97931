"""Nearest-neighbour upsampling NIF (``docs/math.md`` §3).

A copies each latent pixel z (B, H/rh, W/rw, C) to its rh×rw block of x (B, H, W, C).
The columns of A have disjoint supports, so G = AᵀΣ⁻¹A is diagonal,
G_j = Σ_{i∈block(j)} 1/σᵢ², and μ_j is the precision-weighted block average; every
quantity is O(D) (reshape to (B, h, rh, w, rw, C) and sum). The formulas are the
§1 ones in :mod:`nifzoo.nif.gaussian`, with :class:`nifzoo.nif.linalg.NearestUpsample`
as A.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from nifzoo.nif import gaussian
from nifzoo.nif import linalg


class UpsampleNIF(gaussian.LinearGaussianNIF):
  """x = up(z) + b + ε, ε ~ N(0, s²Σ); z (B, h, w, C) -> x (B, H, W, C).

  Args:
    shape: (H, W, C) of x.
    factors: (rh, rw), positive ints dividing (H, W), any per axis (rh·rw > 1).

  Attributes:
    b: ``nnx.Param`` (H, W, C), zeros.
    log_var: ``nnx.Param`` (H, W, C), zeros.
    A is fixed (no parameter). ``stochastic_inverse``/``posterior`` return
    (mean (B, h, w, C), cov diagonal (h, w, C)).
  """

  def __init__(self, shape: Sequence[int] = (32, 32, 3),
               factors: Sequence[int] = (2, 2), *, rngs: nnx.Rngs | None = None):
    del rngs  # deterministic init; accepted for a uniform signature
    op = linalg.NearestUpsample(shape, factors)
    self.shape, self.factors = op.data_shape, op.factors
    self.latent_shape = op.latent_shape
    self.b = nnx.Param(jnp.zeros(self.shape, jnp.float32))
    self.log_var = nnx.Param(jnp.zeros(self.shape, jnp.float32))

  def operator(self):
    return linalg.NearestUpsample(self.shape, self.factors)
