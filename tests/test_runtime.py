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
def test_with_defaults_keeps_what_the_user_set(env, want):
  assert runtime.with_defaults(env) == want


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
