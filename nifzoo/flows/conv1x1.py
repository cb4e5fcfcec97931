"""Invertible 1x1 convolution (Glow, ``docs/math.md`` §5.4) as a matmul on channels.

At every position the channels are mixed by a c x c matrix W::

    z[..., i] = sum_j W[i, j] x[..., j]          (z = x @ W^T)
    log_det   = P * log|det W|,                   P = number of positions (H*W)

Two parameterisations of W, both with exactly c^2 trainable numbers:

* ``"lu"`` (Glow's LU decomposition)::

      W = P_perm L (U + diag(sign_s * exp(log_abs_s)))

  ``L`` unit lower-triangular with trainable strict-lower entries (c(c-1)/2),
  ``U`` with trainable strict-upper entries (c(c-1)/2), ``log_abs_s`` (c); the
  permutation and ``sign_s`` are fixed :class:`FlowConstant`s taken from the LU
  decomposition of a random orthogonal matrix. ``log|det W| = sum(log_abs_s)``; the
  inverse is two triangular solves.
* ``"colnorm"`` (the authors' weight): an unconstrained matrix ``weight`` (random
  orthogonal init) normalised as the authors' code does, ``z = x @ Wn`` with
  ``Wn = weight / sqrt(sum(weight**2, axis=0) + 1e-5)``: every *output* channel's
  filter has (almost) unit norm. In this module's convention ``W = Wn^T``.
  ``log|det W|`` from ``slogdet``, the inverse from a linear solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo import checks
from nifzoo.flows import _base

PARAMETERIZATIONS = ("lu", "colnorm")
COLNORM_EPS = 1e-5  # The authors' constant inside the column norm.


class InvConv1x1(nnx.Module):
  """Invertible 1x1 convolution on the last axis of (B, ..., C) arrays."""

  def __init__(self, channels: int, *, parameterization: str = "lu",
               rngs: nnx.Rngs):
    checks.check_choice(parameterization, "parameterization", PARAMETERIZATIONS)
    self.channels = channels
    self.parameterization = parameterization
    w0 = nnx.initializers.orthogonal()(rngs.params(), (channels, channels),
                                       jnp.float32)
    if parameterization == "colnorm":
      self.weight = nnx.Param(w0)
    else:
      lu, _, perm = jax.lax.linalg.lu(w0)       # w0[perm] = L @ U
      lower_idx = np.tril_indices(channels, -1)
      upper_idx = np.triu_indices(channels, 1)
      s = jnp.diagonal(lu)
      self.perm = _base.FlowConstant(perm.astype(jnp.int32))
      self.sign_s = _base.FlowConstant(jnp.sign(s))
      self.lower = nnx.Param(lu[lower_idx])
      self.upper = nnx.Param(lu[upper_idx])
      self.log_abs_s = nnx.Param(jnp.log(jnp.abs(s)))

  # -- LU pieces --------------------------------------------------------------

  def _lu_factors(self):
    """Returns (L, U') with W[perm] = L @ U', U' = U + diag(sign_s exp(log_abs_s))."""
    c = self.channels
    eye = jnp.eye(c, dtype=jnp.float32)
    l = jnp.zeros((c, c), jnp.float32).at[np.tril_indices(c, -1)].set(
        self.lower[...]) + eye
    u = jnp.zeros((c, c), jnp.float32).at[np.triu_indices(c, 1)].set(
        self.upper[...])
    u = u + jnp.diag(self.sign_s[...] * jnp.exp(self.log_abs_s[...]))
    return l, u

  def weight_matrix(self):
    """The c x c matrix W acting as z = x @ W^T."""
    if self.parameterization == "colnorm":
      w = self.weight[...]
      wn = w / jnp.sqrt(jnp.sum(w * w, axis=0, keepdims=True) + COLNORM_EPS)
      return wn.T
    l, u = self._lu_factors()
    inv_perm = jnp.argsort(self.perm[...])
    return (l @ u)[inv_perm]

  def log_abs_det_weight(self):
    """log|det W| (scalar)."""
    if self.parameterization == "colnorm":
      return jnp.linalg.slogdet(self.weight_matrix())[1]
    return jnp.sum(self.log_abs_s[...])

  # -- contract ---------------------------------------------------------------

  def forward(self, x):
    """x (B, ..., C) -> (z = x @ W^T, log_det = P log|det W| (B,))."""
    x = _base.check_features(x, "x", self.channels)
    # For "lu" the permutation is applied to the c x c matrix (its rows), not to
    # the activations: a gather on (B, ..., C) would cost a pass forward and a
    # scatter-add backward.
    z = jnp.einsum("...j,ij->...i", x, self.weight_matrix())
    log_det = _base.num_positions(x) * self.log_abs_det_weight()
    return z, _base.per_example(log_det, x)

  def inverse(self, z):
    """z (B, ..., C) -> x = W^{-1} z per position (triangular solves for "lu")."""
    z = _base.check_features(z, "z", self.channels)
    shape = z.shape
    rows = z.reshape(-1, self.channels)
    if self.parameterization == "colnorm":
      x = jnp.linalg.solve(self.weight_matrix(), rows.T).T
    else:
      l, u = self._lu_factors()
      y = jnp.take(rows, self.perm[...], axis=-1)       # rows of L U' x
      # rows: y = x U'^T L^T  =>  w L^T = y, then x U'^T = w.
      w = jax.lax.linalg.triangular_solve(l, y, left_side=False, lower=True,
                                          transpose_a=True, unit_diagonal=True)
      x = jax.lax.linalg.triangular_solve(u, w, left_side=False, lower=False,
                                          transpose_a=True)
    return x.reshape(shape)
