"""Fréchet distance of a model's samples to a data split, on a feature network.

``feature_fn`` maps continuous images y (B, H, W, C) in [0, 1] to features
(B, d): the digits classifier (``classifier.feature_fn``) or Inception-v3's
pool3 (``inception.feature_fn``). Samples are the flows' *continuous* output
(the sigmoid output before flooring, as the authors scored FID); real images
are dequantised with a fixed key, y = (x_int + u) / L, the distribution the
flows model (docs/math.md §5.2). Both sides are streamed in batches; samples
are drawn data-parallel on ``mesh`` (batch split over its ``data`` axis).

The estimate's small-sample bias (``frechet.BIAS_NOTE``) depends on both
counts, which every result records. ``run`` is the ``fd`` evaluation of a job
(``nifzoo.evaluate.job``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nifzoo import checks
from nifzoo.evaluate import bpd as bpd_lib
from nifzoo.evaluate import frechet
from nifzoo.evaluate import programs
from nifzoo.evaluate import progress as progress_lib


def split_features(feature_fn, data_config, split: str, *, key=None,
                   batch_size: int = 256, indices=None,
                   max_images: int | None = None) -> np.ndarray:
  """Features (N, d) of every image of ``split`` (or ``indices``); the image
  with index i in the split is dequantised with ``bpd.image_key(key, i, 0)``
  (default key(0)), whatever the batching."""
  key = jax.random.key(0) if key is None else key
  L = int(data_config.num_levels)
  out = []
  for x, _, mask, index in bpd_lib.eval_batches(
      data_config, split, batch_size, indices=indices, max_images=max_images,
      process_index=0, process_count=1, with_indices=True):
    u = _uniform(bpd_lib.image_key(key, index, 0), x.shape[1:])
    y = (jnp.asarray(x, jnp.float32) + u) / L
    out.append(np.asarray(feature_fn(y), np.float64)[mask])
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnames="shape")
def _uniform(keys, shape):
  return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32))(keys)


def _sample(model, key, temperature, noise_scale, *, n: int):
  return model.sample(key, n, temperature=temperature, noise_scale=noise_scale,
                      output="continuous")


def make_sampler(model, mesh=None):
  """A compiled ``(key, n, temperature, noise_scale) -> continuous samples
  (n,H,W,C)``, sharded over the batch on ``mesh`` (n must divide by its size)."""
  sample = programs.on_mesh(_sample, model, mesh, out="batch",
                            static_argnames=("n",))

  def fn(key, n, temperature=1.0, noise_scale=1.0):
    return sample(key, jnp.float32(temperature), jnp.float32(noise_scale), n=n)

  return fn


def sample_features(sampler, feature_fn, num_samples: int, *, key,
                    temperature=1.0, noise_scale=1.0, batch_size: int = 256,
                    progress: bool = False) -> np.ndarray:
  """Features (num_samples, d) of continuous samples drawn in batches
  (batch i uses ``fold_in(key, i)``; the last batch is cut to size)."""
  num_samples = checks.check_positive_int(num_samples, "num_samples")
  checks.check_noise_scale(noise_scale)
  checks.check_temperature(temperature)
  update = progress_lib.meter(f"samples s={float(noise_scale):g}", num_samples,
                              unit="samples", enabled=progress)
  out, done = [], 0
  for i in range(-(-num_samples // batch_size)):
    y = sampler(jax.random.fold_in(key, i), batch_size, temperature, noise_scale)
    f = np.asarray(feature_fn(y), np.float64)[:num_samples - done]
    if not np.all(np.isfinite(f)):
      raise FloatingPointError(
          f"non-finite features of samples at noise_scale={float(noise_scale)}, "
          f"temperature={float(temperature)} (batch {i}).")
    out.append(f)
    done += len(f)
    update(done)
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


def run(model, config, context) -> dict:
  """The ``fd`` evaluation: FD of ``config.num_samples`` samples at s = 1 to
  the test split, on the dataset classifier's features (one sample draw: no
  registry metric; the ``knob`` evaluation writes the FD metrics)."""
  feature_fn = context.classifier_features()
  r = frechet_distance(model, feature_fn, model.config.data, "test",
                       num_samples=config.num_samples, key=context.key,
                       noise_scale=1.0, batch_size=context.batch_size,
                       mesh=context.mesh, progress=context.progress)
  return {"results": r, "metrics": {},
          "summary": f"FD (classifier) at s=1: {r['fd']:.3f}"}
