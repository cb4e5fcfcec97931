"""Fréchet distance of a model's samples to a data split, on a feature network.

``feature_fn`` maps continuous images y (B, H, W, C) in [0, 1] to features
(B, d): the digits classifier (``classifier.feature_fn``) or Inception-v3's
pool3 (``inception.feature_fn``). Samples are the flows' *continuous* output
(the sigmoid output before flooring, as the authors scored FID); real images
are dequantised with a fixed key, y = (x_int + u) / L, the distribution the
flows model (docs/math.md §5.2). Both sides are streamed in batches; samples
are drawn data-parallel on ``mesh`` (batch split over its ``data`` axis).

The estimate's small-sample bias (``frechet.BIAS_NOTE``) depends on both
counts, which every result records.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo import checks
from nifzoo import mesh as mesh_lib
from nifzoo.evaluate import bpd as bpd_lib
from nifzoo.evaluate import frechet


def _line(what: str, done: int, total: int, t0: float):
  end = "\n" if done >= total else ""
  sys.stderr.write(f"\r{what}: {done}/{total}, "
                   f"{done / max(time.time() - t0, 1e-9):.0f}/s{end}")
  sys.stderr.flush()


def split_features(feature_fn, data_config, split: str, *, key=None,
                   batch_size: int = 256, indices=None,
                   max_images: int | None = None) -> np.ndarray:
  """Features (N, d) of every image of ``split`` (or ``indices``), dequantised
  with ``fold_in(key, batch)`` (default key(0))."""
  key = jax.random.key(0) if key is None else key
  L = int(data_config.num_levels)
  out = []
  for i, (x, _, mask) in enumerate(bpd_lib.eval_batches(
      data_config, split, batch_size, indices=indices, max_images=max_images,
      process_index=0, process_count=1)):
    u = jax.random.uniform(jax.random.fold_in(key, i), x.shape, jnp.float32)
    y = (jnp.asarray(x, jnp.float32) + u) / L
    out.append(np.asarray(feature_fn(y), np.float64)[mask])
  return np.concatenate(out)


def make_sampler(model, mesh=None):
  """A jitted ``(key, n, temperature, noise_scale) -> continuous samples (n,H,W,C)``,
  sharded over the batch on ``mesh`` (n must divide by its size)."""
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, mesh_lib.replicated(mesh))

  # A hand-written jit, not the model's compiled sample: its samples stay
  # sharded over the mesh's batch axis (out_shardings), for the feature network.
  @functools.partial(jax.jit, static_argnums=(2,),
                     out_shardings=mesh_lib.batch_sharded(mesh))
  def sample(state, key, n, temperature, noise_scale):
    m = nnx.merge(graphdef, state)
    return m.sample(key, n, temperature=temperature, noise_scale=noise_scale,
                    output="continuous")

  def fn(key, n, temperature=1.0, noise_scale=1.0):
    return sample(state, key, n, jnp.float32(temperature), jnp.float32(noise_scale))

  return fn


def sample_features(sampler, feature_fn, num_samples: int, *, key,
                    temperature=1.0, noise_scale=1.0, batch_size: int = 256,
                    progress: bool = False) -> np.ndarray:
  """Features (num_samples, d) of continuous samples drawn in batches
  (batch i uses ``fold_in(key, i)``; the last batch is cut to size)."""
  num_samples = checks.check_positive_int(num_samples, "num_samples")
  checks.check_noise_scale(noise_scale)
  checks.check_noise_scale(temperature, "temperature")
  out, done, t0 = [], 0, time.time()
  for i in range(-(-num_samples // batch_size)):
    y = sampler(jax.random.fold_in(key, i), batch_size, temperature, noise_scale)
    f = np.asarray(feature_fn(y), np.float64)[:num_samples - done]
    if not np.all(np.isfinite(f)):
      raise FloatingPointError(
          f"non-finite features of samples at noise_scale={float(noise_scale)}, "
          f"temperature={float(temperature)} (batch {i}).")
    out.append(f)
    done += len(f)
    if progress:
      _line(f"samples s={float(noise_scale):g}", done, num_samples, t0)
  return np.concatenate(out)


def frechet_to_reference(sampler, feature_fn, reference_stats, num_samples: int,
                         *, key, temperature=1.0, noise_scale=1.0,
                         batch_size: int = 256, progress: bool = False) -> float:
  """FD between ``num_samples`` samples and ``reference_stats`` = (mu, sigma)."""
  f = sample_features(sampler, feature_fn, num_samples, key=key,
                      temperature=temperature, noise_scale=noise_scale,
                      batch_size=batch_size, progress=progress)
  return frechet.frechet_distance(*frechet.gaussian_stats(f), *reference_stats)


def frechet_distance(model, feature_fn, data_config, split: str = "test", *,
                     num_samples: int = 1000, key=None, temperature=1.0,
                     noise_scale=1.0, batch_size: int = 256, mesh=None,
                     indices=None, max_images: int | None = None,
                     features: str = "classifier",
                     progress: bool = False) -> dict:
  """FD between ``num_samples`` continuous samples of ``model`` and the images of
  ``split`` (all of it, or ``indices``/``max_images``), on ``feature_fn``.

  Returns ``{"fd", "num_samples", "num_reference", "split", "noise_scale",
  "temperature", "features", "bias"}``.
  """
  key = jax.random.key(0) if key is None else key
  ref_key, sample_key = jax.random.split(key)
  ref = split_features(feature_fn, data_config, split, key=ref_key,
                       batch_size=batch_size, indices=indices,
                       max_images=max_images)
  fd = frechet_to_reference(
      make_sampler(model, mesh), feature_fn, frechet.gaussian_stats(ref),
      num_samples, key=sample_key, temperature=temperature,
      noise_scale=noise_scale, batch_size=batch_size, progress=progress)
  return {"fd": fd, "num_samples": int(num_samples), "num_reference": len(ref),
          "split": split, "noise_scale": float(noise_scale),
          "temperature": float(temperature), "features": features,
          "bias": frechet.BIAS_NOTE}
