"""Turn a trained normalizing flow into a NIF, in closed form (docs/math.md §7).

The Gaussian NIF prior N(v; b, AAᵀ + Σ) on the flow latent v contains the NF's
N(0, I) (A = 0, b = 0, Σ = I). With Σ = σ²I its maximum-likelihood fit to a
set of latents is probabilistic PCA (Tipping & Bishop 1999): with the latents'
mean b and covariance S = U Λ Uᵀ (eigenvalues λ₁ ≥ … ≥ λ_D),

    σ² = mean(λ_{k+1}, …, λ_D),   A = U_k (Λ_k − σ² I)^{1/2}     (any rotation of A)

so the converted model's likelihood of those latents can only be higher than
the NF's, with no gradient step, and it gains the noise scale s. A diagonal Σ
(factor analysis) is fitted by EM started from the PPCA solution.

Numerics: the covariance is accumulated in float64 on the host from batches of
latents (never holding all latents). Up to ``EIGH_MAX_DIM`` dimensions it is
formed (D × D) and diagonalised with ``numpy.linalg.eigh``; above that (CelebA:
D = 12,288) the top-k eigenpairs come from randomized subspace iteration over
streamed batches (Halko et al. 2011) and σ² from the trace, so no D × D matrix
is formed; factor analysis needs S and is only offered up to ``EIGH_MAX_DIM``.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nifzoo import checks
from nifzoo import evaluate as evaluate_lib
from nifzoo import fileio
from nifzoo import mesh as mesh_lib
from nifzoo import models
from nifzoo import variables as variables_lib

EIGH_MAX_DIM = 4096
NOISE_MODELS = ("isotropic", "diagonal")


class PriorFit(NamedTuple):
  """A fitted Gaussian NIF prior: x ~ N(b, A Aᵀ + diag(exp(log_var)))."""
  A: np.ndarray         # (D, k) float64
  b: np.ndarray         # (D,)
  log_var: np.ndarray   # (D,)
  method: str           # "eigh" | "randomized"


# ------------------------------------------------------------------ statistics


class Moments(NamedTuple):
  n: int
  mean: np.ndarray      # (D,) float64
  cov: np.ndarray | None  # (D, D) float64, MLE (divided by n); None above EIGH_MAX_DIM
  trace: float          # tr S


def moments(batches: Iterable[np.ndarray], *, full: bool = True) -> Moments:
  """Mean and (if ``full``) covariance of latent batches (b, D), in float64.

  Shifted accumulation (by the first batch's mean) keeps the float64 sums
  well conditioned.
  """
  n, shift, s1, s2, sq = 0, None, None, None, 0.0
  for v in batches:
    v = np.asarray(v, np.float64).reshape(len(v), -1)
    if shift is None:
      shift = v.mean(0)
      s1 = np.zeros_like(shift)
      s2 = np.zeros((v.shape[1],) * 2) if full else None
    c = v - shift
    n += len(c)
    s1 += c.sum(0)
    sq += float(np.sum(c * c))
    if full:
      s2 += c.T @ c
  if not n:
    raise ValueError("No latents to fit.")
  d = s1 / n
  cov = s2 / n - np.outer(d, d) if full else None
  return Moments(n, shift + d, cov, sq / n - float(d @ d))


def ppca_from_eig(mean, eigvals, eigvecs, trace, dim, k) -> PriorFit:
  """PPCA closed form from the top-k eigenpairs and the covariance's trace."""
  lam = np.asarray(eigvals, np.float64)[:k]
  sigma2 = (trace - lam.sum()) / (dim - k)   # mean of the discarded eigenvalues
  sigma2 = max(sigma2, 1e-12)
  A = eigvecs[:, :k] * np.sqrt(np.maximum(lam - sigma2, 0.0))
  return PriorFit(A, np.asarray(mean), np.full(dim, np.log(sigma2)), "")


def fit_ppca(m: Moments, k: int) -> PriorFit:
  """Isotropic fit from a full covariance (``eigh``, float64)."""
  dim = m.mean.shape[0]
  w, u = np.linalg.eigh(m.cov)
  w, u = w[::-1], u[:, ::-1]
  return ppca_from_eig(m.mean, w, u, float(np.trace(m.cov)), dim, k)._replace(
      method="eigh")


def fit_ppca_randomized(batches: Callable[[], Iterable[np.ndarray]], m: Moments,
                        k: int, *, oversample: int = 10, iters: int = 4,
                        seed: int = 0) -> PriorFit:
  """Isotropic fit without a D × D matrix: randomized subspace iteration.

  ``batches()`` re-reads the latents; every pass computes S Q for a (D, k + p)
  block Q as Σ_b cᵀ(c Q)/n with c = v − mean.
  """
  dim = m.mean.shape[0]
  q = np.random.default_rng(seed).standard_normal((dim, k + oversample))
  q, _ = np.linalg.qr(q)

  def cov_times(q):
    out = np.zeros_like(q)
    for v in batches():
      c = np.asarray(v, np.float64).reshape(len(v), -1) - m.mean
      out += c.T @ (c @ q)
    return out / m.n

  for _ in range(iters):
    q, _ = np.linalg.qr(cov_times(q))
  sq = cov_times(q)
  w, u = np.linalg.eigh(q.T @ sq)             # Rayleigh-Ritz
  w, u = w[::-1], q @ u[:, ::-1]
  return ppca_from_eig(m.mean, w, u, m.trace, dim, k)._replace(method="randomized")


def fit_factor_analysis(m: Moments, k: int, *, num_iters: int = 50,
                        init: PriorFit | None = None) -> PriorFit:
  """Diagonal Σ = Ψ by EM (Rubin & Thayer 1982), started from PPCA.

  E-step: β = (I + AᵀΨ⁻¹A)⁻¹AᵀΨ⁻¹; M-step: A ← Sβᵀ(I − βA + βSβᵀ)⁻¹,
  Ψ ← diag(S − A β S). Each step does not decrease the likelihood.
  """
  S = m.cov
  fit = init or fit_ppca(m, k)
  A, psi = fit.A, np.exp(fit.log_var)
  eye = np.eye(k)
  for _ in range(num_iters):
    ap = A / psi[:, None]
    beta = np.linalg.solve(eye + A.T @ ap, ap.T)          # (k, D)
    sb = S @ beta.T                                       # (D, k)
    ezz = eye - beta @ A + beta @ sb
    A = np.linalg.solve(ezz.T, sb.T).T
    psi = np.maximum(np.diag(S) - np.sum(A * sb, axis=1), 1e-12)
  return PriorFit(A, m.mean, np.log(psi), "eigh+em")


def gaussian_log_likelihood(fit: PriorFit, m: Moments) -> float:
  """Mean log N(v; b, AAᵀ + Σ) over the fitted latents, from their moments (float64)."""
  dim = m.mean.shape[0]
  cov = fit.A @ fit.A.T + np.diag(np.exp(fit.log_var))
  sign, logdet = np.linalg.slogdet(cov)
  d = m.mean - fit.b
  quad = np.trace(np.linalg.solve(cov, m.cov)) + d @ np.linalg.solve(cov, d)
  return float(-0.5 * (quad + logdet + dim * np.log(2 * np.pi)))


# ------------------------------------------------------------------ models


def latent_batches(model, data_config, split: str = "train", *,
                   batch_size: int = 256, key=None, mesh=None,
                   max_images: int | None = None):
  """A function returning an iterator of flow latents (b, D) of the split.

  Each image once (padding dropped); dequantisation noise from ``key`` (fixed,
  so every pass sees the same latents).
  """
  key = jax.random.key(0) if key is None else key
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, mesh_lib.replicated(mesh))

  @jax.jit
  def latents(state, images, key):
    return nnx.merge(graphdef, state).flow_latent(images, key=key)[0]

  def batches():
    for i, (images, _, mask) in enumerate(evaluate_lib.eval_batches(
        data_config, split, batch_size, max_images=max_images)):
      v = latents(state, mesh_lib.global_batch(mesh, images),
                  jax.random.fold_in(key, i))
      yield np.asarray(jax.device_get(v))[mask]

  return batches


def nif_config(config, latent_dim: int) -> ml_collections.ConfigDict:
  """The NF's config with a Gaussian NIF prior of dimension ``latent_dim``."""
  c = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict")
                                else config)
  c.model.prior = "nif"
  c.model.latent_dim = int(latent_dim)
  c.model.nif_bias = True
  c.model.sample_noise = "learned"
  c.name = f"{c.name.split('-')[0]}-nif{latent_dim}-from-nf"
  return c


def nf_to_nif(model, latent_dim: int, *, data_config=None, split: str = "train",
              noise: str = "isotropic", batch_size: int = 256, key=None,
              mesh=None, max_images: int | None = None,
              batches: Callable[[], Iterable[np.ndarray]] | None = None,
              method: str = "auto", config=None) -> tuple[models.ImageFlow, dict]:
  """A NIF-k ``ImageFlow`` sharing ``model``'s Glow, its prior fitted in closed form.

  Args:
    model: a trained NF (``prior == "normal"``), e.g. ``zoo.load("digits-nf")``.
    latent_dim: k.
    data_config, split: the images whose latents the prior is fitted to
      (default: ``model.config.data``, the train split).
    noise: "isotropic" (PPCA) or "diagonal" (factor analysis by EM).
    batches: instead of images, a function returning an iterator of latents.
    method: "auto" (eigh up to EIGH_MAX_DIM, randomized above), "eigh" or
      "randomized".
    config: the NF's config (default: ``model.config``).

  Returns:
    (the NIF model, report) with the report's fit method, number of latents,
    the fitted σ² range, the mean log-likelihood of the latents under the NF
    prior and the fitted prior (nats per image, float64, from the moments),
    and the time taken.
  """
  t0 = time.time()
  if model.prior.has_manifold:
    raise ValueError(f"nf_to_nif needs a normalizing flow (prior 'normal'), got "
                     f"a model with prior {model.prior.name!r}.")
  checks.check_choice(noise, "noise", NOISE_MODELS)
  checks.check_choice(method, "method", ("auto", "eigh", "randomized"))
  k = checks.check_positive_int(latent_dim, "latent_dim")
  if not k < model.dim:
    raise ValueError(f"latent_dim must be < D = {model.dim}, got {k}.")
  config = config if config is not None else getattr(model, "config", None)
  if config is None:
    raise ValueError("nf_to_nif needs the model's config: pass config=, or a "
                     "model from zoo.load (which carries model.config).")
  if batches is None:
    batches = latent_batches(model, data_config or config.data, split,
                             batch_size=batch_size, key=key, mesh=mesh,
                             max_images=max_images)
  if method == "auto":
    method = "eigh" if model.dim <= EIGH_MAX_DIM else "randomized"
  if noise == "diagonal" and method != "eigh":
    raise ValueError(f"noise='diagonal' needs the full covariance (D <= "
                     f"{EIGH_MAX_DIM}, method='eigh'); D = {model.dim}.")
  m = moments(batches(), full=method == "eigh")
  if method == "eigh":
    fit = fit_ppca(m, k)
    if noise == "diagonal":
      fit = fit_factor_analysis(m, k, init=fit)
  else:
    fit = fit_ppca_randomized(batches, m, k)
  report = {"method": fit.method, "noise": noise, "num_latents": m.n,
            "latent_dim": k, "dim": model.dim,
            "sigma2_min": float(np.exp(fit.log_var.min())),
            "sigma2_max": float(np.exp(fit.log_var.max()))}
  if m.cov is not None:
    nf = PriorFit(np.zeros((model.dim, 1)), np.zeros(model.dim),
                  np.zeros(model.dim), "nf")
    report["train_log_prior_nf"] = gaussian_log_likelihood(nf, m)
    report["train_log_prior_nif"] = gaussian_log_likelihood(fit, m)
  new_config = nif_config(config, k)
  nif_model = models.build(new_config, rngs=models.seeded_rngs(new_config.seed))
  nnx.update(nif_model.glow, nnx.state(model.glow))
  nif_model.nif.A[...] = jnp.asarray(fit.A, jnp.float32)
  nif_model.nif.b[...] = jnp.asarray(fit.b, jnp.float32)
  nif_model.nif.log_var[...] = jnp.asarray(fit.log_var, jnp.float32)
  nif_model.config = ml_collections.FrozenConfigDict(new_config)
  nif_model.entry = None
  report["seconds"] = round(time.time() - t0, 2)
  return nif_model, report


def save_workdir(model, report: dict, out: str) -> str:
  """Writes a converted ``model`` as a workdir that ``zoo.load``,
  ``registry.register`` and ``config.init_from`` read (local or ``gs://``):
  ``config.json``, the variables-only checkpoint ``variables/`` and ``report``
  as ``convert.json``. Returns the workdir."""
  out = str(fileio.as_path(out))
  fileio.write_text(fileio.join(out, variables_lib.CONFIG_FILE),
                    model.config.as_configdict().to_json_best_effort(indent=2))
  variables_lib.save(model, fileio.join(out, variables_lib.VARIABLES_DIR))
  fileio.write_json(fileio.join(out, "convert.json"), report)
  return out
