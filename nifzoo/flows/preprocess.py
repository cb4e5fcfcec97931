"""Preprocessing as bijective layers: uniform dequantisation and the logit transform.

Paper pipeline (``docs/math.md`` §5.1–§5.3), ``L = num_levels`` (``2**bits``
for the paper's data, 17 for scikit-learn's digits), ``D`` = dimensions per example::

    Dequantize: y = (x_int + u) / L,  u ~ U[0, 1)^D  (u = 1/2 without a key)
                log_det = -D log L
    Logit:      y' = lam + (1 - 2 lam) y,  v = log y' - log(1 - y')
                log_det = sum_d [log(1 - 2 lam) - log y'_d - log(1 - y'_d)]

``log p(x_int) >= E_u[log p_v(v) + log_det_logit + log_det_dequant]``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo import checks
from nifzoo.flows import _base


class Dequantize(nnx.Module):
  """Integer images in ``[0, num_levels)`` <-> floats in ``[0, 1)``."""

  def __init__(self, num_levels: int):
    checks.check_positive_int(num_levels, "num_levels")
    if num_levels < 2:
      raise ValueError(f"num_levels must be >= 2, got {num_levels}.")
    self.num_levels = int(num_levels)

  def _check_input(self, x):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
      x = jnp.asarray(x)
      dtype = x.dtype
    if dtype == jnp.bool_ or not (jnp.issubdtype(dtype, jnp.integer)
                                  or jnp.issubdtype(dtype, jnp.floating)):
      raise TypeError(f"x_int must be an integer (or integer-valued float) array, "
                      f"got dtype {dtype}.")
    if jnp.ndim(x) < 2:
      raise ValueError(f"x_int must have shape (B, ...), got {jnp.shape(x)}.")
    if checks.is_concrete(x) and np.size(x):
      arr = np.asarray(x)
      lo, hi = arr.min(), arr.max()
      if lo < 0 or hi > self.num_levels - 1:
        raise ValueError(f"x_int values must lie in [0, {self.num_levels - 1}] "
                         f"(num_levels={self.num_levels}), got range [{lo}, {hi}].")
    return x

  def forward(self, x_int, key: jax.Array | None = None):
    """x_int (B, ...) -> (y = (x_int + u)/L float32, log_det = -D log L (B,))."""
    x = self._check_input(x_int).astype(jnp.float32)
    if key is None:
      u = jnp.full(x.shape, 0.5, jnp.float32)
    else:
      u = jax.random.uniform(key, x.shape, jnp.float32)
    dims = int(np.prod(x.shape[1:], dtype=np.int64))
    log_det = -dims * math.log(self.num_levels)
    return (x + u) / self.num_levels, _base.per_example(log_det, x)

  def inverse(self, y):
    """y (B, ...) float -> clip(floor(y L), 0, L - 1) as int32."""
    y = checks.check_float(y, "y")
    x = jnp.floor(y * self.num_levels)
    return jnp.clip(x, 0, self.num_levels - 1).astype(jnp.int32)


class Logit(nnx.Module):
  """(0, 1) -> R: v = logit(lam + (1 - 2 lam) y), with its exact log-det."""

  def __init__(self, lam: float = 0.05):
    if not 0.0 < lam < 0.5:
      # lam = 0 lets float32 round y to exactly 0 or 1: an infinite logit.
      raise ValueError(f"lam must lie in (0, 0.5), got {lam}.")
    self.lam = float(lam)

  def forward(self, y):
    """y (B, ...) in [0, 1] -> (v, log_det (B,))."""
    y = checks.check_float(y, "y")
    if y.ndim < 1:
      raise ValueError(f"y must have shape (B, ...), got {y.shape}.")
    if checks.is_concrete(y) and np.size(y):
      arr = np.asarray(y)
      if arr.min() < 0 or arr.max() > 1:
        raise ValueError("y must lie in [0, 1] (dequantised data), got range "
                         f"[{arr.min()}, {arr.max()}].")
    yp = self.lam + (1.0 - 2.0 * self.lam) * y
    log_yp, log_1m_yp = jnp.log(yp), jnp.log1p(-yp)
    v = log_yp - log_1m_yp
    log_det = _base.sum_except_batch(
        math.log(1.0 - 2.0 * self.lam) - log_yp - log_1m_yp)
    return v, log_det

  def inverse(self, v):
    """v (B, ...) -> y = (sigmoid(v) - lam) / (1 - 2 lam)."""
    v = checks.check_float(v, "v")
    return (jax.nn.sigmoid(v) - self.lam) / (1.0 - 2.0 * self.lam)


class Preprocess(nnx.Module):
  """Dequantize then Logit: integer image -> unconstrained float, one log-det."""

  def __init__(self, num_levels: int, lam: float = 0.05):
    self.dequantize = Dequantize(num_levels)
    self.logit = Logit(lam)

  def forward(self, x_int, key: jax.Array | None = None):
    """x_int (B, ...) -> (v, log_det (B,)), log_det of both layers."""
    y, ld1 = self.dequantize.forward(x_int, key)
    v, ld2 = self.logit.forward(y)
    return v, ld1 + ld2

  def inverse(self, v):
    """v (B, ...) -> integer image (int32)."""
    return self.dequantize.inverse(self.logit.inverse(v))
