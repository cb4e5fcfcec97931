"""The process environment nifzoo's jobs run in on CPU (no jax or numpy import here).

Two settings that a library cannot change once the process is running, measured in
``bench/README.md`` ("Threads", "Memory"):

* ``OPENBLAS_NUM_THREADS=1``: jax runs its CPU Cholesky and triangular solves (the
  NIF prior's k x k factor) in OpenBLAS, whose own threads then compete with XLA's
  for the cores. Read when numpy loads OpenBLAS.
* ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: XLA:CPU allocates the train step's
  temporaries (the scan's stacked residuals) afresh every step; glibc serves them
  with ``mmap`` and returns them with ``munmap``, so every step faults in zeroed
  4 KiB pages. With this tunable glibc asks for transparent huge pages (2 MiB),
  which cuts the faults and the step time (figures: ``bench/README.md``,
  "Memory"). Read by the dynamic loader at process
  start, so a running process must re-execute itself to get it
  (:func:`reexec_with_defaults`). Without transparent huge pages in the kernel, or
  outside glibc, it does nothing.

And one that keeps a CPU machine quiet: with ``libtpu`` installed (the ``tpu``
and ``test`` extras, for compiling TPU programs here) but no TPU on the machine,
jax would still load libtpu in every process, which probes for TPU hardware and
the cloud's metadata server and logs errors when it finds neither;
``JAX_PLATFORMS=cpu`` is set then (:func:`tpu_without_chips`).

``launch/train.py`` applies them; in a notebook or your own script, start Python with
them (``OPENBLAS_NUM_THREADS=1 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python ...``).
A variable you have set yourself is left alone. The first of them also holds in a
running process for the OpenBLAS that jax's CPU LAPACK calls use: importing
nifzoo's jax-using modules limits scipy's to one thread
(:func:`single_threaded_openblas`).
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

HUGETLB = "glibc.malloc.hugetlb=1"
# Set in the re-executed process, so that it never re-executes again.
_REEXEC_MARK = "NIFZOO_REEXEC"


def with_defaults(env: Mapping[str, str]) -> dict[str, str]:
  """``env`` plus nifzoo's CPU defaults where it does not set them itself.

  ``OPENBLAS_NUM_THREADS`` is added only if absent; ``glibc.malloc.hugetlb=1`` is
  appended to ``GLIBC_TUNABLES`` (``:``-separated) unless it already names
  ``glibc.malloc.hugetlb``.
  """
  out = dict(env)
  out.setdefault("OPENBLAS_NUM_THREADS", "1")
  if "JAX_PLATFORMS" not in out and tpu_without_chips():
    out["JAX_PLATFORMS"] = "cpu"
  tunables = out.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" not in tunables:
    out["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGETLB) if t)
  return out


def tpu_without_chips() -> bool:
  """libtpu is installed, no TPU device node exists (``/dev/accel*``,
  ``/dev/vfio/<n>``, where TPU VMs expose their chips) and no other accelerator
  plugin is installed. Finds packages without importing them."""
  import glob  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("libtpu") is None:
    return False
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return False
  return not any(importlib.util.find_spec(p) for p in (
      "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin"))


def reexec_with_defaults() -> None:
  """Re-executes this process once (same pid, same argv) under :func:`with_defaults`.

  Returns at once when the environment already has the defaults, or when this
  process is itself the re-executed one; call it first thing in a script, before
  anything is imported or started (threads, files, jax). Not on Windows (no
  ``execve`` there): there it only sets ``OPENBLAS_NUM_THREADS``.
  """
  env = with_defaults(os.environ)
  if env == dict(os.environ) or os.environ.get(_REEXEC_MARK) or os.name != "posix":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return
  env[_REEXEC_MARK] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  argv = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
  os.execve(sys.executable, argv, env)


def single_threaded_openblas() -> None:
  """scipy's OpenBLAS on one thread in a running process, unless
  ``OPENBLAS_NUM_THREADS`` is set.

  jax's CPU LAPACK calls (Cholesky, triangular solves: the NIF prior, the 1x1
  convolution's inverse) run in scipy's OpenBLAS, which starts its own threads
  for them; on small matrices those threads only wait for a free core. Loads it
  now and limits it to one thread (``threadpoolctl``, which scikit-learn
  requires); numpy's own OpenBLAS (the user's ``np.linalg``, ``@``) is left
  alone. One thread gives the same results (OpenBLAS splits the right-hand
  sides between its threads).
  """
  if "OPENBLAS_NUM_THREADS" in os.environ:
    return
  try:
    import scipy  # pylint: disable=g-import-not-at-top
    import scipy.linalg.cython_lapack  # pylint: disable=g-import-not-at-top,unused-import
    import threadpoolctl  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  site = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
  mine = (os.path.join(site, "scipy"), os.path.join(site, "scipy.libs"))
  for lib in threadpoolctl.ThreadpoolController().select(
      internal_api="openblas").lib_controllers:
    if os.path.abspath(lib.filepath).startswith(mine):
      lib.set_num_threads(1)
