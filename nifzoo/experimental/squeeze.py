"""Squeeze as a bijection module (volume preserving: log_det = 0); the Glow
uses the functions :func:`nifzoo.flows.squeeze` / :func:`nifzoo.flows.unsqueeze`."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from nifzoo import checks
from nifzoo.flows import reshape


class Squeeze(nnx.Module):
  """Squeeze as a bijection: forward = space-to-depth, inverse = depth-to-space."""

  def __init__(self, order: str = "channel_major"):
    reshape.check_order(order)
    self.order = order

  def forward(self, x):
    """x (B, H, W, C), H and W even -> (z (B, H/2, W/2, 4C), zeros (B,))."""
    x = checks.check_float(x, "x")
    if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
      raise ValueError("x must have shape (B, H, W, C) with even H and W, got "
                       f"{x.shape}.")
    return reshape.squeeze(x, self.order), jnp.zeros((x.shape[0],), jnp.float32)

  def inverse(self, z):
    """z (B, H, W, 4C) -> x (B, 2H, 2W, C)."""
    z = checks.check_float(z, "z")
    if z.ndim != 4 or z.shape[-1] % 4:
      raise ValueError("z must have shape (B, H, W, C) with C divisible by 4, "
                       f"got {z.shape}.")
    return reshape.unsqueeze(z, self.order)
