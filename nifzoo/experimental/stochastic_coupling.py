"""Stochastic coupling (``docs/math.md`` §4.1, paper §4.2).

Split x = (x₁, x₂). x₂ is kept; x₁ is a Gaussian NIF conditioned on x₂:

    x₁ | z₁, x₂ ~ N(A z₁ + b(x₂), s²Σ(x₂)),   Σ(x₂) = diag(exp(ℓ(x₂))),

with b(·), ℓ(·) from a network on x₂ whose last layer is zero-initialised (b = 0,
Σ = I at init). The layer's latent is z = (z₁, x₂). Going data → latent, z₁ is one
sample of the stochastic inverse q(z₁|x) = N(μ(x₁; x₂), s²G(x₂)⁻¹) and the layer adds

    log p(x₁|z₁, x₂) − log q(z₁|x) = log h_s(x₁; x₂)          (exactly, for any z₁)

to a one-sample bound: E_q[log p(z₁, x₂) + log h] ≤ log p(x). Generation:
x₁ = A z₁ + b(x₂) + s·Σ(x₂)^{1/2} ε. The formulas are the §1 pure functions of
:mod:`nifzoo.nif.gaussian` with per-example b and ℓ (shape (B, *x₁)).

- :class:`StochasticCoupling`: images (B, H, W, C); x₁ = the first ``split`` channels
  (default C // 2), x₂ the rest; A = nearest-neighbour upsampling by ``factors``
  (default (2, 2)), so z₁ is (B, H/rh, W/rw, C₁); a conv conditioner (Glow's:
  3×3 conv F + ReLU → 1×1 conv F + ReLU → zero-init 3×3 conv to 2·C₁).
- :class:`VectorStochasticCoupling`: vectors (B, D); x₁ = x[:, :split],
  x₂ = x[:, split:]; a dense A (D₁, k₁) parameter; an MLP conditioner.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from nifzoo import checks
from nifzoo import flows
from nifzoo.nif import gaussian
from nifzoo.nif import linalg


class _Coupling(nnx.Module):
  """forward/inverse of a stochastic coupling; subclasses define the pieces.

  Subclasses set ``x_shape`` (event shape of x), ``x1_shape``, ``x2_shape``, ``split``
  (channels/features of x₁, the leading ones on the last axis) and define
  ``operator()`` and ``conditional(x2) -> (b, log_var)``, both (B, *x1_shape).
  """

  def operator(self):
    raise NotImplementedError

  def conditional(self, x2):
    raise NotImplementedError

  @property
  def z1_shape(self):
    return tuple(self.operator().latent_shape)

  def _split_x(self, x):
    x = gaussian.check_batch(x, "x", self.x_shape)
    return x[..., :self.split], x[..., self.split:]

  def _stats_args(self, x):
    x1, x2 = self._split_x(x)
    b, log_var = self.conditional(x2)
    return x1, x2, b, log_var

  def forward(self, x, key, noise_scale=1.0):
    """x -> (z₁ ~ q(z₁|x), x₂, log h_s(x₁; x₂) (B,)).

    z₁ is one sample of the stochastic inverse; log h is the layer's exact term of a
    one-sample bound (log p(x₁|z₁, x₂) − log q(z₁|x)). Needs s > 0.
    """
    s = gaussian.check_density_scale(noise_scale)
    if key is None:
      raise ValueError("forward samples z1 from the stochastic inverse and needs "
                       "a `key`.")
    x1, x2, b, log_var = self._stats_args(x)
    op = self.operator()
    p = gaussian.project(op, b, log_var, x1, s)
    z1 = gaussian.sample_stochastic_inverse(op, p, key, 1, s)[0]
    return z1, x2, p.log_h

  def inverse(self, z1, x2, key=None, noise_scale=0.0, noise: str = "learned"):
    """(z₁, x₂) -> x with x₁ = A z₁ + b(x₂) + s·Σ(x₂)^{1/2}ε (key None / s = 0:
    exactly on the conditional manifold; ``noise="isotropic"`` adds s·ε)."""
    z1 = gaussian.check_batch(z1, "z1", self.z1_shape)
    x2 = gaussian.check_batch(x2, "x2", self.x2_shape)
    if z1.shape[0] != x2.shape[0]:
      raise ValueError(f"z1 and x2 must have the same batch size, got "
                       f"{z1.shape[0]} and {x2.shape[0]}.")
    s = checks.check_noise_scale(noise_scale)
    gaussian.check_noise_kind(noise)
    gaussian.check_decode_key(key, s)
    b, log_var = self.conditional(x2)
    x1 = gaussian.decode(self.operator(), b, log_var, z1, s, key, noise)
    return jnp.concatenate([x1, x2.astype(x1.dtype)], axis=-1)

  def stochastic_inverse(self, x, noise_scale=1.0):
    """q(z₁|x) -> (mean (B, *z1), cov): cov is s²G(x₂)⁻¹ per example, (B, k₁, k₁)
    for the dense A, the diagonal (B, h, w, C₁) for upsampling."""
    s = checks.check_noise_scale(noise_scale)
    x1, _, b, log_var = self._stats_args(x)
    return gaussian.stochastic_inverse(self.operator(), b, log_var, x1, s)

  def log_normalizer(self, x, noise_scale=1.0):
    """log h_s(x₁; x₂): (B,)."""
    s = gaussian.check_density_scale(noise_scale)
    x1, _, b, log_var = self._stats_args(x)
    return gaussian.log_normalizer(self.operator(), b, log_var, x1, s)


def _split_conditioner_output(out, n):
  """Conditioner output (B, ..., 2n) -> (b, log_var), each (B, ..., n)."""
  return out[..., :n], out[..., n:]


class StochasticCoupling(_Coupling):
  """Image stochastic coupling: x (B, H, W, C) -> (z₁ (B, H/rh, W/rw, C₁), x₂, log h).

  Args:
    shape: (H, W, C) of x, C ≥ 2.
    factors: (rh, rw) upsampling factors of A (default (2, 2)); must divide (H, W).
    hidden: conditioner width F.
    split: C₁, the number of leading channels modelled (default C // 2); x₂ is the
      other C − C₁ channels.

  Attributes:
    conditioner: :class:`nifzoo.flows.ConvConditioner` (x₂ -> b, log_var of x₁).
  """

  def __init__(self, shape: Sequence[int], factors: Sequence[int] = (2, 2),
               hidden: int = 64, split: int | None = None, *, rngs: nnx.Rngs):
    shape = tuple(shape)
    if len(shape) != 3:
      raise ValueError(f"shape must be (H, W, C), got {shape}.")
    H, W, C = shape
    split = C // 2 if split is None else split
    if isinstance(split, bool) or not isinstance(split, int) or not 0 < split < C:
      raise ValueError(f"split must be an int in [1, C-1] = [1, {C - 1}] channels "
                       f"(C must be >= 2), got {split!r} for shape {shape}.")
    hidden = checks.check_positive_int(hidden, "hidden")
    op = linalg.NearestUpsample((H, W, split), factors)
    self.factors = op.factors
    self.x_shape = (H, W, C)
    self.x1_shape = (H, W, split)
    self.x2_shape = (H, W, C - split)
    self.split = split
    # Glow's coupling network (zero-init output: b = 0, Sigma = I at init).
    self.conditioner = flows.ConvConditioner(C - split, hidden, 2 * split,
                                             rngs=rngs)

  def operator(self):
    return linalg.NearestUpsample(self.x1_shape, self.factors)

  def conditional(self, x2):
    """b(x₂), log Σ(x₂): each (B, H, W, C₁)."""
    return _split_conditioner_output(self.conditioner(x2), self.split)


class VectorStochasticCoupling(_Coupling):
  """Vector stochastic coupling: x (B, D) -> (z₁ (B, k₁), x₂ (B, D − D₁), log h).

  Args:
    dim: D.
    split: D₁, x₁ = x[:, :D₁], x₂ = x[:, D₁:]; 1 ≤ D₁ < D.
    latent_dim: k₁ < D₁.
    hidden: MLP width.

  Attributes:
    A: ``nnx.Param`` (D₁, k₁), Glorot-normal init.
    conditioner: :class:`nifzoo.flows.MLPConditioner` (x₂ -> b, log_var of x₁).
  """

  def __init__(self, dim: int, split: int, latent_dim: int, hidden: int = 64, *,
               rngs: nnx.Rngs):
    dim = checks.check_positive_int(dim, "dim")
    split = checks.check_positive_int(split, "split")
    latent_dim = checks.check_positive_int(latent_dim, "latent_dim")
    hidden = checks.check_positive_int(hidden, "hidden")
    if split >= dim:
      raise ValueError(f"split must be < dim (x₂ must be non-empty), got split="
                       f"{split}, dim={dim}.")
    if latent_dim >= split:
      raise ValueError(f"latent_dim must be < split (the size of x₁), got "
                       f"latent_dim={latent_dim}, split={split}.")
    self.x_shape = (dim,)
    self.x1_shape = (split,)
    self.x2_shape = (dim - split,)
    self.split = split
    init = nnx.initializers.glorot_normal()
    self.A = nnx.Param(init(rngs.params(), (split, latent_dim), jnp.float32))
    # Two ReLU layers, zero-init output (b = 0, Sigma = I at init).
    self.conditioner = flows.MLPConditioner(dim - split, hidden, 2, 2 * split,
                                            rngs=rngs)

  def operator(self):
    return linalg.DenseLinear(self.A[...])

  def conditional(self, x2):
    """b(x₂), log Σ(x₂): each (B, D₁)."""
    return _split_conditioner_output(self.conditioner(x2), self.split)
