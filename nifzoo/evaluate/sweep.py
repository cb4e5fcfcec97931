"""The noise-scale sweep: Fréchet distance and bits/dim as functions of s.

The paper's protocol (docs/math.md §6): s ∈ linspace(0, 1.2, 15); s is *chosen*
on a random subsample of the training split (the s with the smallest FD to it)
and the FD is *reported* on the test split, so the test images never select s.
The tuning and test FDs use independent sample draws; within each, every s
decodes the same latents (common random numbers: the curve's wiggles are not
sampling noise between points). bits/dim(s) is on the whole test split; at
s = 0 a NIF is the injective flow and the test images have zero density
(reported as null). The NF has no s: its sweep is the single point s = 1.
``run`` is the ``s_sweep`` evaluation of a job (``nifzoo.evaluate.job``).
"""

from __future__ import annotations

import jax
import numpy as np

from nifzoo import data as data_lib
from nifzoo import fileio
from nifzoo.evaluate import bpd as bpd_lib
from nifzoo.evaluate import fd as fd_lib
from nifzoo.evaluate import frechet

DEFAULT_SCALES = tuple(float(s) for s in np.linspace(0.0, 1.2, 15))


def tune_indices(data_config, split: str, size: int, seed: int) -> np.ndarray:
  """A fixed random subsample (sorted indices) of ``split`` for tuning s."""
  n = len(data_lib.get_source(data_config, split))
  if size > n:
    raise ValueError(f"tune_size={size} exceeds the {n} images of {split}.")
  return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def noise_scale_sweep(model, feature_fn, data_config, *,
                      scales=DEFAULT_SCALES, num_samples: int = 1000,
                      tune_split: str = "train", tune_size: int | None = None,
                      eval_split: str = "test", key=None, temperature=1.0,
                      batch_size: int = 256, bpd_draws: int = 1, mesh=None,
                      features: str = "classifier", seed: int = 0,
                      progress: bool = False) -> dict:
  """FD on the tuning subsample and on ``eval_split``, and bits/dim, for each s.

  Args:
    model: an ``ImageFlow``.
    feature_fn: continuous images (B,H,W,C) in [0,1] -> features (B, d).
    data_config: the model's ``config.data``.
    scales: the noise scales s (for the NF: ignored, s = 1 only).
    num_samples: samples per FD.
    tune_split, tune_size, seed: the tuning subsample (default size: that of
      ``eval_split``, so both FDs carry the same small-sample bias).
    key: fixes the samples and the dequantisation (default key(0)).

  Returns a JSON-ready dict: ``scales``, ``fd_tune``, ``fd_eval``,
  ``bits_per_dim`` (lists over s), ``s_star`` (argmin of ``fd_tune``),
  ``fd_eval_at_s_star``, ``bits_per_dim_at_s_star``, ``fd_eval_at_s1`` (the
  trained model, computed even when 1 is not among ``scales``) and the
  protocol (counts, splits, tuning indices' seed).
  """
  key = jax.random.key(0) if key is None else key
  nif = model.prior.has_manifold
  scales = tuple(float(s) for s in scales) if nif else (1.0,)
  if not scales:
    raise ValueError("scales must list at least one noise scale.")
  eval_size = len(data_lib.get_source(data_config, eval_split))
  tune_size = eval_size if tune_size is None else int(tune_size)
  idx = tune_indices(data_config, tune_split, tune_size, seed)
  k_ref_t, k_ref_e, k_tune, k_eval, k_bpd = jax.random.split(key, 5)
  stats_tune = frechet.gaussian_stats(fd_lib.split_features(
      feature_fn, data_config, tune_split, key=k_ref_t, indices=idx,
      batch_size=batch_size))
  stats_eval = frechet.gaussian_stats(fd_lib.split_features(
      feature_fn, data_config, eval_split, key=k_ref_e, batch_size=batch_size))
  sampler = fd_lib.make_sampler(model, mesh)
  fd_tune, fd_eval, bpd = [], [], []
  for s in scales:
    common = dict(temperature=temperature, noise_scale=s,
                  batch_size=batch_size, progress=progress)
    fd_tune.append(fd_lib.frechet_to_reference(
        sampler, feature_fn, stats_tune, num_samples, key=k_tune, **common))
    fd_eval.append(fd_lib.frechet_to_reference(
        sampler, feature_fn, stats_eval, num_samples, key=k_eval, **common))
    if s > 0 or not nif:
      bpd.append(bpd_lib.bits_per_dim(
          model, data_config, eval_split, batch_size=batch_size,
          num_draws=bpd_draws, key=k_bpd, noise_scale=s, mesh=mesh,
          progress=progress)["bits_per_dim"])
    else:
      bpd.append(None)
  best = int(np.argmin(fd_tune))
  if 1.0 in scales:
    fd_s1 = fd_eval[scales.index(1.0)]
  else:  # linspace(0, 1.2, 15) misses s = 1, the trained model: add it.
    fd_s1 = fd_lib.frechet_to_reference(
        sampler, feature_fn, stats_eval, num_samples, key=k_eval,
        temperature=temperature, noise_scale=1.0, batch_size=batch_size)
  return {
      "scales": list(scales), "fd_tune": fd_tune, "fd_eval": fd_eval,
      "bits_per_dim": bpd, "s_star": scales[best],
      "fd_eval_at_s_star": fd_eval[best], "bits_per_dim_at_s_star": bpd[best],
      "fd_eval_at_s1": fd_s1,
      "num_samples": int(num_samples), "temperature": float(temperature),
      "tune_split": tune_split, "tune_size": int(tune_size), "tune_seed": seed,
      "eval_split": eval_split, "num_eval_images": eval_size,
      "bpd_draws": bpd_draws, "features": features, "bias": frechet.BIAS_NOTE,
  }


def plot_sweep(results: dict, path: str, title: str = "") -> str:
  """One PNG: FD(s) (tuning and eval) and bits/dim(s) of one or more models.

  ``results`` maps a label (e.g. "digits-nif16") to a sweep result; a model
  with a single point (the NF) is drawn as a horizontal line.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from nifzoo import images as images_lib  # pylint: disable=g-import-not-at-top
  fig, (ax_fd, ax_bpd) = plt.subplots(1, 2, figsize=(10, 3.8))
  for i, (label, r) in enumerate(results.items()):
    color = f"C{i}"
    s = np.asarray(r["scales"])
    bpd = np.asarray([np.nan if b is None else b for b in r["bits_per_dim"]])
    if len(s) == 1:
      ax_fd.axhline(r["fd_eval"][0], color=color, ls="--", label=f"{label} (test)")
      ax_bpd.axhline(bpd[0], color=color, ls="--", label=label)
      continue
    ax_fd.plot(s, r["fd_eval"], "-o", color=color, ms=3, label=f"{label} (test)")
    ax_fd.plot(s, r["fd_tune"], ":", color=color, label=f"{label} (train, tuning)")
    ax_fd.plot([r["s_star"]], [r["fd_eval_at_s_star"]], "*", color=color, ms=12)
    ax_bpd.plot(s, bpd, "-o", color=color, ms=3, label=label)
  ax_fd.set_xlabel("noise scale s")
  ax_fd.set_ylabel(f"Fréchet distance ({next(iter(results.values()))['features']})")
  ax_bpd.set_yscale("log")
  ax_fd.set_title("FD(s); * = s chosen on train")
  ax_bpd.set_xlabel("noise scale s")
  ax_bpd.set_ylabel("test bits/dim")
  ax_bpd.set_title("bits/dim(s)")
  ax_fd.legend(fontsize=6)
  ax_bpd.legend(fontsize=6)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return images_lib.save_figure(fig, path)


def run(model, config, context) -> dict:
  """The ``s_sweep`` evaluation: :func:`noise_scale_sweep` over
  ``config.scales`` on the dataset classifier's features (``config``:
  ``num_samples``, ``tune_size``, ``bpd_draws``), and ``sweep.png``: the
  curves, one sample draw per s. It writes no registry metric: a model's FD
  metrics are the ``knob`` evaluation's (every model's knob tuned alike, mean
  ± SE over sample draws), one number per model."""
  r = noise_scale_sweep(
      model, context.classifier_features(), model.config.data,
      scales=config.scales, num_samples=config.num_samples,
      tune_size=config.tune_size, key=context.key,
      batch_size=context.batch_size, bpd_draws=config.bpd_draws,
      mesh=context.mesh, seed=context.seed, progress=context.progress)
  path = plot_sweep({context.name: r}, fileio.join(context.outdir, "sweep.png"),
                    title=context.name)
  return {"results": r, "metrics": {}, "files": [path],
          "summary": f"s* = {r['s_star']:.3f} (on train), test FD "
                     f"{r['fd_eval_at_s_star']:.3f}"}
