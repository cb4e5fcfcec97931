"""Fréchet distance between Gaussians fitted to two feature sets.

For features f₁ ~ N(μ₁, Σ₁) and f₂ ~ N(μ₂, Σ₂) (Heusel et al. 2017, "FID")::

    FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}

``tr (Σ₁Σ₂)^{1/2}`` equals ``tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}``, the trace of the
square root of a *symmetric* PSD matrix, so both square roots come from ``eigh``
(eigenvalues clipped at 0) in float64: no complex parts, no iteration, and no
failure on the singular covariances that fewer samples than feature dimensions
give (``scipy.linalg.sqrtm`` of the non-symmetric product needs an ``eps`` offset
there in the usual FID code).

Small-sample bias: with n samples per set the plug-in estimate is biased upwards
by a term of order ``tr Σ / n`` (Chong & Forsyth 2020, "Effectively Unbiased FID
and Inception Score"): FD(n) ≈ FD(∞) + c/n. Numbers are comparable only at the
same n on both sides; every result here records its n (the paper used 25,000
samples; digits has only 300 test images, so digits FDs carry a visible bias).
"""

from __future__ import annotations

import numpy as np

BIAS_NOTE = (
    "Plug-in estimate from n samples per side: biased upwards by O(tr(Sigma)/n) "
    "(Chong & Forsyth 2020); compare only numbers computed with the same n.")


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Features (n, d) -> (mean (d,), covariance (d, d)), float64, ddof = 1."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise ValueError(f"features must have shape (n, d), got {f.shape}.")
  if f.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors, got {f.shape[0]}.")
  if not np.all(np.isfinite(f)):
    raise ValueError("features contain NaN or inf.")
  return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
  """Square root of a symmetric PSD matrix via eigh (negative round-off -> 0)."""
  w, v = np.linalg.eigh(0.5 * (a + a.T))
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64).

  mu: (d,), sigma: (d, d) symmetric PSD.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0] if mu1.ndim == 1 else -1
  for name, m in (("mu1", mu1), ("mu2", mu2)):
    if m.shape != (d,):
      raise ValueError(f"{name} must have shape (d,) = ({d},), got {m.shape}.")
  for name, s in (("sigma1", s1), ("sigma2", s2)):
    if s.shape != (d, d):
      raise ValueError(f"{name} must have shape (d, d) = ({d}, {d}), got {s.shape}.")
  for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} contains NaN or inf.")
  r1 = _psd_sqrt(s1)
  w = np.linalg.eigvalsh(r1 @ s2 @ r1)
  tr_covmean = float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
  diff = mu1 - mu2
  fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
  return max(fd, 0.0)  # Round-off can give -1e-12 for identical Gaussians.


def frechet_distance_features(features1, features2) -> float:
  """FD between Gaussians fitted to two feature sets (n1, d) and (n2, d)."""
  mu1, s1 = gaussian_stats(features1)
  mu2, s2 = gaussian_stats(features2)
  return frechet_distance(mu1, s1, mu2, s2)
