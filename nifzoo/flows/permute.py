"""Reversing the feature order (volume preserving: log_det = 0)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from nifzoo import checks


class Reverse(nnx.Module):
  """Reverses the order of the last axis: z[..., i] = x[..., C-1-i]; (B, ..., C)."""

  def forward(self, x):
    """x (B, ..., C) -> (x[..., ::-1], zeros (B,))."""
    x = checks.check_float(x, "x")
    if x.ndim < 2:
      raise ValueError(f"x must have shape (B, ..., C), got {x.shape}.")
    return jnp.flip(x, -1), jnp.zeros((x.shape[0],), jnp.float32)

  def inverse(self, z):
    """z (B, ..., C) -> z[..., ::-1]."""
    z = checks.check_float(z, "z")
    if z.ndim < 2:
      raise ValueError(f"z must have shape (B, ..., C), got {z.shape}.")
    return jnp.flip(z, -1)
