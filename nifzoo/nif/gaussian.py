"""The Gaussian NIF layer (``docs/math.md`` §1–§2) and its pure math.

Generative model: z ~ p(z) (default N(0, I_k)), x = A z + b + ε, ε ~ N(0, s²Σ),
Σ = diag(exp(log_var)); s is the test-time noise scale (s = 1: the trained model).

The math lives in pure functions of ``(op, b, log_var, x, s)``, where ``op`` is the
linear map A wrapped as a :mod:`nifzoo.nif.linalg` operator (:class:`DenseLinear` for
a dense (D, k) matrix, :class:`NearestUpsample` for §3). ``b`` and ``log_var`` have the
data shape, or a leading batch axis for per-example values (the stochastic coupling,
§4). They are written once and used by :class:`GaussianNIF` and by
:mod:`nifzoo.experimental`'s upsampling NIF and couplings. Notation (§1): r = x − b, G = AᵀΣ⁻¹A, u = AᵀΣ⁻¹r, μ = G⁻¹u,
e = r − Aμ; with the noise scale, Σ → s²Σ, G → G/s², M = I + G/s².

The pure functions do not validate; the modules' public methods do.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from nifzoo import checks
from nifzoo.flows import FlowConstant
from nifzoo.flows import standard_normal_log_prob
from nifzoo.nif import linalg

LOG_2PI = math.log(2.0 * math.pi)
NOISE_KINDS = ("learned", "isotropic")

LogPrior = Callable[[jax.Array], jax.Array]

# The named scope of the NIF prior's closed form: its operations, and their
# gradients, carry it in their op_name metadata (jaxpr, HLO), so that a compiled
# program can be checked for the precision of its products (nifzoo.tpu,
# docs/math.md "Precision"). A user's log_prior (the deep NIF's low-dimensional
# flow) runs outside it.
SCOPE = "nif_prior"


def _scoped(fn):
  """Runs ``fn`` inside ``jax.named_scope(SCOPE)``."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.named_scope(SCOPE):
      return fn(*args, **kwargs)

  return wrapped


# ----------------------------------------------------------------------------
# Pure math.
# ----------------------------------------------------------------------------


def _sum_last(v, n: int):
  """Sums the last n axes (a data or latent event)."""
  return jnp.sum(v, axis=tuple(range(-n, 0))) if n else v


def _sizes(op):
  return math.prod(op.data_shape), math.prod(op.latent_shape)


def _scale_terms(s):
  """(1/s, log s) as float32, exact for any s > 0 a float64 holds.

  A concrete s is converted in float64: in float32 s² underflows below s ~ 1e-19
  and s itself is flushed to 0 below 1.2e-38 (XLA:CPU flushes subnormals), which
  turned log p into −inf or NaN (−inf·s⁻² + ∞ from −log s). Densities then
  divide by s twice, q·s⁻¹·s⁻¹, so they stay finite wherever the exact value is
  a float32; beyond (|log p| > 3.4e38) they are −inf, never NaN.
  """
  if checks.is_concrete(s):
    s64 = np.asarray(s, np.float64)
    with np.errstate(divide="ignore"):
      return (jnp.asarray(1.0 / s64, jnp.float32),
              jnp.asarray(np.log(s64), jnp.float32))
  s = jnp.asarray(s, jnp.float32)
  return 1.0 / s, jnp.log(s)


def _precision_stats(op, b, log_var, x):
  """r = x − b, prec = Σ⁻¹ (diagonal), G = AᵀΣ⁻¹A, u = AᵀΣ⁻¹r (§1)."""
  r = x - b
  prec = jnp.exp(-log_var)
  return r, prec, op.gram(prec), op.apply_t(r * prec)


@_scoped
def log_prob(op, b, log_var, x, s=1.0):
  """Closed-form marginal log N(x; b, AAᵀ + s²Σ) (§1.6 Eq. 13, §2): (B, *data) -> (B,).

  Woodbury + determinant lemma with K = G + s²I = s²M (one Cholesky, or a diagonal
  for upsampling), ν = K⁻¹u = M⁻¹u_s:

    rᵀ(AAᵀ + s²Σ)⁻¹r = rᵀΣ⁻¹(r − Aν)/s²,   log|M| = log|K| − 2k log s,
    log p = −½ rᵀΣ⁻¹(r − Aν)/s² − ½ log|K| − (D−k) log s − ½ Σᵢℓᵢ − (D/2) log 2π.

  The quadratic form is computed from the residual r − Aν (no cancellation between
  rᵀΣ⁻¹r and uᵀM⁻¹u, which matters at small s). Requires s > 0.
  """
  D, k = _sizes(op)
  n = len(op.data_shape)
  r, prec, G, u = _precision_stats(op, b, log_var, x)
  F = op.factor(G, jnp.square(s))
  nu = op.solve(F, u)
  inv_s, log_s = _scale_terms(s)
  quad = _sum_last(prec * r * (r - op.apply(nu)), n) * inv_s * inv_s
  return (-0.5 * quad - 0.5 * op.logdet(F) - (D - k) * log_s
          - 0.5 * _sum_last(log_var, n) - 0.5 * D * LOG_2PI)


class Projection(NamedTuple):
  """The stochastic inverse q(z|x) = N(mean, s²·K⁻¹), K = G, and log h_s(x)."""
  mean: jax.Array     # μ(x), (B, *latent)
  factor: jax.Array   # factor of G (Cholesky (k,k)/(B,k,k), or diagonal)
  log_h: jax.Array    # (B,)


@_scoped
def project(op, b, log_var, x, s=1.0) -> Projection:
  """μ(x) = G⁻¹AᵀΣ⁻¹(x − b) and log h_s(x) (§1, §2).

    log h_s(x) = −eᵀΣ⁻¹e/(2s²) − (D−k) log s − ½ Σᵢℓᵢ − ½ log|G| − ½(D−k) log 2π,

  with the residual e = r − Aμ formed explicitly. μ does not depend on s; log h needs
  s > 0.
  """
  D, k = _sizes(op)
  n = len(op.data_shape)
  r, prec, G, u = _precision_stats(op, b, log_var, x)
  F = op.factor(G)
  mean = op.solve(F, u)
  e = r - op.apply(mean)
  quad = _sum_last(prec * jnp.square(e), n)
  inv_s, log_s = _scale_terms(s)
  log_h = (-0.5 * quad * inv_s * inv_s - (D - k) * log_s
           - 0.5 * _sum_last(log_var, n) - 0.5 * op.logdet(F)
           - 0.5 * (D - k) * LOG_2PI)
  return Projection(mean, F, log_h)


def log_normalizer(op, b, log_var, x, s=1.0):
  """log h_s(x) = log ∫ N(x; Az + b, s²Σ) dz (§1, §2): (B, *data) -> (B,)."""
  return project(op, b, log_var, x, s).log_h


def stochastic_inverse(op, b, log_var, x, s=1.0):
  """q(z|x) = N(μ(x), s²G⁻¹) (§1, §2) -> (mean (B, *latent), cov).

  cov is s²G⁻¹: dense (k, k) for a dense A (or (B, k, k) with per-example Σ), the
  diagonal shaped like the latent for upsampling. Valid at s = 0 (cov = 0).
  """
  p = project(op, b, log_var, x, 1.0)
  return p.mean, jnp.square(s) * op.cov(p.factor)


@_scoped
def posterior(op, b, log_var, x, s=1.0):
  """True posterior under N(0, I): N(M⁻¹u_s, M⁻¹) (§1, §2) -> (mean, cov).

  With K = G + s²I: mean = K⁻¹u, cov = s²K⁻¹ (shapes as :func:`stochastic_inverse`).
  At s = 0 it is N(μ, 0).
  """
  _, _, G, u = _precision_stats(op, b, log_var, x)
  F = op.factor(G, jnp.square(s))
  return op.solve(F, u), jnp.square(s) * op.cov(F)


@_scoped
def elbo(op, b, log_var, x, s=1.0):
  """ELBO with q = stochastic inverse and p(z) = N(0, I) (§1.5, Eq. 9–10): (B,).

    L(x) = log h_s(x) − (k/2) log 2π − ½(‖μ‖² + s² tr G⁻¹) ≤ log p_s(x).
  """
  _, k = _sizes(op)
  p = project(op, b, log_var, x, s)
  sq = _sum_last(jnp.square(p.mean), len(op.latent_shape))
  return (p.log_h - 0.5 * k * LOG_2PI
          - 0.5 * (sq + jnp.square(s) * op.trace_inv(p.factor)))


@_scoped
def sample_stochastic_inverse(op, p: Projection, key, num_samples: int, s=1.0):
  """z_i ~ q(z|x) = N(μ, s²G⁻¹): (num_samples, B, *latent)."""
  eps = jax.random.normal(key, (num_samples,) + p.mean.shape, p.mean.dtype)
  return p.mean + s * op.whiten_t(p.factor, eps)


def iw_bound(op, b, log_var, x, key, num_samples: int, s=1.0,
             log_prior: LogPrior | None = None):
  """Importance-weighted bound with proposal q = stochastic inverse (§1.7): (B,).

    log p̂_N(x) = log h_s(x) + logsumexp_i log p(z_i) − log N,   z_i ~ q(z|x).

  ``log_prior`` maps a batch of latents (M, *latent) -> (M,); it is called once on
  all N·B samples. Default: the standard normal. N = 1 is a one-sample ELBO.
  """
  if log_prior is None:
    log_prior = lambda z: standard_normal_log_prob(z, len(op.latent_shape))
  p = project(op, b, log_var, x, s)
  z = sample_stochastic_inverse(op, p, key, num_samples, s)
  lp = log_prior(z.reshape((-1,) + tuple(op.latent_shape)))
  lp = lp.reshape(z.shape[:2])
  return p.log_h + jax.nn.logsumexp(lp, axis=0) - math.log(num_samples)


def manifold_log_prob(op, b, log_var, x, log_prior: LogPrior | None = None):
  """Injective (s = 0) density on the manifold (§2): log p(μ(x)) − ½ log|AᵀA|.

  The density w.r.t. the k-dimensional volume on {Az + b}; for x off the manifold it
  is the density at its Σ-weighted projection μ(x). ``log_prior`` as in
  :func:`iw_bound`. (B, *data) -> (B,).
  """
  if log_prior is None:
    log_prior = lambda z: standard_normal_log_prob(z, len(op.latent_shape))
  mean = project(op, b, log_var, x, 1.0).mean
  with jax.named_scope(SCOPE):
    logdet_ata = op.logdet_ata()
  return log_prior(mean) - 0.5 * logdet_ata


@_scoped
def decode(op, b, log_var, z, s=0.0, key=None, noise: str = "learned"):
  """x = A z + b + s·Σ^{1/2} ε ("learned") or + s·ε ("isotropic", the authors') (§2).

  key None (or s = 0) gives x = A z + b exactly, on the manifold. (B, *latent) ->
  (B, *data).
  """
  x = op.apply(z) + b
  if key is None:
    return x
  eps = jax.random.normal(key, x.shape, x.dtype)
  if noise == "learned":
    eps = eps * jnp.exp(0.5 * log_var)
  return x + s * eps


# ----------------------------------------------------------------------------
# Validation shared by the NIF modules.
# ----------------------------------------------------------------------------


def check_density_scale(s):
  """Densities need s > 0 (s = 0 is the injective limit, where they are ±inf)."""
  checks.check_noise_scale(s)
  if checks.is_concrete(s) and float(np.asarray(s)) == 0.0:
    raise ValueError(
        "noise_scale must be > 0 for densities (log_prob, log_normalizer, elbo, "
        "iw_bound); s = 0 is the injective limit: use manifold_log_prob.")
  return s


def density_at(fn, s):
  """Evaluates a density ``fn(s)`` that is singular at s = 0 without NaNs.

  A concrete s = 0 is refused by :func:`check_density_scale`; a traced s = 0
  (a jitted or vmapped sweep over s) gives -inf, the log-density of a point
  off the manifold in the injective limit, instead of NaN.
  """
  if checks.is_concrete(s):
    return fn(s)
  positive = jnp.asarray(s) > 0
  value = fn(jnp.where(positive, s, 1.0))
  return jnp.where(positive, value, -jnp.inf)


def check_decode_key(key, s):
  """Noise needs a key: a concrete s > 0 with ``key=None`` is an error."""
  if key is None and checks.is_concrete(s) and float(np.asarray(s)) > 0:
    raise ValueError(
        f"noise_scale={float(np.asarray(s))} > 0 adds noise and needs a `key`; "
        "pass key=..., or noise_scale=0 for points on the manifold.")


def check_noise_kind(noise):
  return checks.check_choice(noise, "noise", NOISE_KINDS)


def check_batch(x, name: str, event_shape):
  """A float array (B, *event_shape)."""
  x = checks.check_float(x, name)
  return checks.check_shape(x, name, (None,) + tuple(event_shape))


# ----------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------


class LinearGaussianNIF(nnx.Module):
  """The method set of a linear-Gaussian NIF layer (§1–§3).

  Subclasses hold the ``nnx.Param``s ``b`` and ``log_var`` (data shape) and define
  :meth:`operator` (the linear map A). Every method is batched over a leading axis B,
  jit-friendly, and takes the noise scale s (``noise_scale``; Σ → s²Σ, s ≥ 0;
  densities need s > 0).
  """

  def operator(self):
    raise NotImplementedError

  @property
  def data_shape(self) -> tuple[int, ...]:
    return tuple(self.b.shape)

  def terms(self):
    """``(op, b, log_var)``: the layer's arguments of the pure functions above."""
    return self.operator(), self.b[...], self.log_var[...]

  def _x(self, x):
    return check_batch(x, "x", self.data_shape)

  def log_prob(self, x, noise_scale=1.0):
    """log p_s(x) = log N(x; b, AAᵀ + s²Σ), closed form (§1.6, Eq. 13): (B,)."""
    x, s = self._x(x), check_density_scale(noise_scale)
    return density_at(lambda s: log_prob(*self.terms(), x, s), s)

  def log_normalizer(self, x, noise_scale=1.0):
    """log h_s(x), the manifold penalty (§1, §2): (B,)."""
    x, s = self._x(x), check_density_scale(noise_scale)
    return density_at(lambda s: log_normalizer(*self.terms(), x, s), s)

  def stochastic_inverse(self, x, noise_scale=1.0):
    """q(z|x) = N(μ(x), s²G⁻¹) (§1) -> (mean (B, *latent), cov)."""
    x, s = self._x(x), checks.check_noise_scale(noise_scale)
    return stochastic_inverse(*self.terms(), x, s)

  def posterior(self, x, noise_scale=1.0):
    """p(z|x) under N(0, I) = N(M⁻¹u, M⁻¹) (§1) -> (mean (B, *latent), cov)."""
    x, s = self._x(x), checks.check_noise_scale(noise_scale)
    return posterior(*self.terms(), x, s)

  def elbo(self, x, noise_scale=1.0):
    """Closed-form ELBO for the N(0, I) prior, q = stochastic inverse (§1.5): (B,)."""
    x, s = self._x(x), check_density_scale(noise_scale)
    return density_at(lambda s: elbo(*self.terms(), x, s), s)

  def iw_bound(self, x, key, num_samples: int, log_prior: LogPrior | None = None,
               noise_scale=1.0):
    """Importance-weighted bound (§1.7), q = stochastic inverse: (B,).

    ``log_prior`` maps latents (M, *latent) -> (M,); default N(0, I).
    """
    x, s = self._x(x), check_density_scale(noise_scale)
    n = checks.check_positive_int(num_samples, "num_samples")
    return density_at(
        lambda s: iw_bound(*self.terms(), x, key, n, s, log_prior), s)

  def manifold_log_prob(self, x, log_prior: LogPrior | None = None):
    """s = 0 density on the manifold: log p(μ(x)) − ½ log|AᵀA| (§2): (B,)."""
    return manifold_log_prob(*self.terms(), self._x(x), log_prior)

  def decode(self, z, key=None, noise_scale=0.0, noise: str = "learned"):
    """x = A z + b + s·Σ^{1/2}ε (learned) or + s·ε (isotropic) (§2): (B, *data).

    key None or s = 0: exactly A z + b.
    """
    op, b, log_var = self.terms()
    z = check_batch(z, "z", op.latent_shape)
    s = checks.check_noise_scale(noise_scale)
    check_decode_key(key, s)
    return decode(op, b, log_var, z, s, key, check_noise_kind(noise))

  def sample(self, key, n: int, temperature=1.0, noise_scale=1.0,
             noise: str = "learned"):
    """z ~ N(0, T²I), x = decode(z, s, noise) (§2): (n, *data)."""
    op, b, log_var = self.terms()
    n = checks.check_positive_int(n, "n")
    t = checks.check_temperature(temperature)
    s = checks.check_noise_scale(noise_scale)
    check_noise_kind(noise)
    key_z, key_x = jax.random.split(key)
    z = t * jax.random.normal(key_z, (n,) + tuple(op.latent_shape), b.dtype)
    return decode(op, b, log_var, z, s, key_x, noise)


class GaussianNIF(LinearGaussianNIF):
  """Dense Gaussian NIF (§1): x = A z + b + ε, A (D, k), ε ~ N(0, s²Σ).

  Attributes:
    A: ``nnx.Param`` (D, k), Glorot-normal init.
    b: ``nnx.Param`` (D,), zeros (a fixed zero ``FlowConstant`` when
      ``use_bias=False``, as in the authors' code).
    log_var: ``nnx.Param`` (D,), ℓ = log σ², zeros (Σ = I at init).

  Densities cost O(Dk² + k³) per call (G formed once per batch, Cholesky only).
  ``stochastic_inverse``/``posterior`` return (mean (B, k), cov (k, k)).
  """

  def __init__(self, dim: int, latent_dim: int, *, use_bias: bool = True,
               rngs: nnx.Rngs):
    dim = checks.check_positive_int(dim, "dim")
    latent_dim = checks.check_positive_int(latent_dim, "latent_dim")
    if latent_dim >= dim:
      raise ValueError(f"latent_dim must be < dim, got latent_dim={latent_dim}, "
                       f"dim={dim}.")
    self.dim, self.latent_dim = dim, latent_dim
    init = nnx.initializers.glorot_normal()
    self.A = nnx.Param(init(rngs.params(), (dim, latent_dim), jnp.float32))
    # use_bias=False is the authors' code (no b): b stays a fixed zero vector.
    bias_type = nnx.Param if use_bias else FlowConstant
    self.b = bias_type(jnp.zeros((dim,), jnp.float32))
    self.log_var = nnx.Param(jnp.zeros((dim,), jnp.float32))

  def operator(self):
    return linalg.DenseLinear(self.A[...])
