"""Coupling layers (Dinh et al. 2017; Glow's conditioner; the authors' tanh log-scale).

The input is split on its last axis into ``x_a = x[..., :c_a]`` (transformed) and
``x_b = x[..., c_a:]`` (kept, it conditions ``x_a``)::

    affine:    z_a = x_a * exp(log_s) + t,   log_s = tanh(raw),   (t, raw) = NN(x_b)
               log_det = sum over positions and channels of log_s
    additive:  z_a = x_a + t,                t = NN(x_b),          log_det = 0
    z = concat(z_a, x_b)

The last layer of every conditioner is zero-initialised, so each coupling starts as
the identity. Image conditioner (Glow; ``F = width``, ``c`` channels, ``c_a = c/2``)::

    3x3 conv (c/2 -> F) + bias, ReLU
    1x1 conv (F -> F) + bias, ReLU          (a dense layer on the channel axis)
    3x3 conv (F -> c_out) + bias, zero-init (c_out = c affine, c/2 additive)

Parameters: affine ``9(c/2)F + F + F^2 + F + 9Fc + c``; additive
``9(c/2)F + F + F^2 + F + 9F(c/2) + c/2``. The affine network's output channels are
``[t (c/2) | raw (c/2)]``. The conv, dense and ReLU layers are
:mod:`nifzoo.flows.layers` (each backend's fastest implementation, the same numbers).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from nifzoo import checks
from nifzoo.flows import _base
from nifzoo.flows import layers as layers_lib

_zeros = nnx.initializers.zeros


class ConvConditioner(nnx.Module):
  """Glow's coupling network: (B, H, W, c_in) -> (B, H, W, c_out)."""

  def __init__(self, in_channels: int, width: int, out_channels: int, *,
               rngs: nnx.Rngs):
    self.conv_in = layers_lib.Conv3x3(in_channels, width, rngs=rngs)
    self.hidden = layers_lib.Dense(width, width, rngs=rngs)     # the 1x1 conv
    self.conv_out = layers_lib.Conv3x3(width, out_channels, kernel_init=_zeros,
                                       bias_init=_zeros, rngs=rngs)

  def __call__(self, x):
    h = layers_lib.relu(self.conv_in(x))
    h = layers_lib.relu(self.hidden(h))
    return self.conv_out(h)


class MLPConditioner(nnx.Module):
  """``depth`` hidden dense layers of ``hidden`` units with ReLU, zero-init output."""

  def __init__(self, in_features: int, hidden: int, depth: int,
               out_features: int, *, rngs: nnx.Rngs):
    sizes = [in_features] + [hidden] * depth
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.out = nnx.Linear(sizes[-1], out_features, kernel_init=_zeros,
                          bias_init=_zeros, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = layers_lib.relu(layer(x))
    return self.out(x)


def _check_even_channels(channels, name="channels"):
  checks.check_positive_int(channels, name)
  if channels % 2:
    raise ValueError(f"{name} must be even to split into two halves for a "
                     f"coupling layer, got {channels}.")


class _ImageCoupling(nnx.Module):
  """Shared split/merge for image couplings on (B, H, W, C)."""

  channels: int

  def _split(self, x, name):
    x = _base.check_features(x, name, self.channels, rank=4)
    half = self.channels // 2
    return x[..., :half], x[..., half:]


class AffineCoupling(_ImageCoupling):
  """Affine coupling with log-scale ``tanh(raw)``; images (B, H, W, C), C even."""

  def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs):
    _check_even_channels(channels)
    checks.check_positive_int(width, "width")
    self.channels = channels
    self.net = ConvConditioner(channels // 2, width, channels, rngs=rngs)

  def _shift_log_scale(self, x_b):
    out = self.net(x_b)
    half = self.channels // 2
    return out[..., :half], jnp.tanh(out[..., half:])

  def forward(self, x):
    """x (B,H,W,C) -> (z, log_det (B,)); z_a = x_a exp(tanh(raw)) + t."""
    x_a, x_b = self._split(x, "x")
    t, log_s = self._shift_log_scale(x_b)
    z_a = x_a * jnp.exp(log_s) + t
    return jnp.concatenate([z_a, x_b], -1), _base.sum_except_batch(log_s)

  def inverse(self, z):
    """z (B,H,W,C) -> x; x_a = (z_a - t) exp(-tanh(raw))."""
    z_a, x_b = self._split(z, "z")
    t, log_s = self._shift_log_scale(x_b)
    return jnp.concatenate([(z_a - t) * jnp.exp(-log_s), x_b], -1)


class AdditiveCoupling(_ImageCoupling):
  """Additive (volume-preserving) coupling; images (B, H, W, C), C even.

  Parameters: ``9(c/2)F + F + F^2 + F + 9F(c/2) + c/2`` (the net outputs only t).
  """

  def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs):
    _check_even_channels(channels)
    checks.check_positive_int(width, "width")
    self.channels = channels
    self.net = ConvConditioner(channels // 2, width, channels // 2, rngs=rngs)

  def forward(self, x):
    """x (B,H,W,C) -> (z, zeros (B,)); z_a = x_a + t(x_b)."""
    x_a, x_b = self._split(x, "x")
    z = jnp.concatenate([x_a + self.net(x_b), x_b], -1)
    return z, jnp.zeros((z.shape[0],), jnp.float32)

  def inverse(self, z):
    """z (B,H,W,C) -> x; x_a = z_a - t(x_b)."""
    z_a, x_b = self._split(z, "z")
    return jnp.concatenate([z_a - self.net(x_b), x_b], -1)


class VectorAffineCoupling(nnx.Module):
  """Affine coupling on vectors (B, D) with an MLP conditioner, log-scale tanh.

  ``x_a = x[:, :D//2]`` is transformed, ``x_b = x[:, D//2:]`` conditions it; the MLP
  has ``depth`` hidden layers of ``hidden`` units and outputs ``[t | raw]``
  (2 * (D//2) numbers, zero-initialised).
  """

  def __init__(self, dim: int, hidden: int, depth: int, *, rngs: nnx.Rngs):
    checks.check_positive_int(dim, "dim")
    checks.check_positive_int(hidden, "hidden")
    checks.check_positive_int(depth, "depth")
    if dim < 2:
      raise ValueError(f"dim must be >= 2 for a coupling layer, got {dim}.")
    self.dim = dim
    self.split = dim // 2
    self.net = MLPConditioner(dim - self.split, hidden, depth, 2 * self.split,
                              rngs=rngs)

  def _shift_log_scale(self, x_b):
    out = self.net(x_b)
    return out[:, :self.split], jnp.tanh(out[:, self.split:])

  def forward(self, x):
    """x (B, D) -> (z, log_det (B,))."""
    x = _base.check_features(x, "x", self.dim, rank=2)
    x_a, x_b = x[:, :self.split], x[:, self.split:]
    t, log_s = self._shift_log_scale(x_b)
    z_a = x_a * jnp.exp(log_s) + t
    return jnp.concatenate([z_a, x_b], -1), jnp.sum(log_s, axis=1)

  def inverse(self, z):
    """z (B, D) -> x."""
    z = _base.check_features(z, "z", self.dim, rank=2)
    z_a, x_b = z[:, :self.split], z[:, self.split:]
    t, log_s = self._shift_log_scale(x_b)
    return jnp.concatenate([(z_a - t) * jnp.exp(-log_s), x_b], -1)
