"""The two linear maps A of the NIF layers, behind one small interface.

Every NIF formula (``docs/math.md`` §1–§4) needs only a handful of
operations with A and with the k×k matrix K = G + c·I, G = AᵀΣ⁻¹A:

  apply(z)           A z                     (..., *latent) -> (..., *data)
  apply_t(v)         Aᵀ v                    (..., *data)   -> (..., *latent)
  gram(prec)         G = Aᵀ diag(prec) A     prec (*data,) or (B, *data)
  factor(G, c)       a factor of K = G + c I (Cholesky, or the diagonal itself)
  solve(F, v)        K⁻¹ v                   v (..., *latent)
  whiten_t(F, eps)   L⁻ᵀ eps, so cov = K⁻¹   eps (..., *latent)
  logdet(F)          log|K|                  () or (B,)
  trace_inv(F)       tr K⁻¹                  () or (B,)
  cov(F)             K⁻¹ (dense (k,k), or its diagonal shaped like the latent)
  logdet_ata()       log|AᵀA|                ()

:class:`DenseLinear` is a dense A (D, k): G is a dense k×k matrix, factored by
Cholesky (O(Dk² + k³); no D×D matrix, no explicit inverse). :class:`NearestUpsample`
is nearest-neighbour upsampling (§3): each latent pixel is copied to its rh×rw block,
so G is diagonal and every operation is O(D) with reshapes and block sums.

``prec`` may be shared, shape ``data_shape``, or per example, ``(B, *data_shape)``
(the stochastic coupling, whose Σ depends on the conditioning input); K and its factor
then carry the same leading batch axis, and ``solve``/``whiten_t`` broadcast over any
further leading axes of ``v`` (e.g. importance samples ``(N, B, *latent)``).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
import numpy as np


# Below this k the three half-size GEMMs of the split Gram are no faster than one.
_GRAM_SPLIT_MIN_K = 512

# Every product of the NIF algebra is computed at full float32 precision on every
# backend (docs/math.md §8): on TPU, JAX's default would give the D x k
# products (Gram matrix, projections of x - b, A z) bfloat16 operands. XLA:CPU
# computes float32 products in float32 either way.
HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a, b):
  """``a @ b`` at full float32 precision (``HIGHEST``)."""
  return jnp.matmul(a, b, precision=HIGHEST)


def _at_b(a, b):
  """aᵀb contracting the long axis D of a (D, m) and b (D, n) -> (m, n)."""
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())),
                             precision=HIGHEST)


def _gram_product(a):
  """aᵀa for a (D, k) -> (k, k), exactly symmetric.

  XLA has no symmetric rank-k update (BLAS SYRK), so a single ``dot_general``
  computes both triangles. From k = 512 on, the columns are split in halves
  a = [a₁ a₂] and only the blocks on and above the diagonal are multiplied,

    G = [[a₁ᵀa₁, a₁ᵀa₂], [(a₁ᵀa₂)ᵀ, a₂ᵀa₂]],

  3Dk²/2 flops instead of 2Dk². XLA fuses a producer of ``a`` (the √prec scaling) into the
  two column slices, so A is still read once.
  """
  k = a.shape[-1]
  if k < _GRAM_SPLIT_MIN_K:
    return _at_b(a, a)
  a1, a2 = a[:, :k // 2], a[:, k // 2:]
  g12 = _at_b(a1, a2)
  return jnp.block([[_at_b(a1, a1), g12], [g12.T, _at_b(a2, a2)]])


@jax.custom_jvp
def gram_matrix(a):
  """G = aᵀa for a (D, k) -> (k, k), symmetric.

  Its derivative is written as d G = S + Sᵀ with S = aᵀ da, so reverse mode
  (the transpose of that linear map) is ONE GEMM, ā = a (Ḡ + Ḡᵀ), 2Dk² flops,
  where differentiating ``dot_general(a, a)`` treats the two operands apart
  and costs two (bench/README.md, the NIF prior's overhead).
  """
  return _gram_product(a)


@gram_matrix.defjvp
def _gram_matrix_jvp(primals, tangents):
  (a,), (a_dot,) = primals, tangents
  s = _at_b(a, a_dot)
  return _gram_product(a), s + s.T


def _tri_solve(L, v, *, trans: bool):
  """Solves L y = v (or Lᵀ y = v) for lower-triangular L (..., k, k), v (..., k)."""
  fn = lambda a, b: solve_triangular(a, b, lower=True, trans="T" if trans else "N")
  return jnp.vectorize(fn, signature="(k,k),(k)->(k)")(L, v)


class DenseLinear:
  """A dense A (D, k); data shape (D,), latent shape (k,)."""

  def __init__(self, A):
    self.A = A
    self.data_shape = (A.shape[0],)
    self.latent_shape = (A.shape[1],)

  @property
  def dim(self) -> int:
    return self.data_shape[0]

  @property
  def latent_dim(self) -> int:
    return self.latent_shape[0]

  def apply(self, z):
    return _mm(z, self.A.T)

  def apply_t(self, v):
    return _mm(v, self.A)

  def gram(self, prec):
    if prec.ndim == 1:  # (D,) -> (k, k), formed once for the whole batch
      # G = A_sᵀA_s with A_s = diag(√prec) A: one GEMM contracting the long
      # axis D of the same operand twice, no transposed copy of A (faster on
      # XLA:CPU than (Aᵀ·prec) @ A; bench/README.md, "The NIF prior's overhead").
      return gram_matrix(self.A * jnp.sqrt(prec)[:, None])
    return jnp.einsum("dk,bd,dl->bkl", self.A, prec, self.A,  # (B, k, k)
                      precision=HIGHEST)

  def factor(self, G, c=0.0):
    """Lower Cholesky factor L of K = G + c I."""
    eye = jnp.eye(self.latent_dim, dtype=G.dtype)
    return jnp.linalg.cholesky(G + c * eye)

  def solve(self, L, v):
    return _tri_solve(L, _tri_solve(L, v, trans=False), trans=True)

  def whiten_t(self, L, eps):
    return _tri_solve(L, eps, trans=True)

  def logdet(self, L):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)

  def trace_inv(self, L):
    # tr K⁻¹ = ‖L⁻¹‖²_F (one triangular solve against I; only for the trace).
    eye = jnp.broadcast_to(jnp.eye(self.latent_dim, dtype=L.dtype), L.shape)
    Linv = solve_triangular(L, eye, lower=True)
    return jnp.sum(jnp.square(Linv), axis=(-2, -1))

  def cov(self, L):
    eye = jnp.broadcast_to(jnp.eye(self.latent_dim, dtype=L.dtype), L.shape)
    Linv = solve_triangular(L, eye, lower=True)
    return _mm(jnp.swapaxes(Linv, -1, -2), Linv)

  def logdet_ata(self):
    return self.logdet(jnp.linalg.cholesky(_mm(self.A.T, self.A)))


def check_factors(shape: Sequence[int], factors: Sequence[int]):
  """Validates an image shape (H, W, C) and upsampling factors (rh, rw)."""
  shape, factors = tuple(shape), tuple(factors)
  if len(shape) != 3 or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
      for s in shape):
    raise ValueError(f"shape must be (H, W, C) of positive ints, got {shape}.")
  if len(factors) != 2 or not all(
      isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f > 0
      for f in factors):
    raise ValueError(f"factors must be (rh, rw) of positive ints, got {factors}.")
  (H, W, _), (rh, rw) = shape, factors
  if H % rh or W % rw:
    raise ValueError(f"factors {factors} must divide the image size (H, W) = "
                     f"{(H, W)}.")
  if rh * rw == 1:
    raise ValueError("factors (1, 1) give no dimension reduction; need rh*rw > 1.")
  return tuple(int(s) for s in shape), tuple(int(f) for f in factors)


class NearestUpsample:
  """Nearest-neighbour upsampling (§3): z (..., h, w, C) -> x (..., h·rh, w·rw, C).

  Row (i·rh + a, j·rw + c', ch) of A has a single one, in column (i, j, ch): the
  columns have disjoint supports, so G = AᵀΣ⁻¹A is diagonal, stored as (…, h, w, C).
  """

  def __init__(self, shape: Sequence[int], factors: Sequence[int]):
    self.data_shape, self.factors = check_factors(shape, factors)
    H, W, C = self.data_shape
    rh, rw = self.factors
    self.latent_shape = (H // rh, W // rw, C)

  def apply(self, z):
    rh, rw = self.factors
    return jnp.repeat(jnp.repeat(z, rh, axis=-3), rw, axis=-2)

  def apply_t(self, v):
    """Block sums: (..., H, W, C) -> (..., h, rh, w, rw, C) -> (..., h, w, C)."""
    h, w, C = self.latent_shape
    rh, rw = self.factors
    v = v.reshape(v.shape[:-3] + (h, rh, w, rw, C))
    return jnp.sum(v, axis=(-4, -2))

  def gram(self, prec):
    return self.apply_t(prec)  # G_jj = Σ_{i∈block(j)} 1/σᵢ²

  def factor(self, G, c=0.0):
    return G + c

  def solve(self, K, v):
    return v / K

  def whiten_t(self, K, eps):
    return eps * jax.lax.rsqrt(K)

  def logdet(self, K):
    return jnp.sum(jnp.log(K), axis=(-3, -2, -1))

  def trace_inv(self, K):
    return jnp.sum(1.0 / K, axis=(-3, -2, -1))

  def cov(self, K):
    return 1.0 / K

  def logdet_ata(self):
    rh, rw = self.factors
    return jnp.asarray(math.prod(self.latent_shape) * math.log(rh * rw),
                       jnp.float32)

