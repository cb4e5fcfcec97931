"""Small shared pieces of the bijective layers.

Every bijection in :mod:`nifzoo.flows` follows one layer contract::

    forward(x) -> (z, log_det)   # data -> latent, log_det = log|det dz/dx|, shape (B,)
    inverse(z) -> x              # latent -> data
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo import checks


class FlowConstant(nnx.Variable):
  """A fixed, non-trainable tensor of a layer (a permutation, a sign vector).

  It is saved with ``nnx.state(model)`` but is not an ``nnx.Param``, so
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` never updates it.
  """


def check_features(x, name: str, num_features: int, *, min_rank: int = 2,
                   rank: int | None = None):
  """Requires a float array ``(B, ..., num_features)``; returns it."""
  x = checks.check_float(x, name)
  shape = tuple(np.shape(x))
  if rank is not None:
    if len(shape) != rank:
      want = {2: "(B, D)", 4: "(B, H, W, C)"}.get(rank, f"rank {rank}")
      raise ValueError(f"{name} must have shape {want} with {num_features} features "
                       f"last, "
                       f"got {shape}.")
  elif len(shape) < min_rank:
    raise ValueError(f"{name} must have rank >= {min_rank} (B, ..., "
                     f"{num_features}), got shape {shape}.")
  if shape[-1] != num_features:
    raise ValueError(f"{name} must have {num_features} features on its last "
                     f"axis, got shape {shape}.")
  return x


def num_positions(x) -> int:
  """Number of positions sharing per-channel parameters: prod(shape[1:-1])."""
  return int(np.prod(np.shape(x)[1:-1], dtype=np.int64))


def per_example(value, x):
  """Broadcasts a scalar log-det to shape (B,) in float32."""
  return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (np.shape(x)[0],))


def standard_normal_log_prob(z, event_ndim: int = 1):
  """log N(z; 0, I) summed over the last ``event_ndim`` axes: (..., *event) -> (...)."""
  k = int(np.prod(z.shape[z.ndim - event_ndim:]))
  axes = tuple(range(-event_ndim, 0))
  return -0.5 * jnp.sum(jnp.square(z), axis=axes) - 0.5 * k * math.log(2 * math.pi)


def sum_except_batch(x):
  """Sums over every axis but the first: (B, ...) -> (B,)."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)
