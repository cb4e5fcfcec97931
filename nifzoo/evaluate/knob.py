"""One test-time knob per model, tuned the same way, and FD over sample draws.

The knob is the temperature T of the base latent for a flow without a
manifold (the NF), the noise scale s for a NIF, and for a NIF then also its
temperature T at the tuned s ("T where it helps": it stays 1 unless another
value scores better); all default to 1, the trained model. The protocol, the
same for every model (docs/math.md §9.5; stated in docs/results-digits.md):

1. *Tune* on a fixed random subsample of ``tune_size`` train images
   (``sweep.tune_indices``): at each knob value of the grid, ``tune_draws``
   independent sets of ``num_samples`` samples (the same keys at every value:
   common random numbers), FD to the subsample; the tuned knob is the grid
   value of least mean FD. While it sits at the grid's top (bottom) edge the
   grid is extended by ``step`` up to ``upper`` (down to ``lower``), so the
   optimum is interior or the stated limit is reached (``tuning`` says which).
   For a NIF: first s at T = 1, then T at s = s* (same grid rule, same keys).
2. *Report* on the test split: ``test_draws`` independent sets of
   ``num_samples`` samples (draw r: ``fold_in(key, r)``, the same draws at
   every setting), FD of each to the fixed test reference (every test image,
   dequantised with a fixed key), at the default knobs, at the tuned ones and,
   for a NIF, at s* with T = 1: mean ± SE over the draws (``stats.mean_se``).

The test images never choose the knob. ``run`` is the ``knob`` evaluation of
a job (``nifzoo.evaluate.job``).
"""

from __future__ import annotations

import jax
import numpy as np

from nifzoo import data as data_lib
from nifzoo.evaluate import fd as fd_lib
from nifzoo.evaluate import frechet
from nifzoo.evaluate import metrics
from nifzoo.evaluate import stats
from nifzoo.evaluate import sweep

DEFAULT_GRID = tuple(round(0.5 + 0.1 * i, 1) for i in range(8))  # 0.5 ... 1.2
STEP, LOWER, UPPER = 0.1, 0.1, 2.0


def knob_name(model) -> str:
  """"noise_scale" (s) for a NIF, "temperature" (T) for a flow without a manifold."""
  return "noise_scale" if model.prior.has_manifold else "temperature"


def tune_grid(fd_at, grid=DEFAULT_GRID, *, step: float = STEP,
              lower: float = LOWER, upper: float = UPPER) -> dict:
  """The knob value of least mean ``fd_at(value)`` (an array of FDs over
  draws), the grid extended by ``step`` while the best value is at its edge
  and within [lower, upper].

  Returns ``{"grid", "fd_mean", "fd_se" (lists over the sorted grid),
  "best", "tuning": "interior" | "at the upper limit <u>" | "at the lower
  limit <l>"}``.
  """
  if not grid or step <= 0 or not lower <= min(grid) <= max(grid) <= upper:
    raise ValueError(f"grid {tuple(grid)} must be non-empty within [lower, upper]"
                     f" = [{lower}, {upper}], with step > 0 (got {step}).")
  values = {round(float(v), 6): np.asarray(fd_at(float(v))) for v in grid}
  while True:
    best = min(values, key=lambda v: values[v].mean())
    lo, hi = min(values), max(values)
    nxt = (round(best + step, 6) if best == hi and best + step <= upper + 1e-9 else
           round(best - step, 6) if best == lo and best - step >= lower - 1e-9 else None)
    if nxt is None:
      break
    values[nxt] = np.asarray(fd_at(nxt))
  grid = sorted(values)
  status = ("interior" if lo < best < hi else
            f"at the upper limit {upper:g}" if best == hi else
            f"at the lower limit {lower:g}")
  return {"grid": grid,
          "fd_mean": [float(values[v].mean()) for v in grid],
          "fd_se": [stats.mean_se(values[v])[1] if values[v].size > 1 else None
                    for v in grid],
          "best": best, "tuning": status}


def tune_knobs(fd_at, knob: str, grid=DEFAULT_GRID, **limits) -> dict:
  """The protocol's tuning (module docstring, step 1) on ``fd_at(knobs)``, an
  array of FDs over draws at the settings ``knobs`` ({"noise_scale": s,
  "temperature": T}, missing ones 1). ``knob``: "temperature" (one stage) or
  "noise_scale" (s at T = 1, then T at s*).

  Returns ``{"knobs": the tuned settings, "tune": the first stage's
  :func:`tune_grid`, "tune_temperature": the second's (a NIF) or None}``.
  """
  tune = tune_grid(lambda v: fd_at({knob: v}), grid, **limits)
  knobs, tune_t = {knob: tune["best"]}, None
  if knob == "noise_scale":
    tune_t = tune_grid(lambda v: fd_at({knob: tune["best"], "temperature": v}),
                       grid, **limits)
    knobs["temperature"] = tune_t["best"]
  return {"knobs": knobs, "tune": tune, "tune_temperature": tune_t}


def fd_draws(sampler, feature_fn, reference_stats, num_samples: int, *, key,
             draws: int, knobs: dict, batch_size: int = 256) -> np.ndarray:
  """FDs (draws,) of ``draws`` independent sample sets (draw r: ``fold_in(key,
  r)``) at the settings ``knobs`` (``noise_scale``, ``temperature``; missing
  ones 1) to ``reference_stats``."""
  return np.array([fd_lib.frechet_to_reference(
      sampler, feature_fn, reference_stats, num_samples,
      key=jax.random.fold_in(key, r), batch_size=batch_size, **knobs)
                   for r in range(draws)])


def test_reference(feature_fn, data_config, key, batch_size: int = 256):
  """(mu, sigma) of every test image's features: the fixed reference of
  :func:`tuned_fd` with ``key`` (dequantised with ``split(key, 4)[1]``)."""
  return frechet.gaussian_stats(fd_lib.split_features(
      feature_fn, data_config, "test", key=jax.random.split(key, 4)[1],
      batch_size=batch_size))


def real_fd_draws(feature_fn, data_config, reference_stats, size: int, *,
                  draws: int = 20, seed: int = 0, batch_size: int = 256) -> np.ndarray:
  """The protocol's floor: FDs (draws,) of ``draws`` random subsets of
  ``size`` *train* images (subset r: ``tune_indices`` with seed ``seed + r``,
  dequantised with key(seed + r)) to ``reference_stats``."""
  return np.array([frechet.frechet_distance(*frechet.gaussian_stats(
      fd_lib.split_features(
          feature_fn, data_config, "train", key=jax.random.key(seed + r),
          indices=sweep.tune_indices(data_config, "train", size, seed + r),
          batch_size=batch_size)), *reference_stats) for r in range(draws)])


def plot_tuning(results: dict, path: str, title: str = "",
                floor: tuple[float, float] | None = None) -> str:
  """One PNG: the tuning curves (mean FD to the train subsample ± SE over the
  draws, a band) of s (the NIFs, at T = 1) and of T (the NF; each NIF at its
  s*), ★ the tuned values; and each model's test FD (mean ± SE) at the
  default and the tuned knobs, with the real-data ``floor`` (mean, SD) as a
  band. ``results``: {label: :func:`tuned_fd` result}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from nifzoo import images as images_lib  # pylint: disable=g-import-not-at-top
  fig, (ax_s, ax_t, ax_e) = plt.subplots(1, 3, figsize=(15, 4.2))

  def curve(ax, t, c, label, ls):
    g, m = np.asarray(t["grid"]), np.asarray(t["fd_mean"])
    se = np.asarray([0.0 if v is None else v for v in t["fd_se"]])
    ax.plot(g, m, color=c, label=label, ls=ls)
    ax.fill_between(g, m - se, m + se, color=c, alpha=0.2)
    ax.plot([t["best"]], [m[list(g).index(t["best"])]], "*", color=c, ms=10)

  for i, (label, r) in enumerate(results.items()):
    c = f"C{i % 10}"
    if r["knob"] == "noise_scale":
      curve(ax_s, r["tune"], c, label, "-")
      if r.get("tune_temperature"):
        curve(ax_t, r["tune_temperature"], c, f"{label} (s = {r['knob_star']:g})", ":")
    else:
      curve(ax_t, r["tune"], c, label, "--")
    for j, which in enumerate(("default", "tuned")):
      ax_e.errorbar([i + 0.2 * j], [r[which]["mean"]], yerr=[r[which]["se"]],
                    fmt="o" if j == 0 else "*", color=c, ms=5 if j == 0 else 9)
  if floor is not None:
    ax_e.axhspan(floor[0] - floor[1], floor[0] + floor[1], color="0.85",
                 label="real-data floor (mean ± SD)")
    ax_e.axhline(floor[0], color="0.5", lw=1)
    ax_e.legend(fontsize=7, loc="upper left")
  ax_s.set_xlabel("s (NIFs, T = 1)")
  ax_s.set_ylabel("FD to the train subsample (mean ± SE)")
  ax_s.set_title("Tuning s (★ = s*)")
  ax_t.set_xlabel("T (NF dashed; NIFs at their s*, dotted)")
  ax_t.set_title("Tuning T (★ = T*)")
  ax_e.set_xticks(range(len(results)))
  ax_e.set_xticklabels(list(results), rotation=45, ha="right", fontsize=7)
  ax_e.set_ylabel("test FD, mean ± SE (o: knobs = 1, ★: tuned)")
  ax_e.set_title("Reported on test")
  for ax in (ax_s, ax_t):
    ax.legend(fontsize=6)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return images_lib.save_figure(fig, path)


def tuned_fd(model, feature_fn, data_config, *, key=None, num_samples: int = 1000,
             tune_draws: int = 10, test_draws: int = 20,
             tune_size: int | None = None, seed: int = 0, grid=DEFAULT_GRID,
             step: float = STEP, lower: float = LOWER, upper: float = UPPER,
             batch_size: int = 256, mesh=None, progress: bool = False) -> dict:
  """The protocol of the module docstring on ``model``; a JSON-ready dict:
  the tuning curves (``tune``; a NIF's T at s*: ``tune_temperature``, else
  None), ``knob``, ``knob_star`` (its tuned value), ``knobs_star`` (every
  tuned setting), and ``default`` / ``tuned`` / (a NIF) ``tuned_s``: ``{"value"
  (the knob), "knobs", "fds" (test_draws,), "mean", "se"}``."""
  key = jax.random.key(0) if key is None else key
  knob = knob_name(model)
  test_size = len(data_lib.get_source(data_config, "test"))
  tune_size = test_size if tune_size is None else int(tune_size)
  idx = sweep.tune_indices(data_config, "train", tune_size, seed)
  k_ref_t, _, k_tune, k_test = jax.random.split(key, 4)
  ref_tune = frechet.gaussian_stats(fd_lib.split_features(
      feature_fn, data_config, "train", key=k_ref_t, indices=idx,
      batch_size=batch_size))
  ref_test = test_reference(feature_fn, data_config, key, batch_size)
  sampler = fd_lib.make_sampler(model, mesh)

  def at(knobs, reference, k, draws):
    if progress:
      print(f"  FD {metrics.knob_label(knobs)} ({draws} draws)", flush=True)
    return fd_draws(sampler, feature_fn, reference, num_samples, key=k,
                    draws=draws, knobs=knobs, batch_size=batch_size)

  tuned = tune_knobs(lambda kn: at(kn, ref_tune, k_tune, tune_draws), knob, grid,
                     step=step, lower=lower, upper=upper)
  star = tuned["knobs"]
  settings = {"default": {knob: 1.0}, "tuned": star}
  if knob == "noise_scale":  # s* alone: what s does, apart from T.
    settings["tuned_s"] = {knob: star[knob], "temperature": 1.0}
  out, scored = {}, {}
  for label, knobs in settings.items():
    full = (knobs.get("noise_scale", 1.0), knobs.get("temperature", 1.0))
    if full not in scored:  # Equal settings, equal keys: the same draws.
      scored[full] = at(knobs, ref_test, k_test, test_draws)
    mean, se = stats.mean_se(scored[full])
    out[label] = {"value": knobs[knob], "knobs": dict(knobs),
                  "fds": scored[full].tolist(), "mean": mean, "se": se}
  return {"knob": knob, "knob_star": star[knob], "knobs_star": star,
          "tune": tuned["tune"], "tune_temperature": tuned["tune_temperature"],
          **out,
          "num_samples": int(num_samples), "tune_draws": int(tune_draws),
          "test_draws": int(test_draws), "tune_split": "train",
          "tune_size": tune_size, "tune_seed": seed, "num_reference": test_size,
          "step": step, "limits": [lower, upper], "bias": frechet.BIAS_NOTE}


def run(model, config, context) -> dict:
  """The ``knob`` evaluation: :func:`tuned_fd` on the dataset classifier's
  features; metrics: the FD at the tuned knob and at the default one, each
  mean ± SE over the test draws."""
  r = tuned_fd(model, context.classifier_features(), model.config.data,
               key=context.key, num_samples=config.num_samples,
               tune_draws=config.tune_draws, test_draws=config.test_draws,
               tune_size=config.tune_size, seed=context.seed,
               grid=tuple(config.grid), step=config.step, lower=config.lower,
               upper=config.upper, batch_size=context.batch_size,
               mesh=context.mesh, progress=context.progress)
  common = dict(command=context.command, num_samples=r["num_samples"],
                num_reference=r["num_reference"], tune_split=r["tune_split"],
                tune_size=r["tune_size"], features="classifier",
                num_draws=r["test_draws"], knob=r["knob"])
  star = {"temperature_star": r["knobs_star"]["temperature"],
          "tuning": r["tune"]["tuning"]}
  if r["knob"] == "noise_scale":
    star.update(s_star=r["knob_star"],
                tuning_temperature=r["tune_temperature"]["tuning"])
  out = {
      metrics.FD.format(features="classifier"): metrics.registry_metric(
          r["tuned"]["mean"], se=round(r["tuned"]["se"], 4), **star, **common),
      metrics.FD_S1.format(features="classifier"): metrics.registry_metric(
          r["default"]["mean"], se=round(r["default"]["se"], 4),
          **{r["knob"]: 1.0}, **common)}
  tuning = r["tune"]["tuning"]
  if r["tune_temperature"]:
    tuning = f"s {tuning}, T {r['tune_temperature']['tuning']}"
  return {"results": r, "metrics": out,
          "summary": f"{metrics.knob_label(r['knobs_star'])} ({tuning}), test FD "
                     f"{stats.fmt(r['tuned']['mean'], r['tuned']['se'], 2)} "
                     f"(default: {stats.fmt(r['default']['mean'], r['default']['se'], 2)})"}
