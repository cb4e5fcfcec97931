"""Squeeze (space-to-depth) and its inverse, the Glow's reshapes.

``(B, H, W, C) -> (B, H/2, W/2, 4C)``: output pixel (h, w) collects the 2x2 block
``x[2h + i, 2w + j, c]`` (i, j in {0, 1}) into channel

* ``order="glow"``:          ``(2i + j) * C + c``   (the Glow/TensorFlow ordering:
  reshape to (B, H/2, 2, W/2, 2, C), transpose (0, 1, 3, 2, 4, 5));
* ``order="channel_major"``: ``4c + (2i + j)``      (the authors' PyTorch ordering:
  transpose (0, 1, 3, 5, 2, 4), i.e. each input channel's 4 pixels are adjacent).
"""

from __future__ import annotations

from nifzoo import checks

SQUEEZE_ORDERS = ("channel_major", "glow")
_PERMS = {"glow": (0, 1, 3, 2, 4, 5), "channel_major": (0, 1, 3, 5, 2, 4)}


def check_order(order):
  checks.check_choice(order, "order", SQUEEZE_ORDERS)


def squeeze(x, order: str = "channel_major"):
  """(B, H, W, C) -> (B, H/2, W/2, 4C) in the given channel ``order``."""
  check_order(order)
  b, h, w, c = x.shape
  y = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(_PERMS[order])
  return y.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(y, order: str = "channel_major"):
  """(B, H, W, 4C) -> (B, 2H, 2W, C); the inverse of :func:`squeeze`."""
  check_order(order)
  b, h, w, c4 = y.shape
  c = c4 // 4
  if order == "glow":
    x = y.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  else:
    x = y.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, 2 * h, 2 * w, c)
