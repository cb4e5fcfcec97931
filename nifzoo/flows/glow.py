"""Glow (Kingma & Dhariwal 2018) with the authors' recursive multi-scale structure
(``docs/math.md`` §5.4–§5.5).

One step (``GlowStep``) on (B, h, w, c)::

    ActNorm(c) -> InvConv1x1(c) -> AffineCoupling(c, F) (or AdditiveCoupling)
    parameters (affine): 2c + c^2 + 9(c/2)F + F + F^2 + F + 9Fc + c

Multi-scale (``Glow``), scale s = 0 .. S-1 acting on ``a_s``::

    b = squeeze(a_s)                        c_s = 4 C 2^s channels
    b = steps_s(b)                          (one ScannedStack of K steps)
    if s < S-1:  (r, f_s) = split(b)        f_s = second c_s/2 channels, factored out
                 b = concat(scale_{s+1}(r), f_s)

as the authors' code (``FactorOut(2)`` then ``factored_flow(inner, Identity())``)
and openai/glow do: the first half continues, the second is factored out.
    out_s = unsqueeze(b)

so ``forward`` maps (B, H, W, C) to z of the SAME shape (B, H, W, C) and all
D = H W C dimensions go to one terminal prior. ``log_det`` sums every step's.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from nifzoo import checks
from nifzoo.flows import actnorm as actnorm_lib
from nifzoo.flows import conv1x1 as conv1x1_lib
from nifzoo.flows import coupling as coupling_lib
from nifzoo.flows import reshape as reshape_lib
from nifzoo.flows.stack import ScannedStack

COUPLINGS = ("affine", "additive")


class GlowStep(nnx.Module):
  """ActNorm -> InvConv1x1 -> coupling on images (B, h, w, channels)."""

  def __init__(self, channels: int, width: int, *, conv: str = "lu",
               coupling: str = "affine", rngs: nnx.Rngs):
    checks.check_choice(coupling, "coupling", COUPLINGS)
    self.actnorm = actnorm_lib.ActNorm(channels)
    self.conv = conv1x1_lib.InvConv1x1(channels, parameterization=conv,
                                       rngs=rngs)
    cls = (coupling_lib.AffineCoupling if coupling == "affine"
           else coupling_lib.AdditiveCoupling)
    self.coupling = cls(channels, width, rngs=rngs)

  def forward(self, x):
    """x (B, h, w, c) -> (z, log_det (B,))."""
    x, ld0 = self.actnorm.forward(x)
    x, ld1 = self.conv.forward(x)
    x, ld2 = self.coupling.forward(x)
    return x, ld0 + ld1 + ld2

  def inverse(self, z):
    """z (B, h, w, c) -> x."""
    z = self.coupling.inverse(z)
    z = self.conv.inverse(z)
    return self.actnorm.inverse(z)


def glow_num_params(input_shape: Sequence[int], num_scales: int,
                    steps_per_scale: int, width: int,
                    coupling: str = "affine") -> int:
  """Closed-form parameter count: sum_s K (2c + c^2 + coupling(c)), c = 4 C 2^s."""
  c_in, f = input_shape[-1], width
  total = 0
  for s in range(num_scales):
    c = 4 * c_in * 2**s
    out = c if coupling == "affine" else c // 2
    net = 9 * (c // 2) * f + f + f * f + f + 9 * f * out + out
    total += steps_per_scale * (2 * c + c * c + net)
  return total


class Glow(nnx.Module):
  """Multi-scale Glow: (B, H, W, C) -> (z (B, H, W, C), log_det (B,)).

  Args:
    input_shape: (H, W, C); H and W divisible by 2**num_scales.
    num_scales: number of squeeze levels S.
    steps_per_scale: Glow steps K per scale (one scanned stack per scale).
    width: hidden channels F of the coupling networks.
    conv: "lu" or "colnorm" (see :class:`InvConv1x1`).
    coupling: "affine" or "additive".
    squeeze: "channel_major" (authors) or "glow" (see :mod:`reshape`).
    unroll: each scale's :class:`ScannedStack` loop, as ``jax.lax.scan``'s
      (1: one step body in a loop; True: unrolled, same numbers).
  """

  def __init__(self, input_shape: Sequence[int], num_scales: int,
               steps_per_scale: int, width: int, *, conv: str = "lu",
               coupling: str = "affine", squeeze: str = "channel_major",
               unroll: int | bool = 1, rngs: nnx.Rngs):
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
      raise ValueError(f"input_shape must be (H, W, C), got {input_shape}.")
    for n, v in zip("HWC", input_shape):
      checks.check_positive_int(v, f"input_shape {n}")
    num_scales = checks.check_positive_int(num_scales, "num_scales")
    steps_per_scale = checks.check_positive_int(steps_per_scale,
                                                "steps_per_scale")
    width = checks.check_positive_int(width, "width")
    # conv and coupling are checked by the layers that use them (GlowStep).
    checks.check_choice(squeeze, "squeeze", reshape_lib.SQUEEZE_ORDERS)
    h, w, c = input_shape
    factor = 2**num_scales
    if h % factor or w % factor:
      raise ValueError(
          f"input_shape {input_shape}: height and width must be divisible by "
          f"2**num_scales = {factor} (num_scales={num_scales}).")
    self.input_shape = input_shape
    self.num_scales = num_scales
    self.steps_per_scale = steps_per_scale
    self.width = width
    self.squeeze_order = squeeze
    self.scale_channels = tuple(4 * c * 2**s for s in range(num_scales))
    self.scales = nnx.List([
        ScannedStack(functools.partial(GlowStep, cs, width, conv=conv,
                                       coupling=coupling),
                     steps_per_scale, unroll=unroll, rngs=rngs)
        for cs in self.scale_channels])

  def _check(self, x, name):
    x = checks.check_float(x, name)
    return checks.check_shape(x, name, (None,) + self.input_shape)

  def _forward_scale(self, s, a):
    b = reshape_lib.squeeze(a, self.squeeze_order)
    b, log_det = self.scales[s].forward(b)
    if s < self.num_scales - 1:
      half = self.scale_channels[s] // 2
      r, ld = self._forward_scale(s + 1, b[..., :half])
      b, log_det = jnp.concatenate([r, b[..., half:]], -1), log_det + ld
    return reshape_lib.unsqueeze(b, self.squeeze_order), log_det

  def _inverse_scale(self, s, out):
    b = reshape_lib.squeeze(out, self.squeeze_order)
    if s < self.num_scales - 1:
      half = self.scale_channels[s] // 2
      b = jnp.concatenate([self._inverse_scale(s + 1, b[..., :half]), b[..., half:]],
                          -1)
    b = self.scales[s].inverse(b)
    return reshape_lib.unsqueeze(b, self.squeeze_order)

  def forward(self, x):
    """x (B, H, W, C) -> (z (B, H, W, C), log_det (B,))."""
    x = self._check(x, "x")
    return self._forward_scale(0, x)

  def inverse(self, z):
    """z (B, H, W, C) -> x (B, H, W, C)."""
    z = self._check(z, "z")
    return self._inverse_scale(0, z)
