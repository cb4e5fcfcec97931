"""Input validation shared by every public entry point.

Each check raises a ``ValueError``/``TypeError`` whose message names the argument,
what was expected and what was received, so bad input never becomes a silent NaN.
Checks only look at static facts (shape, dtype, Python scalars), so they are free
under ``jit``; value-range checks run only on concrete (non-traced) arrays.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
  """True when ``x`` holds values we can inspect (not a tracer under jit)."""
  return not isinstance(x, jax.core.Tracer)


def check_float(x, name: str):
  """Requires a floating-point array; returns it as a jax array."""
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    x = jnp.asarray(x)
    dtype = x.dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {dtype}.")
  return x


def check_shape(x, name: str, expected: Sequence[int | None]):
  """Requires ``x.shape`` to match ``expected`` (``None`` matches any size)."""
  shape = tuple(np.shape(x))
  expected = tuple(expected)
  ok = len(shape) == len(expected) and all(
      e is None or e == s for e, s in zip(expected, shape))
  if not ok:
    want = "(" + ", ".join("B" if e is None else str(e) for e in expected) + ")"
    raise ValueError(f"{name} must have shape {want}, got {shape}.")
  return x


def check_noise_scale(s, name: str = "noise_scale"):
  """The test-time noise scale s must be >= 0 (checked when concrete)."""
  if is_concrete(s):
    arr = np.asarray(s)
    if arr.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got shape {arr.shape}.")
    if not np.isfinite(arr) or arr < 0:
      raise ValueError(f"{name} must be a finite number >= 0, got {arr.item()}.")
  return s


def check_positive_int(n, name: str):
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"{name} must be a positive integer, got {n!r}.")
  return int(n)


def check_choice(value, name: str, choices: Sequence[str]):
  """Requires ``value`` to be one of ``choices`` (an enum-like string argument)."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
  return value
