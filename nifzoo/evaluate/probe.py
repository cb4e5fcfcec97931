"""Embeddings of a split and a linear probe on them (the number behind paper Fig. 4).

The NF's embedding is its flow latent v(x) ∈ ℝᴰ; a NIF's (NIF-k and deep NIF)
is the stochastic inverse's mean μ(x) ∈ ℝᵏ (docs/math.md §1.2), both with the dequantisation at
the bin centre. A linear probe — multinomial logistic regression on standardised
embeddings, fitted on the train split, scored on the test split — measures how
linearly the classes separate in each embedding. ``run`` is the ``embeddings``
evaluation of a job (``nifzoo.evaluate.job``).
"""

from __future__ import annotations

import jax
import numpy as np

from nifzoo import fileio
from nifzoo import mesh as mesh_lib
from nifzoo import models
from nifzoo.evaluate import bpd as bpd_lib
from nifzoo.evaluate import figures
from nifzoo.evaluate import metrics
from nifzoo.evaluate import programs


def _encode(model, images, *, kind: str):
  return models.nif_latent(model.encode(images, kind=kind))


def embeddings(model, data_config, split: str = "test", *,
               kind: str = "stochastic_inverse", batch_size: int = 256,
               mesh=None, indices=None, max_images: int | None = None):
  """(embeddings (N, k) float64, labels (N,)) of every image of ``split``.

  ``kind``: "stochastic_inverse" (the paper's μ(x)) or "posterior" (the
  authors' code); the NF ignores it (its flow latent).
  """
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  batches = bpd_lib.mesh_batches(data_config, split, batch_size, indices=indices,
                                 max_images=max_images)
  encode = programs.on_mesh(_encode, model, mesh, static_argnames=("kind",))
  embs, labels = [], []
  for x, y, mask in batches:
    z = encode(mesh_lib.global_batch(mesh, x), kind=kind)
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


def embedding_name(model, kind: str) -> str:
  """What ``model.encode(x, kind=kind)`` embeds an image as."""
  if not model.prior.has_manifold:
    return "flow latent v(x)"
  return ("stochastic inverse mu(x)" if kind == "stochastic_inverse"
          else "posterior mean")


def probe_model(model, data_config, *, kind: str = "stochastic_inverse",
                batch_size: int = 256, mesh=None) -> dict:
  """Linear-probe accuracy of ``model``'s embedding (train -> test split)."""
  tr = embeddings(model, data_config, "train", kind=kind,
                  batch_size=batch_size, mesh=mesh)
  te = embeddings(model, data_config, "test", kind=kind,
                  batch_size=batch_size, mesh=mesh)
  out = linear_probe(*tr, *te)
  out["embedding"] = embedding_name(model, kind)
  return out


def run(model, config, context) -> dict:
  """The ``embeddings`` evaluation: the linear probe (:func:`probe_model`) and
  a 2-D map of the test embeddings (``embedding.png``, ``config.method``)."""
  r = probe_model(model, model.config.data, batch_size=context.batch_size,
                  mesh=context.mesh)
  emb = embeddings(model, model.config.data, "test", batch_size=context.batch_size,
                   mesh=context.mesh)
  fig = figures.save_embeddings(
      {context.name: emb}, fileio.join(context.outdir, "embedding.png"),
      seed=context.seed, method=config.method,
      probe={context.name: r["accuracy"]})
  r["figure_method"] = fig["method"]
  return {"results": r, "metrics": {metrics.PROBE: probe_metric(r, context.command)},
          "files": [fig["path"]],
          "summary": f"linear probe accuracy {r['accuracy']:.3f} ({r['dim']}-d)"}


def probe_metric(result: dict, command: str) -> dict:
  """The registry metric of a :func:`probe_model` result."""
  return metrics.registry_metric(
      result["accuracy"], command=command,
      **{k: result[k] for k in ("dim", "num_train", "num_test", "embedding")})
