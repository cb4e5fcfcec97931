"""Uncertainty of the evaluation figures, and verdicts from a stated test
(docs/math.md §9).

bits/dim: ``values`` (n, d) holds each of n test images' bits/dim at each of
d dequantisation draws. Images are the independent units (draws of one image
are correlated), so the mean's standard error is that of the n per-image
means m_i = mean_d values[i, d] (the protocol of docs/results-digits.md):

  mean = (1/n) sum_i m_i,   SE = sd(m) / sqrt(n),   sd with ddof = 1.

A comparison of two models scored on the same images and draws (common
random numbers, ``bpd.image_key``) is the *paired* difference: the same
formulas applied to m_i(a) - m_i(b).

FD: one Fréchet distance per independent sample draw against a fixed
reference; its mean ± SE over the draws (:func:`mean_se` of a 1-D array) and
the difference of two models' means, SE = sqrt(SE_a² + SE_b²) (independent
draws, :func:`independent_difference`).

:func:`verdict` turns a difference and its SE into "better", "worse" or
"inconclusive": Welch's / the paired t test, two-sided at level ``alpha``
(|diff| / SE > t_{1 - alpha/2, df}; df = None: the normal quantile).
Lower is better for bits/dim and FD.
"""

from __future__ import annotations

import math

import numpy as np

TEST = ("two-sided t test of the difference of means over its standard error "
        "at the 5 % level (|Δ| / SE > t_{0.975, df})")


def _per_unit(values, name: str) -> np.ndarray:
  v = np.asarray(values, np.float64)
  if v.ndim == 2:
    v = v.mean(axis=1)
  if v.ndim != 1 or v.size < 2:
    raise ValueError(f"{name} must be (n,) or (n, draws) with n >= 2 units; "
                     f"got shape {np.shape(values)}.")
  if not np.all(np.isfinite(v)):
    raise ValueError(f"{name} has non-finite values.")
  return v


def mean_se(values) -> tuple[float, float]:
  """(mean, standard error) of ``values``: (n,) independent units, or
  (n, draws) whose rows are the units (each row averaged first)."""
  v = _per_unit(values, "values")
  return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def paired_difference(a, b) -> dict:
  """``a - b`` on common units: ``{"diff", "se", "df", "n"}``; ``a``, ``b``
  of equal shape (n,) or (n, draws), row i the same image (and draws) in both."""
  if np.shape(a) != np.shape(b):
    raise ValueError(f"paired values need equal shapes; got {np.shape(a)} "
                     f"and {np.shape(b)}.")
  d = _per_unit(a, "a") - _per_unit(b, "b")
  diff, se = mean_se(d)
  return {"diff": diff, "se": se, "df": d.size - 1, "n": int(d.size)}


def independent_difference(a, b) -> dict:
  """``mean(a) - mean(b)`` of independent samples (e.g. FD draws of two
  models): ``{"diff", "se", "df", "n"}`` with Welch's SE and df."""
  a, b = _per_unit(a, "a"), _per_unit(b, "b")
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  se = math.sqrt(va + vb)
  df = ((va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
        if se > 0 else float(a.size + b.size - 2))
  return {"diff": float(a.mean() - b.mean()), "se": se, "df": float(df),
          "n": (int(a.size), int(b.size))}


def verdict(diff: float, se: float, df: float | None = None, *,
            alpha: float = 0.05, lower_is_better: bool = True) -> str:
  """"better" / "worse" (for the first of the two compared: ``diff`` = first
  - second) when |diff| / se exceeds the two-sided t quantile at ``alpha``
  (df None: normal), else "inconclusive"."""
  if not (se >= 0 and math.isfinite(se) and math.isfinite(diff)):
    raise ValueError(f"verdict needs a finite diff and se >= 0; got {diff}, {se}.")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
  # Imported here: scipy.stats is slow to import, and every training and
  # evaluation process imports this module, most never for a verdict.
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  q = 1 - alpha / 2
  crit = scipy_stats.norm.ppf(q) if df is None else scipy_stats.t.ppf(q, df)
  if abs(diff) <= crit * se:
    return "inconclusive"
  return "better" if (diff < 0) == lower_is_better else "worse"


def compare(d: dict, **kwargs) -> dict:
  """``d`` (a paired or independent difference) with its ``verdict``."""
  return {**d, "verdict": verdict(d["diff"], d["se"], d.get("df"), **kwargs)}


def mean_sd(values) -> tuple[float, float]:
  """(mean, sample standard deviation, ddof = 1) of 1-D ``values``: a spread
  (e.g. across training seeds or data subsets), not an uncertainty of a mean."""
  v = _per_unit(values, "values")
  return float(v.mean()), float(v.std(ddof=1))


def fmt(mean: float, err: float, digits: int = 3) -> str:
  """"mean ± err" at ``digits`` decimals."""
  return f"{mean:.{digits}f} ± {err:.{digits}f}"
