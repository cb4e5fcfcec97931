"""JAX's persistent compilation cache for nifzoo users, on by default.

A second Python process loads the programs the first one compiled (model
methods, evaluation, training steps) from disk instead of compiling them again.
When nifzoo's jax-using modules are imported (``nifzoo.models`` and everything
above it), :func:`apply_default` points JAX's persistent cache at a per-user
directory, ``<user cache dir>/nifzoo/jax`` (``platformdirs``; else
``$XDG_CACHE_HOME`` or ``~/.cache``), and lowers JAX's threshold for writing a
program (``jax_persistent_cache_min_compile_time_secs``, default 1 s) to
:data:`MIN_COMPILE_SECS`, unless the user configured them already:

- ``JAX_COMPILATION_CACHE_DIR`` (the environment) or ``jax_compilation_cache_dir``
  (``jax.config``) set, or ``jax_enable_compilation_cache`` off: left alone
  (tests and CI set their own directory, ``tests/conftest.py``).
- ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` set, or the threshold changed:
  left alone.
- ``NIFZOO_COMPILATION_CACHE=0`` (or ``false``/``off``/``no``): nifzoo sets nothing;
  ``NIFZOO_COMPILATION_CACHE=/some/dir``: that directory instead.
- ``nifzoo.configure(compilation_cache=False)`` turns JAX's persistent cache off in
  this process, ``compilation_cache="/some/dir"`` (or ``True``, the default
  directory) turns it on there.

JAX's cache is one per process: programs of the user's own code compiled in the
same process are cached in the same directory. Importing :mod:`nifzoo` alone
(``nifzoo.configs``) imports no jax and changes nothing.
"""

from __future__ import annotations

import os
import warnings

ENV = "NIFZOO_COMPILATION_CACHE"
# Programs that took less to compile are not written (eager JAX compiles one
# tiny program per op; a model method's program takes longer than this).
MIN_COMPILE_SECS = 0.1
_OFF = ("0", "false", "off", "no")
_ON = ("", "1", "true", "on", "yes")

# What apply_default/configure did: source "nifzoo" (nifzoo set the directory),
# "user" (configured outside nifzoo), "off" (NIFZOO_COMPILATION_CACHE=0 or
# configure(compilation_cache=False)), None (not applied yet).
_STATE = {"source": None, "dir": None}
# nifzoo.configure(compiled_methods=...), read by nifzoo.compiled on every call.
_COMPILED_METHODS = [True]


def compiled_methods() -> bool:
  """Whether the models' public methods run compiled (:mod:`nifzoo.compiled`)."""
  return _COMPILED_METHODS[0]


def default_dir() -> str:
  """``<per-user cache dir>/nifzoo/jax``."""
  try:
    import platformdirs  # pylint: disable=g-import-not-at-top
    base = platformdirs.user_cache_dir("nifzoo")
  except ImportError:
    base = os.path.join(os.environ.get("XDG_CACHE_HOME")
                        or os.path.join(os.path.expanduser("~"), ".cache"), "nifzoo")
  return os.path.join(base, "jax")


def _env_setting():
  """``NIFZOO_COMPILATION_CACHE``: True (default dir), False (off) or a path."""
  value = os.environ.get(ENV)
  if value is None or value.strip().lower() in _ON:
    return True
  if value.strip().lower() in _OFF:
    return False
  return os.path.expanduser(value)


def _user_configured(jax) -> bool:
  return (bool(os.environ.get("JAX_COMPILATION_CACHE_DIR"))
          or jax.config.jax_compilation_cache_dir is not None
          or not jax.config.jax_enable_compilation_cache)


def _reset() -> None:
  """Makes JAX re-read the cache settings (it reads them at the first compile)."""
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.reset_cache()


def _enable(jax, path: str) -> bool:
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    warnings.warn(f"nifzoo: no persistent compilation cache ({path}: {e}); "
                  f"set {ENV}=<writable dir> or {ENV}=0.", RuntimeWarning)
    return False
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  if ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ
      and jax.config.jax_persistent_cache_min_compile_time_secs == 1.0):
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_SECS)
  _reset()
  _STATE.update(source="nifzoo", dir=path)
  return True


def apply_default() -> None:
  """Turns the cache on in the default (or ``NIFZOO_COMPILATION_CACHE``)
  directory unless configured otherwise; once per process."""
  if _STATE["source"] is not None:
    return
  import jax  # pylint: disable=g-import-not-at-top
  if _user_configured(jax):
    _STATE.update(source="user", dir=jax.config.jax_compilation_cache_dir)
    return
  setting = _env_setting()
  if setting is False or not _enable(jax, default_dir() if setting is True
                                     else setting):
    _STATE.update(source="off", dir=None)


def configure(*, compilation_cache=None, compiled_methods=None) -> dict:
  """Process-wide nifzoo settings; returns the resulting :func:`status`.

  Args:
    compilation_cache: ``False`` turns JAX's persistent compilation cache off,
      ``True`` puts it in the default per-user directory, a path there.
      ``None``: unchanged.
    compiled_methods: ``False`` makes the models' public methods run op by op
      (eager JAX, for debugging); ``True`` (the default) compiles them
      (:mod:`nifzoo.compiled`). ``None``: unchanged.
  """
  if compiled_methods is not None:
    _COMPILED_METHODS[0] = bool(compiled_methods)
  if compilation_cache is not None:
    import jax  # pylint: disable=g-import-not-at-top
    if compilation_cache is False:
      jax.config.update("jax_enable_compilation_cache", False)
      _reset()
      _STATE.update(source="off", dir=None)
    else:
      path = default_dir() if compilation_cache is True else os.path.expanduser(
          os.fspath(compilation_cache))
      if not _enable(jax, path):
        _STATE.update(source="off", dir=None)
  return status()


def status() -> dict:
  """``{"source": "nifzoo" | "user" | "off" | None, "dir": ..., "compiled_methods": ...}``."""
  return dict(_STATE, compiled_methods=_COMPILED_METHODS[0])
