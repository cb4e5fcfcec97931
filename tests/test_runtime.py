"""nifzoo.runtime: the CPU environment defaults and the one-time re-execution."""

import os
import subprocess
import sys

import pytest

from nifzoo import runtime


@pytest.mark.parametrize("env,want", [
    ({}, {"OPENBLAS_NUM_THREADS": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    ({"OPENBLAS_NUM_THREADS": "4", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
     {"OPENBLAS_NUM_THREADS": "4",
      "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", "X": "y"},
     {"OPENBLAS_NUM_THREADS": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0",
      "X": "y"}),
])
def test_with_defaults_keeps_what_the_user_set(env, want, monkeypatch):
  monkeypatch.setattr(runtime, "tpu_without_chips", lambda: False)
  assert runtime.with_defaults(env) == want


def test_libtpu_without_chips_keeps_jax_on_cpu(monkeypatch, tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(runtime, "tpu_without_chips", lambda: True)
  assert runtime.with_defaults({})["JAX_PLATFORMS"] == "cpu"
  assert runtime.with_defaults({"JAX_PLATFORMS": "tpu"})["JAX_PLATFORMS"] == "tpu"
  monkeypatch.undo()
  found = {"libtpu"}
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name: object() if name in found else None)
  assert runtime.tpu_without_chips() == (not os.path.exists("/dev/accel0"))
  found.add("jax_cuda13_plugin")  # A GPU machine keeps its default platforms.
  assert not runtime.tpu_without_chips()
  found.clear()
  assert not runtime.tpu_without_chips()


_SCRIPT = """
import os, sys
print("start", flush=True)
from nifzoo import runtime
runtime.reexec_with_defaults()
print(sys.argv[1:], os.environ["OPENBLAS_NUM_THREADS"], os.environ["GLIBC_TUNABLES"])
"""


@pytest.mark.skipif(os.name != "posix", reason="execve")
@pytest.mark.parametrize("preset,starts", [(False, 2), (True, 1)])
def test_reexec_happens_once_and_keeps_argv(preset, starts):
  env = {k: v for k, v in os.environ.items()
         if k not in ("OPENBLAS_NUM_THREADS", "GLIBC_TUNABLES", "NIFZOO_REEXEC")}
  if preset:
    env = runtime.with_defaults(env)
  out = subprocess.run([sys.executable, "-c", _SCRIPT, "--a=1", "b c"], env=env,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert out.count("start") == starts, out
  assert out[-1] == "['--a=1', 'b c'] 1 glibc.malloc.hugetlb=1"
