"""Compiled model methods: eager checks, then one cached XLA program per call shape.

Op by op (eager JAX), a zoo model pays most of a second of dispatch per call
for microseconds of arithmetic. :func:`method` turns a model method's
computation into a compiled program without changing what it computes::

  class ImageFlow(nnx.Module):
    def log_prob(self, x, *, key=None, noise_scale=1.0):
      self._check_images(x)                      # eager checks, as before
      return self._log_prob(x, key, noise_scale)  # compiled

    @compiled.method(concrete=("noise_scale",))
    def _log_prob(self, x, key, noise_scale):
      ...                                         # the computation, unchanged

How a call runs:

- **Inside a trace** (a user's ``jax.jit``/``nnx.jit``/``vmap``/``grad``/
  ``checks.checked``, or another compiled method): the plain method runs, so it
  traces into the caller's program (no nested compile, gradients flow).
  Detected by JAX's trace state (not clean inside any transformation, ``grad``
  of the model's parameters included), or by a tracer among the arguments. Also plain under ``jax.disable_jit()`` and after
  ``nifzoo.configure(compiled_methods=False)``.
- **Otherwise**: a ``jax.jit`` of the method is called with the module as a
  pytree argument (NNX modules are pytrees; flattening one is cheaper than
  ``nnx.split``), the static arguments static (hashed, compared by
  value) and the array arguments as inputs. The module's *current* variables
  are the program's inputs, never baked-in constants: training,
  ``initialize``, ``nnx.update`` and a new ``zoo.load`` are honoured by the
  next call. JAX's jit cache holds one program per (method, module treedef =
  structure and static attributes, like an ``nnx`` graphdef, static arguments,
  input shapes/dtypes): equally built models share programs, and the cache
  holds tree definitions, never a model or its arrays. Modules whose variables
  are shared between submodules (not a tree) are not supported (ImageFlow is
  a tree).

Arguments: arrays (jax, numpy), PRNG keys, ``None`` and Python ``float``/``int``
are program inputs (a new value reuses the program); everything else (strings,
bools, tuples of them) and the names in ``static`` are static (a new value
compiles once more). Names in ``concrete`` are scalars whose *concrete* value
the computation branches on (e.g. ``noise_scale``, converted in float64 for
exact densities at tiny scales): a concrete scalar is passed static, so the
program computes what eager code computes. A static argument that cannot be
hashed runs the plain method. ``mutates=True`` returns the model's new state
from the program and writes it back (``nnx.update``), as ``initialize`` needs.

Errors raised while tracing (a bad static argument) propagate unchanged, before
any computation; value checks belong in the eager part of the public method.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Iterable

import jax
import numpy as np
from flax import nnx

from nifzoo import cache as _cache
from nifzoo import runtime

try:  # Private, but the only direct test for "inside a transformation".
  from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover - other jax versions: tracers only.
  def _trace_state_clean() -> bool:
    return True

_cache.apply_default()
runtime.single_threaded_openblas()

_DYNAMIC_LEAVES = (jax.Array, np.ndarray, np.generic, float, int, complex)


def enabled() -> bool:
  """False after ``nifzoo.configure(compiled_methods=False)`` (op by op)."""
  return _cache.compiled_methods()


class _Static:
  """A hashable static argument that keeps its type (0.5 and np.float32(0.5)
  are different programs, as their eager results may differ in dtype)."""
  __slots__ = ("value", "_key")

  def __init__(self, value):
    self.value = value
    self._key = (type(value), value)
    hash(self._key)  # Unhashable: TypeError, the caller runs the plain method.

  def __eq__(self, other):
    return isinstance(other, _Static) and self._key == other._key

  def __hash__(self):
    return hash(self._key)

  def __repr__(self):
    return repr(self.value)


def _is_dynamic(value) -> bool:
  return all(isinstance(leaf, _DYNAMIC_LEAVES)
             and not isinstance(leaf, (bool, np.bool_))
             for leaf in jax.tree.leaves(value))


def _concrete_scalar(value):
  """A concrete scalar as a hashable Python/numpy scalar, else ``value``."""
  if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
    return np.asarray(value)[()]
  return value


def _has_tracer(tree) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def tracing(*trees) -> bool:
  """True inside a JAX transformation, or when any of ``trees`` holds a tracer."""
  return not _trace_state_clean() or _has_tracer(trees)


def method(*, static: Iterable[str] = (), concrete: Iterable[str] = (),
           mutates: bool = False) -> Callable:
  """Decorates an ``nnx.Module`` method: compiled when called eagerly (see the
  module docstring), the plain method inside a trace.

  Args:
    static: argument names always passed static (shapes, modes, strings).
    concrete: scalar argument names passed static when concrete, because the
      computation branches on their value.
    mutates: the method changes the module's variables; the program returns the
      new state and the call writes it back.
  """
  static, concrete = frozenset(static), frozenset(concrete)

  def decorate(fn):
    sig = inspect.signature(fn)
    names = list(sig.parameters)[1:]  # After self.
    unknown = (static | concrete) - set(names)
    if unknown:
      raise ValueError(f"{fn.__qualname__} has no arguments {sorted(unknown)}.")

    def program(statics, module, dynamic):
      out = fn(module, **{k: v.value for k, v in statics}, **dynamic)
      return (out, nnx.state(module)) if mutates else out

    program.__name__ = fn.__name__.lstrip("_")
    program.__qualname__ = fn.__qualname__
    jitted = jax.jit(program, static_argnums=(0,))

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
      if not enabled() or jax.config.jax_disable_jit or tracing(args, kwargs):
        return fn(self, *args, **kwargs)
      bound = sig.bind(self, *args, **kwargs)
      bound.apply_defaults()
      statics, dynamic = [], {}
      for name in names:
        value = bound.arguments[name]
        if name in concrete:
          value = _concrete_scalar(value)
        if name in static or name in concrete or not _is_dynamic(value):
          try:
            statics.append((name, _Static(value)))
          except TypeError:  # Unhashable: as eagerly.
            return fn(self, *args, **kwargs)
        else:
          dynamic[name] = value
      # The module is a pytree argument: its variables are the program's
      # inputs, its structure and static attributes part of the cache key.
      out = jitted(tuple(statics), self, dynamic)
      if mutates:
        out, new_state = out
        nnx.update(self, new_state)
      return out

    wrapper.compiled = jitted  # For tests and benchmarks (cache sizes).
    return wrapper

  return decorate

