"""Squeeze (space-to-depth) and its inverse; volume preserving (log_det = 0).

``(B, H, W, C) -> (B, H/2, W/2, 4C)``: output pixel (h, w) collects the 2x2 block
``x[2h + i, 2w + j, c]`` (i, j in {0, 1}) into channel

* ``order="glow"``:          ``(2i + j) * C + c``   (the Glow/TensorFlow ordering:
  reshape to (B, H/2, 2, W/2, 2, C), transpose (0, 1, 3, 2, 4, 5));
* ``order="channel_major"``: ``4c + (2i + j)``      (the authors' PyTorch ordering:
  transpose (0, 1, 3, 5, 2, 4), i.e. each input channel's 4 pixels are adjacent).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from nifzoo import checks

SQUEEZE_ORDERS = ("channel_major", "glow")
_PERMS = {"glow": (0, 1, 3, 2, 4, 5), "channel_major": (0, 1, 3, 5, 2, 4)}


def _check_order(order):
  checks.check_choice(order, "order", SQUEEZE_ORDERS)


def squeeze(x, order: str = "channel_major"):
  """(B, H, W, C) -> (B, H/2, W/2, 4C) in the given channel ``order``."""
  _check_order(order)
  b, h, w, c = x.shape
  y = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(_PERMS[order])
  return y.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(y, order: str = "channel_major"):
  """(B, H, W, 4C) -> (B, 2H, 2W, C); the inverse of :func:`squeeze`."""
  _check_order(order)
  b, h, w, c4 = y.shape
  c = c4 // 4
  if order == "glow":
    x = y.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  else:
    x = y.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, 2 * h, 2 * w, c)


class Squeeze(nnx.Module):
  """Squeeze as a bijection: forward = space-to-depth, inverse = depth-to-space."""

  def __init__(self, order: str = "channel_major"):
    _check_order(order)
    self.order = order

  def forward(self, x):
    """x (B, H, W, C), H and W even -> (z (B, H/2, W/2, 4C), zeros (B,))."""
    x = checks.check_float(x, "x")
    if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
      raise ValueError("x must have shape (B, H, W, C) with even H and W, got "
                       f"{x.shape}.")
    return squeeze(x, self.order), jnp.zeros((x.shape[0],), jnp.float32)

  def inverse(self, z):
    """z (B, H, W, 4C) -> x (B, 2H, 2W, C)."""
    z = checks.check_float(z, "z")
    if z.ndim != 4 or z.shape[-1] % 4:
      raise ValueError("z must have shape (B, H, W, C) with C divisible by 4, "
                       f"got {z.shape}.")
    return unsqueeze(z, self.order)
