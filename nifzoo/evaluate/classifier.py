"""A small classifier trained on the dataset, whose features feed the Fréchet distance.

Inception-v3 FID needs weights from outside; this network is trained here, with
this project's data code, in seconds for digits, so a Fréchet distance works
offline. ``Classifier`` is an MLP on images in [0, 1]; ``features`` is its last
hidden layer (after the ReLU), the layer FID also uses (Inception's pool3).

Inputs are continuous images y in [0, 1]: the flows' continuous samples, and for
real data the dequantised images y = (x_int + u) / L, u ~ U[0, 1)ᴰ — the very
distribution the flows model (docs/math.md §5.2). Training draws a fresh u per
step, so the classifier sees the whole bin of every level.

A saved classifier is a directory: ``state/`` (Orbax, ``nnx.state``) and
``classifier.json`` (architecture, dataset, test accuracy, the command that
made it). The digits one ships in ``registry/checkpoints/digits-classifier/``;
``python launch/train_classifier.py --dataset=digits`` regenerates it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from nifzoo import checks
from nifzoo import fileio
from nifzoo.evaluate import bpd as bpd_lib
from nifzoo.evaluate import programs
from nifzoo.evaluate import progress as progress_lib

INFO_FILE = "classifier.json"
STATE_DIR = "state"


class Classifier(nnx.Module):
  """MLP classifier on images y in [0, 1], (B, H, W, C) -> logits (B, classes).

  Args:
    image_shape: (H, W, C).
    num_classes: number of labels.
    hidden: widths of the hidden layers; ``features`` is the last one.
  """

  def __init__(self, image_shape, num_classes: int, hidden=(256, 32), *,
               rngs: nnx.Rngs):
    self.image_shape = tuple(int(s) for s in image_shape)
    self.num_classes = int(num_classes)
    self.hidden = tuple(int(h) for h in hidden)
    if not self.hidden:
      raise ValueError("hidden must list at least one layer width.")
    sizes = (int(np.prod(self.image_shape)),) + self.hidden
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], self.num_classes, rngs=rngs)

  @property
  def feature_dim(self) -> int:
    return self.hidden[-1]

  def features(self, y):
    """Images y (B, H, W, C) in [0, 1] -> penultimate features (B, hidden[-1])."""
    y = checks.check_float(y, "y")
    checks.check_shape(y, "y", (None, *self.image_shape))
    h = (2.0 * y - 1.0).reshape(y.shape[0], -1)
    for layer in self.layers:
      h = jax.nn.relu(layer(h))
    return h

  def __call__(self, y):
    """Logits (B, num_classes)."""
    return self.head(self.features(y))


def dequantise(images, key, num_levels: int):
  """Integer images (B, ...) -> (x + u) / L with u ~ U[0, 1) (float32)."""
  u = jax.random.uniform(key, images.shape, jnp.float32)
  return (images.astype(jnp.float32) + u) / num_levels


def load_split(data_config, split: str, *, batch_size: int = 512,
               indices=None, max_images: int | None = None):
  """Every image of a split in memory: (images int32 (N,H,W,C), labels (N,))."""
  imgs, labels = [], []
  for x, y, mask in bpd_lib.eval_batches(data_config, split, batch_size,
                                         indices=indices, max_images=max_images,
                                         process_index=0, process_count=1):
    imgs.append(x[mask])
    labels.append(y[mask])
  return np.concatenate(imgs), np.concatenate(labels)


def accuracy(model: Classifier, images, labels, num_levels: int, *, key,
             batch_size: int = 512) -> float:
  """Top-1 accuracy on dequantised integer images (a fixed dequantisation key)."""
  logits_fn = programs.on_mesh(Classifier.__call__, model)
  correct = 0
  for i in range(0, len(images), batch_size):
    y = dequantise(jnp.asarray(images[i:i + batch_size]),
                   jax.random.fold_in(key, i), num_levels)
    correct += int(jnp.sum(jnp.argmax(logits_fn(y), -1)
                           == jnp.asarray(labels[i:i + batch_size])))
  return correct / len(images)


def train_classifier(data_config, *, num_classes: int = 10, hidden=(256, 32),
                     steps: int = 1500, batch_size: int = 128,
                     learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                     seed: int = 0, progress: bool = True):
  """Trains a :class:`Classifier` on the train split; returns (model, info).

  Adam (decoupled weight decay) on cross-entropy of dequantised images, fresh
  u each step. ``info`` has the architecture and the train/test accuracy.
  """
  steps = checks.check_positive_int(steps, "steps")
  L = int(data_config.num_levels)
  x_train, y_train = load_split(data_config, "train")
  x_test, y_test = load_split(data_config, "test")
  if y_train.max() >= num_classes:
    raise ValueError(f"labels go up to {y_train.max()}, but num_classes="
                     f"{num_classes}.")
  model = Classifier(tuple(data_config.image_shape), num_classes, hidden,
                     rngs=nnx.Rngs(seed))
  opt = nnx.Optimizer(model, optax.adamw(learning_rate, weight_decay=weight_decay),
                      wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, images, labels, key):
    def loss_fn(m):
      logits = m(dequantise(images, key, L))
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  xs, ys = jnp.asarray(x_train), jnp.asarray(y_train)
  update = progress_lib.meter("classifier", steps, unit="steps", enabled=progress)
  for i in range(steps):
    idx = rng.integers(0, len(x_train), batch_size)
    loss = step(model, opt, xs[idx], ys[idx], jax.random.fold_in(key, i))
    if progress and ((i + 1) % 100 == 0 or i + 1 == steps):
      update(i + 1, f"loss {float(loss):.4f}")
  eval_key = jax.random.key(seed + 1)
  info = {
      "dataset": data_config.name, "image_shape": list(data_config.image_shape),
      "num_levels": L, "num_classes": num_classes, "hidden": list(hidden),
      "feature_dim": int(hidden[-1]), "steps": steps, "batch_size": batch_size,
      "learning_rate": learning_rate, "weight_decay": weight_decay, "seed": seed,
      "input": "dequantised images (x + u) / L in [0, 1], u ~ U[0, 1)",
      "train_accuracy": accuracy(model, x_train, y_train, L, key=eval_key),
      "test_accuracy": accuracy(model, x_test, y_test, L, key=eval_key),
      "num_test_images": int(len(x_test)),
  }
  return model, info


def save_classifier(model: Classifier, directory: str, info: dict) -> str:
  """Writes ``directory/state`` (Orbax) and ``directory/classifier.json``."""
  directory = str(fileio.as_path(directory))  # Local or gs://.
  state_dir = fileio.join(directory, STATE_DIR)
  fileio.rmtree(state_dir)
  state = jax.tree.map(lambda x: np.asarray(x), nnx.state(model, nnx.Param))
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(state_dir, state)
  ckptr.wait_until_finished()
  return write_info(directory, info)


def write_info(directory: str, info: dict) -> str:
  """(Re)writes ``directory/classifier.json``; returns the directory."""
  fileio.write_json(fileio.join(directory, INFO_FILE), info, sort_keys=True)
  return str(directory)


def load_classifier(directory: str) -> tuple[Classifier, dict]:
  """(model, info) from a directory written by :func:`save_classifier`."""
  directory = str(fileio.as_path(directory))  # Local or gs://.
  info_path = fileio.join(directory, INFO_FILE)
  if not fileio.as_path(info_path).exists():
    raise FileNotFoundError(
        f"No classifier at {directory} (missing {INFO_FILE}). Train one with "
        "`python launch/train_classifier.py --dataset=<name> --outdir=<dir>`.")
  info = fileio.read_json(info_path)
  abstract = nnx.eval_shape(lambda: Classifier(
      info["image_shape"], info["num_classes"], info["hidden"], rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(abstract, nnx.Param)
  cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), params)
  try:
    restored = ocp.StandardCheckpointer().restore(
        fileio.join(directory, STATE_DIR), target)
  except Exception as e:  # Orbax raises many types for a damaged directory.
    raise ValueError(f"Could not restore the classifier at {directory}: "
                     f"{type(e).__name__}: {e}") from e
  return nnx.merge(graphdef, restored), info


def feature_fn(model: Classifier, mesh=None):
  """A compiled ``y (B,H,W,C) in [0,1] -> features (B, d)`` for the Fréchet
  distance (replicated on ``mesh``)."""
  return programs.on_mesh(Classifier.features, model, mesh)


def default_dir(dataset: str) -> str:
  """The registry's classifier of ``dataset``: checkpoints/<dataset>-classifier."""
  from nifzoo import registry  # pylint: disable=g-import-not-at-top
  return os.path.join(registry.packaged_dir(), registry.CHECKPOINTS,
                      f"{dataset}-classifier")


def load_features(directory: str | None, data_config, mesh=None):
  """(feature_fn, info) of the classifier at ``directory`` (default: the
  registry's for ``data_config.name``), checked against its hash and the
  dataset's image shape."""
  from nifzoo import variables  # pylint: disable=g-import-not-at-top
  d = directory or default_dir(data_config.name)
  clf, info = load_classifier(d)
  if "sha256" in info:
    got = variables.hash_directory(os.path.join(d, STATE_DIR))
    if got != info["sha256"]:
      raise ValueError(f"The classifier at {d} does not match its hash "
                       f"({got} != {info['sha256']}): the files changed.")
  if tuple(info["image_shape"]) != tuple(data_config.image_shape):
    raise ValueError(f"The classifier at {d} is for images {info['image_shape']}, "
                     f"the model's are {list(data_config.image_shape)}.")
  return feature_fn(clf, mesh), info
