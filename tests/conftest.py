"""Test-session set-up: compile fast, and compile each program once.

The tests run tiny models whose time goes into XLA compilation, not execution:

- ``--xla_backend_optimization_level=0`` (and no expensive LLVM passes) makes
  XLA:CPU compile about a third faster; the programs run slower, which tiny
  shapes do not notice. Numerics are unchanged up to float reassociation,
  inside every test's tolerance; runs compared bitwise use the same flags.
- One persistent compilation cache per test session, shared through the
  environment by the xdist workers and by every ``launch/train.py`` or
  ``train_worker.py`` subprocess, so a program compiled by one is loaded by
  the others (the tiny digits train step, eval and sampling functions recur).

Only compilation changes: every check still runs. Set ``JAX_COMPILATION_CACHE_DIR``
yourself to keep a cache between sessions, or ``NIFZOO_TEST_XLA_OPT=1`` to test
with XLA's default optimisation.
"""

import os
import shutil
import tempfile

_FAST_COMPILE = ("--xla_backend_optimization_level=0",
                 "--xla_llvm_disable_expensive_passes=true")


def pytest_configure(config):
  if hasattr(config, "workerinput"):  # An xdist worker: the controller set it up.
    return
  if os.environ.get("NIFZOO_TEST_XLA_OPT") != "1":
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags += [f for f in _FAST_COMPILE if f not in flags]
    os.environ["XLA_FLAGS"] = " ".join(flags)
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    cache = tempfile.mkdtemp(prefix="nifzoo-test-xla-cache-")
    config.nifzoo_cache_dir = cache
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
  # Cache small compilations too, not only those over jax's default 1 s.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  # TPU compiles (tests/test_tpu.py): the xdist workers each load libtpu, which
  # refuses a second process unless told (libtpu's lockfile).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def pytest_unconfigure(config):
  cache = getattr(config, "nifzoo_cache_dir", None)
  if cache:
    shutil.rmtree(cache, ignore_errors=True)
