"""The paper's qualitative figures for any model of the zoo, as arrays and PNGs.

Each figure is a pure function returning images (levels mapped to bin centres,
``(x + 1/2) / L``, by ``ImageFlow.to_float_images``) and a ``save_*`` that writes
the PNG. Model calls are compiled (the methods' own programs, nifzoo.compiled).

- ``temperature_grid``: samples at several temperatures T (paper Fig. 3).
- ``noise_strip``: one latent decoded at every s, same noise draw (Fig. 6).
- ``samples_at``: samples at s = 0 (on the manifold) and s = 1 (Fig. 5).
- ``reconstructions``: x and decode(encode(x)) at s = 0.
- ``interpolations``: z_t = (1 − t) z_a + t z_b, *every* step decoded (the
  authors' version decoded only the end points). Deep NIF: z = μ(x), the NIF
  latent of its ``encode``.
- ``embedding_2d`` / ``save_embeddings``: supervised UMAP of the test set's
  embeddings (Fig. 4); without umap-learn, PCA, and the figure says so.
- ``run``: the ``figures`` evaluation of a job (``nifzoo.evaluate.job``).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from nifzoo import fileio
from nifzoo import images as images_lib
from nifzoo import models
from nifzoo.evaluate import classifier


# The model's methods compile themselves (nifzoo.compiled: one program per
# shape, noise scale and temperature as inputs), with their eager checks.
def _sample(model, key, n, temperature, noise_scale, output="levels"):
  return model.sample(key, n, temperature=temperature, noise_scale=noise_scale,
                      output=output)


def _decode(model, z, key, noise_scale):
  return model.decode(z, key=key, noise_scale=noise_scale)


def _encode(model, x):
  return models.nif_latent(model.encode(x))  # Deep NIF: mu(x), what decode takes.


def _sample_latent(model, key, n, temperature):
  return model.sample_latent(key, n, temperature=temperature)


def _floats(model, x):
  return np.asarray(model.to_float_images(x))


def temperature_grid(model, temperatures=(0.5, 0.75, 1.0, 1.25, 1.5), *,
                     n: int = 8, key=None, noise_scale=0.0) -> np.ndarray:
  """(len(T), n, H, W, C) samples; row t at temperature T_t, the same base draws
  (z scaled by T) in every row. NIF default s = 0 (paper Fig. 3)."""
  key = jax.random.key(0) if key is None else key
  return np.stack([_floats(model, _sample(model, key, n, jnp.float32(t),
                                          jnp.float32(noise_scale)))
                   for t in temperatures])


def noise_strip(model, scales=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2), *,
                n: int = 6, key=None, temperature=1.0) -> np.ndarray:
  """(n, len(scales), H, W, C): latent i decoded at every s with one noise draw."""
  key = jax.random.key(0) if key is None else key
  z_key, eps_key = jax.random.split(key)
  z = _sample_latent(model, z_key, n, jnp.float32(temperature))
  cols = [_floats(model, _decode(model, z, eps_key, jnp.float32(s)))
          for s in scales]
  return np.stack(cols, axis=1)


def samples_at(model, scales=(0.0, 1.0), *, n: int = 64, key=None,
               temperature=1.0) -> dict:
  """{s: (n, H, W, C)} samples of the same latents at each s."""
  key = jax.random.key(0) if key is None else key
  return {float(s): _floats(model, _sample(model, key, n, jnp.float32(temperature),
                                           jnp.float32(s)))
          for s in scales}


def reconstructions(model, images) -> np.ndarray:
  """(2, N, H, W, C): the images and decode(encode(x)) at s = 0."""
  x = jnp.asarray(images, jnp.int32)
  rec = _decode(model, _encode(model, x), jax.random.key(0), jnp.float32(0.0))
  return np.stack([_floats(model, x), _floats(model, rec)])


def interpolation_latents(z_a, z_b, steps: int) -> np.ndarray:
  """(N, steps, k): z_t = (1 − t) z_a + t z_b at t = linspace(0, 1, steps)."""
  if steps < 2:
    raise ValueError(f"steps must be >= 2, got {steps}.")
  t = np.linspace(0.0, 1.0, steps)[None, :, None]
  return (1.0 - t) * np.asarray(z_a)[:, None] + t * np.asarray(z_b)[:, None]


def interpolations(model, images_a, images_b, *, steps: int = 8) -> np.ndarray:
  """(N, steps, H, W, C): every step of the latent path between the stochastic
  inverses (NF: flow latents) of images_a and images_b, decoded at s = 0."""
  za = _encode(model, jnp.asarray(images_a, jnp.int32))
  zb = _encode(model, jnp.asarray(images_b, jnp.int32))
  zt = interpolation_latents(za, zb, steps)
  n, k = zt.shape[0], zt.shape[2]
  frames = _decode(model, jnp.asarray(zt.reshape(n * steps, k), jnp.float32),
                   jax.random.key(0), jnp.float32(0.0))
  return _floats(model, frames).reshape(n, steps, *frames.shape[1:])


def save_rows(rows: np.ndarray, path: str, scale: int = 4) -> str:
  """(R, C, H, W, ch) floats in [0, 1] -> one PNG grid, R rows of C cells."""
  rows = np.asarray(rows)
  flat = rows.reshape(-1, *rows.shape[2:])
  return images_lib.save_png(path, images_lib.grid(flat, ncols=rows.shape[1],
                                                   scale=scale))


def save_labelled_grids(grids: dict, path: str, row_labels=None,
                        title: str = "") -> str:
  """Several (R, C, H, W, ch) grids side by side with titles (e.g. NF | NIF)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  imgs = {label: images_lib.grid(np.asarray(r).reshape(-1, *np.shape(r)[2:]),
                                  ncols=np.shape(r)[1]) for label, r in grids.items()}
  aspect = max(i.shape[0] / i.shape[1] for i in imgs.values())
  fig, axes = plt.subplots(1, len(grids), squeeze=False, figsize=(
      3.6 * len(grids), 3.6 * aspect + 0.5 + 0.3 * bool(title)))
  for ax, (label, rows) in zip(axes[0], grids.items()):
    rows = np.asarray(rows)
    img = imgs[label]
    h = img.shape[0] / rows.shape[0]
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray",
              interpolation="nearest")
    ax.set_title(label, fontsize=9)
    ax.set_xticks([])
    if row_labels is not None:
      ax.set_yticks([h * (i + 0.5) for i in range(rows.shape[0])])
      ax.set_yticklabels(row_labels, fontsize=7)
    else:
      ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return images_lib.save_figure(fig, path)


def embedding_2d(emb, labels, *, seed: int = 0, method: str = "umap"):
  """2-D embedding (N, 2) of ``emb`` (N, k); returns (points, method used).

  "umap": supervised UMAP (labels guide the layout, as in paper Fig. 4); when
  umap-learn is missing, falls back to PCA with a warning naming the fix.
  """
  emb = np.asarray(emb, np.float64)
  if method == "umap":
    try:
      import umap  # pylint: disable=g-import-not-at-top
    except ImportError:
      warnings.warn("umap-learn is not installed (pip install 'nifzoo[umap]'); "
                    "the embedding figure falls back to PCA.")
      method = "pca"
    else:
      reducer = umap.UMAP(n_components=2, random_state=seed)
      return reducer.fit_transform(emb, y=np.asarray(labels)), "supervised UMAP"
  if method != "pca":
    raise ValueError(f"method must be 'umap' or 'pca', got {method!r}.")
  centred = emb - emb.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T, "PCA"


def save_embeddings(embs: dict, path: str, *, seed: int = 0,
                    method: str = "umap", probe: dict | None = None) -> dict:
  """One PNG of 2-D embeddings, a panel per model: ``embs`` = {label: (emb,
  labels)}; ``probe`` = {label: accuracy} is printed in the titles. Returns
  {"path", "method"}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(embs), figsize=(3.2 * len(embs) + 1.0, 3.6),
                           squeeze=False)
  used = None
  for ax, (label, (emb, y)) in zip(axes[0], embs.items()):
    pts, used = embedding_2d(emb, y, seed=seed, method=method)
    sc = ax.scatter(pts[:, 0], pts[:, 1], c=y, cmap="tab10", s=4)
    extra = f"\nlinear probe {probe[label]:.1%}" if probe and label in probe else ""
    ax.set_title(f"{label} ({emb.shape[1]}-d){extra}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0][-1].legend(*sc.legend_elements(), fontsize=7, loc="center left",
                     bbox_to_anchor=(1.02, 0.5), title="class", title_fontsize=7)
  fig.suptitle(f"{used} of the test set", fontsize=10)
  fig.tight_layout()
  return {"path": images_lib.save_figure(fig, path), "method": used}


def run(model, config, context) -> dict:
  """The ``figures`` evaluation: PNGs of the temperature grid, samples at s = 1
  (and, for a NIF, at s = 0 and the s strip), reconstructions and
  interpolations of test images."""
  del config  # No settings.
  key, nif = context.key, model.prior.has_manifold
  x, _ = classifier.load_split(model.config.data, "test", max_images=16)
  grids = {"temperature.png": temperature_grid(model, key=key),
           "reconstructions.png": reconstructions(model, x[:8]),
           "interpolations.png": interpolations(model, x[:4], x[4:8])}
  if nif:
    grids["s_strip.png"] = noise_strip(model, key=key)
  for s, imgs in samples_at(model, (0.0, 1.0) if nif else (1.0,), key=key).items():
    grids[f"samples_s{s:g}.png"] = imgs.reshape(8, 8, *imgs.shape[1:])
  files = [save_rows(rows, fileio.join(context.outdir, name))
           for name, rows in grids.items()]
  return {"results": {"files": list(grids)}, "metrics": {}, "files": files,
          "summary": f"figures: {', '.join(grids)}"}
