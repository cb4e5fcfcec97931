"""Input validation shared by every public entry point.

Each check raises a ``ValueError``/``TypeError`` whose message names the argument,
what was expected and what was received, so bad input never becomes a silent NaN.

What is checked when:

- Static facts (shape, dtype, the type of Python scalars, an empty batch) are
  checked always, eagerly and under ``jit`` (they are known at trace time).
- Values (images in ``[0, L)``, finite latents, ``noise_scale``/``temperature``
  >= 0) are checked only on concrete arrays, i.e. eagerly. Under ``jax.jit`` or
  ``nnx.jit`` a traced value cannot raise: out-of-range images give a finite but
  wrong log p, non-finite latents give garbage images, and a jitted
  ``initialize`` on out-of-range images writes NaN into the ActNorms, silently.
- For jitted use, :func:`checked` gives the checked variant of a function: it
  is ``checkify.checkify(jax.jit(fn), errors=checkify.user_checks)`` with the
  value checks above emitted as ``checkify.check``, that raises a
  ``checkify.JaxRuntimeError`` (a ``ValueError``) naming the problem::

    log_prob = checks.checked(lambda model, x: model.log_prob(x))
    log_prob(model, x)          # raises for x outside [0, L), as eagerly

    graphdef, state = nnx.split(model)
    def init(state, x):         # jitted functions return what they change
      m = nnx.merge(graphdef, state)
      m.initialize(x)
      return nnx.state(m)
    nnx.update(model, checks.checked(init)(state, batch))

  The value checks are emitted only while :func:`checked` traces (a plain
  ``jit`` of the same code contains none: ``checkify.check`` cannot be staged
  outside ``checkify.checkify``), so plain jitted code, the training step
  included, is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Sequence

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

# > 0 while `checked` traces a function: value checks then emit checkify.check.
_FUNCTIONALIZED = [0]


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


def check_nonempty(x, name: str, what: str = "image"):
  """Requires a non-empty leading (batch) axis: B >= 1."""
  shape = tuple(np.shape(x))
  if not shape or shape[0] == 0:
    raise ValueError(f"{name} must hold at least one {what}, got shape {shape}.")
  return x


def check_real_scalar(s, name: str):
  """Requires a real number (Python int/float, or a numeric array), not a string
  or a bool; raises ``TypeError`` naming ``name`` and the type received."""
  dtype = getattr(s, "dtype", None)
  if dtype is None:
    ok = isinstance(s, (int, float, np.integer, np.floating)) and not isinstance(
        s, (bool, np.bool_))
  else:
    ok = jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
  if not ok:
    what = type(s).__name__ if dtype is None else f"{type(s).__name__} of dtype {dtype}"
    raise TypeError(f"{name} must be a real number, got {what} ({s!r}).")
  return s


def check_nonnegative(s, name: str):
  """Requires a finite real scalar >= 0 named ``name``.

  The type is checked always; the value when concrete, or under :func:`checked`.
  """
  check_real_scalar(s, name)
  if is_concrete(s):
    arr = np.asarray(s)
    if arr.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got shape {arr.shape}.")
    if not np.isfinite(arr) or arr < 0:
      raise ValueError(f"{name} must be a finite number >= 0, got {arr.item()}.")
  elif functionalized():
    value_check(jnp.all(jnp.isfinite(s) & (s >= 0)),
                f"{name} must be a finite number >= 0, got {{s}}.", s=s)
  return s


def check_noise_scale(s):
  """The test-time noise scale s (Σ -> s²Σ) must be a finite real number >= 0."""
  return check_nonnegative(s, "noise_scale")


def check_temperature(t):
  """The sampling temperature T (z = T eps) must be a finite real number >= 0."""
  return check_nonnegative(t, "temperature")


def check_finite(x, name: str):
  """Requires every entry of ``x`` to be finite (when concrete, or under
  :func:`checked`); the error says how many are not."""
  if is_concrete(x):
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
    if bad:
      raise ValueError(f"{name} must be finite, got {bad} NaN or inf entries "
                       f"of {np.size(x)} (shape {tuple(np.shape(x))}).")
  elif functionalized():
    bad = jnp.sum(~jnp.isfinite(x))
    value_check(bad == 0, f"{name} must be finite, got {{n}} NaN or inf entries "
                f"of {np.size(x)} (shape {tuple(np.shape(x))}).", n=bad)
  return x


# ------------------------------------------------------------------ under jit


def functionalized() -> bool:
  """True while :func:`checked` traces: traced value checks are then emitted."""
  return _FUNCTIONALIZED[0] > 0


def value_check(pred, msg: str, **values):
  """``checkify.check(pred, msg, **values)`` while :func:`checked` traces, else
  nothing (a traced value cannot raise under a plain ``jit``)."""
  if functionalized():
    checkify.check(pred, msg, **values)


@contextlib.contextmanager
def _functionalize() -> Iterator[None]:
  _FUNCTIONALIZED[0] += 1
  try:
    yield
  finally:
    _FUNCTIONALIZED[0] -= 1


def checked(fn: Callable, **jit_kwargs) -> Callable:
  """The checked, jitted variant of ``fn``: raises on bad values under ``jit``.

  ``checkify.checkify(jax.jit(fn, **jit_kwargs), errors=checkify.user_checks)``
  (itself jitted, so it is traced once per input shape) traced with the value checks on (images in [0, L), finite latents, noise
  scales >= 0); a failed check raises ``checkify.JaxRuntimeError`` (a
  ``ValueError``) with the eager message. ``fn`` takes and returns pytrees
  (NNX modules are pytrees, fine for methods that do not change them); to
  change a module (``initialize``), pass ``nnx.state``, merge it with the
  graphdef inside and return the new state, as ``train.loop`` does. Costs one reduction per check and a host sync per call
  to read the error, so keep it off hot loops (the training step uses none).
  Functions ``fn`` calls that are jitted on their own are traced by their own
  jit, without the checks: call the plain methods inside ``fn``.
  """
  def traced(*args, **kwargs):  # Its own identity: jit's trace cache is keyed
    return fn(*args, **kwargs)   # on the function, so a plain jax.jit(fn)'s
                                 # check-free trace is never reused here.

  # The inner jit traces fn at one trace level (NNX modules merged inside may
  # be mutated); the outer one caches the checkified program.
  jitted = jax.jit(checkify.checkify(jax.jit(traced, **jit_kwargs),
                                     errors=checkify.user_checks))

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with _functionalize():
      err, out = jitted(*args, **kwargs)
    err.throw()
    return out

  return wrapper


def check_positive_int(n, name: str):
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"{name} must be a positive integer, got {n!r}.")
  return int(n)


def check_choice(value, name: str, choices: Sequence[str]):
  """Requires ``value`` to be one of ``choices`` (an enum-like string argument)."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
  return value
