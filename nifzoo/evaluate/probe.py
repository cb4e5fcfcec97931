"""Embeddings of a split and a linear probe on them (the number behind paper Fig. 4).

The NF's embedding is its flow latent v(x) ∈ ℝᴰ; a NIF's (NIF-k and deep NIF)
is the stochastic inverse's mean μ(x) ∈ ℝᵏ (docs/math.md §1.2), both with the dequantisation at
the bin centre. A linear probe — multinomial logistic regression on standardised
embeddings, fitted on the train split, scored on the test split — measures how
linearly the classes separate in each embedding.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from nifzoo import mesh as mesh_lib
from nifzoo import models
from nifzoo.evaluate import bpd as bpd_lib


@functools.lru_cache(maxsize=16)
def _encode_fn(graphdef, kind: str, mesh):
  """The jitted encoder of :func:`embeddings`, one per model structure, kind and
  mesh (the train and test splits share its program): (state, images) -> (B, k)."""

  # A hand-written jit, not the model's compiled encode: the embeddings are
  # gathered replicated over the mesh (out_shardings), for every process.
  @functools.partial(jax.jit, out_shardings=mesh_lib.replicated(mesh))
  def encode(state, images):
    return models.nif_latent(nnx.merge(graphdef, state).encode(images, kind=kind))

  return encode


def embeddings(model, data_config, split: str = "test", *,
               kind: str = "stochastic_inverse", batch_size: int = 256,
               mesh=None, indices=None, max_images: int | None = None):
  """(embeddings (N, k) float64, labels (N,)) of every image of ``split``.

  ``kind``: "stochastic_inverse" (the paper's μ(x)) or "posterior" (the
  authors' code); the NF ignores it (its flow latent).
  """
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  encode = _encode_fn(graphdef, kind, mesh)

  embs, labels = [], []
  for x, y, mask in bpd_lib.eval_batches(data_config, split, batch_size,
                                         indices=indices, max_images=max_images):
    z = encode(state, mesh_lib.global_batch(mesh, x))
    embs.append(np.asarray(jax.device_get(z), np.float64)[mask])
    labels.append(y[mask])
  return np.concatenate(embs), np.concatenate(labels)


def linear_probe(train_x, train_y, test_x, test_y, *, C: float = 1.0,
                 max_iter: int = 5000) -> dict:
  """Logistic-regression accuracy on (test_x, test_y) after fitting on train.

  Features are standardised with the train mean/std. Returns ``{"accuracy",
  "train_accuracy", "dim", "num_train", "num_test", "C"}``.
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f"train_x and test_x must be (n, d) with the same d, got "
                     f"{train_x.shape} and {test_x.shape}.")
  if len(train_x) != len(train_y) or len(test_x) != len(test_y):
    raise ValueError("each embedding needs one label per row.")
  if not (np.all(np.isfinite(train_x)) and np.all(np.isfinite(test_x))):
    raise ValueError("embeddings contain NaN or inf.")
  mu, sd = train_x.mean(0), train_x.std(0) + 1e-8
  clf = linear_model.LogisticRegression(C=C, max_iter=max_iter)
  clf.fit((train_x - mu) / sd, train_y)
  return {"accuracy": float(clf.score((test_x - mu) / sd, test_y)),
          "train_accuracy": float(clf.score((train_x - mu) / sd, train_y)),
          "dim": int(train_x.shape[1]), "num_train": len(train_x),
          "num_test": len(test_x), "C": C}


def probe_model(model, data_config, *, kind: str = "stochastic_inverse",
                batch_size: int = 256, mesh=None) -> dict:
  """Linear-probe accuracy of ``model``'s embedding (train -> test split)."""
  tr = embeddings(model, data_config, "train", kind=kind,
                  batch_size=batch_size, mesh=mesh)
  te = embeddings(model, data_config, "test", kind=kind,
                  batch_size=batch_size, mesh=mesh)
  out = linear_probe(*tr, *te)
  out["embedding"] = "flow latent v(x)" if model.prior == "normal" else (
      "stochastic inverse mu(x)" if kind == "stochastic_inverse"
      else "posterior mean")
  return out
