"""A vectorised stack of identical bijections, iterated with ``nnx.scan``.

The ``num_steps`` copies are built once with ``nnx.vmap`` (their parameters carry a
leading ``num_steps`` axis, per-step keys from ``nnx.split_rngs``) and applied with
``nnx.scan``, so the traced program holds ONE step body whatever ``num_steps`` is:
compile time does not grow with depth.

``unroll`` is ``jax.lax.scan``'s: ``1`` (the default) keeps one body in a loop;
``True`` (or ``num_steps``) unrolls it into ``num_steps`` copies, with the same
parameters and the same numbers. Unrolled, the program has no loop, so the
reverse pass reads each step's saved activations where the forward pass wrote
them; in a loop, XLA stacks them into zero-filled ``(num_steps, ...)`` buffers and
copies each step's slice out again. Unrolled, compile time grows with depth and
the program needs more memory (both measured in ``bench/README.md``, "Unrolled
stacks").
Values in between (2 .. num_steps - 1) still stack and gain nothing here.

The vmapped initialisers run as one jitted program, kept per (step, num_steps):
run eagerly, each of their many small ops would be compiled on its own, the larger
part of building a small model. The numbers are the same either way.

Both scans use ``nnx.scan(..., graph_updates=False)``: variable updates (ActNorm's
data-dependent init) still flow back to the stack, and a model closed over by a plain
JAX transform (``jax.jacfwd``/``jax.vmap`` of ``lambda x: model.forward(x)``) still
works; the default graph-updates scan refuses Variables from an outer trace level
("Cannot extract graph node from different trace level"). Data-dependent init itself
must run eagerly or under ``nnx.jit`` (it writes the variables).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo import checks


def _cache_key(make_step):
  """A hashable stand-in for ``make_step``: a ``functools.partial`` by its function
  and arguments (two equal partials share one compiled init), else itself."""
  if isinstance(make_step, functools.partial):
    key = (make_step.func, make_step.args, tuple(sorted(make_step.keywords.items())))
    try:
      hash(key)
      return key
    except TypeError:  # An unhashable argument: this partial only.
      pass
  return make_step


@functools.lru_cache(maxsize=64)
def _stacked_init(key, num_steps: int):
  """``rngs -> num_steps`` vmapped steps (stacked parameters), one ``nnx.jit``."""
  if isinstance(key, tuple):
    func, args, kwargs = key
    make_step = functools.partial(func, *args, **dict(kwargs))
  else:
    make_step = key

  @nnx.jit
  @nnx.split_rngs(splits=num_steps)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return make_step(rngs=rngs)

  return create


def _check_unroll(unroll) -> int | bool:
  """``unroll`` as ``jax.lax.scan`` takes it: a bool, or a positive int."""
  if isinstance(unroll, (bool, np.bool_)):
    return bool(unroll)
  return checks.check_positive_int(unroll, "unroll")


class ScannedStack(nnx.Module):
  """``num_steps`` bijections ``make_step(rngs=rngs)`` composed in order.

  forward: ``z = f_{n-1}(... f_0(x))``, ``log_det = sum_i log_det_i`` (B,);
  inverse: ``x = f_0^{-1}(... f_{n-1}^{-1}(z))`` (a reversed scan).
  The stacked step module is ``self.steps`` (leading axis = step index);
  ``unroll`` as ``jax.lax.scan``'s (module docstring).
  """

  def __init__(self, make_step: Callable[..., nnx.Module],
               num_steps: int, *, unroll: int | bool = 1, rngs: nnx.Rngs):
    self.num_steps = checks.check_positive_int(num_steps, "num_steps")
    self.unroll = _check_unroll(unroll)
    self.steps = _stacked_init(_cache_key(make_step), self.num_steps)(rngs)

  def forward(self, x):
    """x (B, ...) -> (z (B, ...), log_det (B,))."""

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, graph_updates=False,
              unroll=self.unroll)
    def body(step, carry):
      h, log_det = carry
      h, ld = step.forward(h)
      return h, log_det + ld

    return body(self.steps, (x, jnp.zeros((x.shape[0],), jnp.float32)))

  def inverse(self, z):
    """z (B, ...) -> x, steps applied in reverse order."""

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, reverse=True,
              graph_updates=False, unroll=self.unroll)
    def body(step, h):
      return step.inverse(h)

    return body(self.steps, z)
