"""Activation normalisation (Glow, Kingma & Dhariwal 2018) with data-dependent init.

Per channel c (the last axis)::

    z = (x - loc_c) * exp(-log_scale_c)
    log_det = P * sum_c (-log_scale_c),     P = number of positions (H*W, or 1)

``loc``/``log_scale`` are the location and log-scale of the *data*: the data-dependent
initialisation sets them to the per-channel mean and log standard deviation of a
batch, so the output of every ActNorm has zero mean and unit variance on that batch
(a channel constant on the batch, std < ``ACTNORM_MIN_STD``, keeps scale 1).

Data-dependent initialisation of every ActNorm in a model, scanned stacks included::

    with nifzoo.flows.data_init(model):
      model.forward(x_batch)            # eager, under nnx.jit, or inside nnx.scan

``data_init`` flips a static Python attribute (``data_init_mode``) on every ActNorm in
``model``; inside the block a forward pass writes each ActNorm's statistics of its own
input and sets its :class:`ActNormInitialized` flag. The flag is an ``nnx.Variable``,
so it lives in ``nnx.state(model)`` and in checkpoints; an ActNorm whose flag is set
keeps its parameters even if the data-init pass is run again.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo.flows import _base


ACTNORM_EPS = 1e-5  # The authors': log_scale = log(std + 1e-5) at data init.
# A channel whose batch std is below this is constant on the batch (a constant
# image, an always-black border): data init leaves its scale at 1 (log_scale 0)
# instead of dividing by std + eps ~ 1e-5, which would amplify any other input
# by ~1e5 per ActNorm and overflow to inf/NaN a few layers on.
ACTNORM_MIN_STD = 1e-3


class ActNormInitialized(nnx.Variable):
  """ActNorm's "data-dependent init done" flag (bool; shape (steps,) when stacked)."""


class ActNorm(nnx.Module):
  """Per-channel affine normalisation; images (B, H, W, C) or vectors (B, C).

  Attributes:
    loc: ``nnx.Param`` (C,), per-channel location of the input.
    log_scale: ``nnx.Param`` (C,), per-channel log scale of the input.
    initialized: :class:`ActNormInitialized` bool scalar.
    data_init_mode: static Python bool, set by :func:`data_init`.
  """

  def __init__(self, num_features: int, *, eps: float = ACTNORM_EPS,
               rngs: nnx.Rngs | None = None):
    del rngs  # deterministic init (identity); accepted for a uniform signature
    self.num_features = num_features
    self.eps = eps
    self.loc = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.log_scale = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.initialized = ActNormInitialized(jnp.array(False))
    self.data_init_mode = False

  def _maybe_data_init(self, x):
    axes = tuple(range(x.ndim - 1))
    x = jax.lax.stop_gradient(x)
    mean = jnp.mean(x, axis=axes)
    std = jnp.std(x, axis=axes)
    done = self.initialized[...]
    self.loc[...] = jnp.where(done, self.loc[...], mean)
    log_scale = jnp.where(std < ACTNORM_MIN_STD, 0.0, jnp.log(std + self.eps))
    self.log_scale[...] = jnp.where(done, self.log_scale[...], log_scale)
    self.initialized[...] = jnp.array(True)

  def forward(self, x):
    """x (B, ..., C) -> (z, log_det (B,)); z = (x - loc) * exp(-log_scale)."""
    x = _base.check_features(x, "x", self.num_features)
    if self.data_init_mode:
      self._maybe_data_init(x)
    z = (x - self.loc[...]) * jnp.exp(-self.log_scale[...])
    log_det = -_base.num_positions(x) * jnp.sum(self.log_scale[...])
    return z, _base.per_example(log_det, x)

  def inverse(self, z):
    """z (B, ..., C) -> x = z * exp(log_scale) + loc."""
    z = _base.check_features(z, "z", self.num_features)
    return z * jnp.exp(self.log_scale[...]) + self.loc[...]


def actnorm_layers(module: nnx.Module) -> list[ActNorm]:
  """Every ActNorm in ``module`` (a vectorised stack counts once)."""
  return [m for _, m in nnx.iter_modules(module) if isinstance(m, ActNorm)]


@contextlib.contextmanager
def data_init(module: nnx.Module) -> Iterator[nnx.Module]:
  """Context manager: forward passes inside it data-initialise every ActNorm.

  Works for ActNorms at any depth, including vectorised stacks iterated with
  ``nnx.scan`` (each step uses its own input) and under ``nnx.jit`` (the mode is a
  static attribute, so it is part of the graph definition and retraces). ActNorms
  whose :class:`ActNormInitialized` flag is already set are left unchanged.
  """
  layers = actnorm_layers(module)
  previous = [m.data_init_mode for m in layers]
  for m in layers:
    m.data_init_mode = True
  try:
    yield module
  finally:
    for m, p in zip(layers, previous):
      m.data_init_mode = p


def initialized_flags(module: nnx.Module) -> list:
  """The :class:`ActNormInitialized` flags of every ActNorm in ``module``
  (arrays; a vectorised stack's is one array), found with one pytree flatten:
  iterating the modules would cost more than a compiled call."""
  is_flag = lambda v: isinstance(v, ActNormInitialized)
  return [v[...] for v in jax.tree.leaves(module, is_leaf=is_flag) if is_flag(v)]


def is_initialized(module: nnx.Module) -> bool:
  """True when every ActNorm in ``module`` (every step of a stack) is initialised."""
  return all(bool(np.all(np.asarray(f))) for f in initialized_flags(module))
