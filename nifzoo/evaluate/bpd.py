"""Bits per dimension on a whole split: every image exactly once.

``eval_batches`` cuts the split (or a list of indices into it) into global
batches of ``batch_size``; the last one is padded with copies of the first
image and a ``mask`` marks the real ones. Each JAX process reads only its
slice of every global batch, so a pod evaluates the split once in total.
``mesh_batches``: the same, for loops that shard each batch over every device.

``bits_per_dim`` scores them with the model's ``bits_per_dim`` (docs/math.md
§5: ``-log p(x_int) / (D ln 2)``, including the dequantisation and logit
log-dets). Dequantisation noise u ~ U[0,1)^D is drawn ``num_draws`` times per
image; draw d of the image with index i in its split uses
``image_key(key, i, d)`` = ``fold_in(fold_in(key, i), d)`` (the deep NIF's IW
samples too), so a figure does not depend on the batch size, the batch order,
the number of devices or processes, or which other images are scored, and two
models scored with the same key see the same noise on the same image (common
draws: their difference is paired). The figure is the mean over images and
draws of each draw's bits/dim, i.e. the usual variational (dequantised)
bound, not the bin-midpoint value; its standard error treats images as the
independent units (``nifzoo.evaluate.stats.mean_se``). The default key,
:func:`protocol_key`, is the one the evaluation job's ``bpd`` uses, so the
training loop, ``launch/convert.py`` and ``launch/evaluate.py`` give one
number per model. ``run`` is the ``bpd`` evaluation of a job
(``nifzoo.evaluate.job``).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nifzoo import checks
from nifzoo import data as data_lib
from nifzoo import mesh as mesh_lib
from nifzoo.evaluate import metrics
from nifzoo.evaluate import programs
from nifzoo.evaluate import progress as progress_lib
from nifzoo.evaluate import stats

# Folded into key(seed) for the bits/dim evaluations' key (the job's ``bpd``
# and ``iw_bound``, nifzoo.evaluate.job).
KEY_INDEX = 1


def protocol_key(seed: int = 0):
  """The key of the bits/dim protocol: ``fold_in(key(seed), KEY_INDEX)``."""
  return jax.random.fold_in(jax.random.key(seed), KEY_INDEX)


def image_key(key, index, draw):
  """The key of draw ``draw`` of the image with index ``index`` in its split:
  ``fold_in(fold_in(key, index), draw)`` (vectorises over ``index``)."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i),
                                               draw))(jnp.atleast_1d(index))


def eval_batches(data_config, split: str, batch_size: int, *,
                 indices: Sequence[int] | None = None,
                 max_images: int | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 with_indices: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
  """Padded batches covering the split (or ``indices``) once, for this process.

  Yields ``(images int32 (b, H, W, C), labels int32 (b,), mask bool (b,))``
  with ``b = batch_size // process_count``: this process's slice of each
  global batch. Padding rows repeat the first image and have ``mask`` False.
  ``with_indices``: a 4th array, each row's index in the split (int32 (b,)).
  """
  batch_size = checks.check_positive_int(batch_size, "batch_size")
  pi = jax.process_index() if process_index is None else int(process_index)
  pc = jax.process_count() if process_count is None else int(process_count)
  mesh_lib.check_batch_size(batch_size, process_count=pc, device_count=1)
  batches = _batches(data_config, split, batch_size, indices, max_images, pi, pc)
  return batches if with_indices else (b[:3] for b in batches)


def mesh_batches(data_config, split: str, batch_size: int, *, indices=None,
                 max_images: int | None = None, with_indices: bool = False):
  """:func:`eval_batches` for a loop that shards each global batch over every
  device (``nifzoo.mesh.global_batch``): ``batch_size`` must divide by the
  number of processes and of devices. ``with_indices``: a 4th array, each
  row's index in the split (int32 (b,); padding rows repeat the first)."""
  mesh_lib.check_batch_size(checks.check_positive_int(batch_size, "batch_size"))
  batches = _batches(data_config, split, batch_size, indices, max_images,
                     jax.process_index(), jax.process_count())
  return batches if with_indices else (b[:3] for b in batches)


def _batches(data_config, split, batch_size, indices, max_images, pi, pc):
  """Generator of (images, labels, mask, split indices), this process's slices."""
  source = data_lib.get_source(data_config, split)
  idx = np.arange(len(source)) if indices is None else np.asarray(indices, int)
  if max_images is not None:
    idx = idx[:checks.check_positive_int(max_images, "max_images")]
  if idx.size == 0:
    raise ValueError(f"No images to evaluate in {data_config.name}/{split}.")
  if idx.min() < 0 or idx.max() >= len(source):
    raise ValueError(f"indices must lie in [0, {len(source)}) for "
                     f"{data_config.name}/{split}.")
  return _padded(source, idx, batch_size, pi, pc)


def _padded(source, idx, batch_size, pi, pc):
  local = batch_size // pc
  for start in range(0, idx.size, batch_size):
    pos = start + pi * local + np.arange(local)
    mask = pos < idx.size
    rows = idx[np.where(mask, pos, 0)]
    examples = [source[int(i)] for i in rows]
    yield (np.stack([e["image"] for e in examples]).astype(np.int32),
           np.asarray([e["label"] for e in examples], np.int32), mask,
           rows.astype(np.int32))


def _batch_values(model, images, mask, index, key, s, *, num_draws: int,
                  num_samples):
  """(bits/dim (b, num_draws), mask, index) of one global batch, replicated:
  draw d of the image with split index ``index[i]`` uses
  ``image_key(key, index[i], d)``."""
  def one_image(x, k):
    return model.bits_per_dim(x[None], key=k, noise_scale=s,
                              num_samples=num_samples)[0]

  # One draw at a time (lax.map): memory stays that of one batch.
  per_draw = jax.lax.map(
      lambda d: jax.vmap(one_image)(images, image_key(key, index, d)),
      jnp.arange(num_draws))
  return per_draw.T, mask, index


def bits_per_dim(model, data_config, split: str = "test", *,
                 batch_size: int = 256, num_draws: int = 1, key=None,
                 noise_scale=1.0, num_samples: int | None = None, mesh=None,
                 indices: Sequence[int] | None = None,
                 max_images: int | None = None, progress: bool = False) -> dict:
  """Mean bits/dim of ``model`` over every image of ``split`` (or ``indices``).

  Args:
    model: an ``ImageFlow``.
    data_config: ``config.data`` of the model's dataset.
    split: "train" | "test" | ...
    batch_size: global batch size (padded and masked at the end).
    num_draws: dequantisation draws per image (averaged).
    key: a fixed key for the dequantisation (and IW) noise (per image and
      draw: :func:`image_key`); default :func:`protocol_key`.
    noise_scale: s (Sigma -> s^2 Sigma); 1 is the trained model.
    num_samples: N of the deep NIF's importance-weighted bound (default: the
      model's training N).
    mesh: a data mesh (``nifzoo.mesh.make_mesh()``); default: every device.
    indices, max_images: evaluate a subset of the split.
    progress: a one-line progress report on stderr.

  Returns:
    ``{"bits_per_dim", "se_bits_per_dim" (its standard error, images the
    independent units), "std_bits_per_dim" (over images, of each image's
    mean over draws), "num_images", "num_draws", "noise_scale", "split",
    "num_samples", "values" (float64 (num_images, num_draws): each image's
    bits/dim at each draw), "indices" (int (num_images,): their indices in
    the split)}``; ``num_samples`` is the N the deep NIF's bound used (None
    for the exact NF and NIF-k).
  """
  num_draws = checks.check_positive_int(num_draws, "num_draws")
  key = protocol_key() if key is None else key
  num_samples = model.prior.check_log_prob(key, noise_scale, num_samples)
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  batches = mesh_batches(data_config, split, batch_size, indices=indices,
                         max_images=max_images, with_indices=True)
  batch_values = programs.on_mesh(_batch_values, model, mesh,
                                  static_argnames=("num_draws", "num_samples"))
  update = progress_lib.meter(
      f"bits/dim {split} s={float(noise_scale):g}",
      _split_size(data_config, split, indices, max_images), enabled=progress)
  values, rows = [], []
  for i, (images, _, mask, index) in enumerate(batches):
    out, mask, index = map(np.asarray, jax.device_get(batch_values(
        *(mesh_lib.global_batch(mesh, a) for a in (images, mask, index)),
        key, jnp.float32(noise_scale), num_draws=num_draws,
        num_samples=num_samples)))
    out = out.astype(np.float64)
    bad = int(np.sum(~np.isfinite(out[mask])))
    if bad:
      raise FloatingPointError(
          f"{bad} non-finite bits/dim values in batch {i} of "
          f"{data_config.name}/{split} at noise_scale={noise_scale}.")
    values.append(out[mask])
    rows.append(index[mask])
    update(sum(len(v) for v in values))
  values = np.concatenate(values)
  mean, se = stats.mean_se(values)
  return {"bits_per_dim": mean, "se_bits_per_dim": se,
          "std_bits_per_dim": float(np.std(values.mean(axis=1))),
          "num_images": len(values), "num_draws": num_draws,
          "noise_scale": float(noise_scale), "split": split,
          "num_samples": num_samples, "values": values,
          "indices": np.concatenate(rows)}


def _split_size(data_config, split, indices, max_images) -> int:
  n = len(data_lib.get_source(data_config, split)) if indices is None else len(indices)
  return n if max_images is None else min(n, max_images)


def run(model, config, context) -> dict:
  """The ``bpd`` evaluation: test bits/dim at s = 1, every test image once,
  ``config.num_draws`` dequantisation draws (deep NIF: the IW bound with
  ``config.iw_samples``, default the training N)."""
  r = bits_per_dim(model, model.config.data, "test",
                   batch_size=context.batch_size, num_draws=config.num_draws,
                   key=context.key, num_samples=config.iw_samples,
                   mesh=context.mesh, progress=context.progress)
  return {"results": r, "metrics": metrics.bits_per_dim_metric(r, context.command),
          "summary": f"test bits/dim {r['bits_per_dim']:.4f} ({r['num_images']} "
                     "images" + (f", IW bound N = {r['num_samples']})"
                                 if r["num_samples"] else ")")}
