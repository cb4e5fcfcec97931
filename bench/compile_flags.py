"""XLA:CPU compile time of the tiny digits programs under the test suite's flags.

The suite's time is compilation of many small programs (tests/conftest.py sets
its XLA flags for that). This measures, for each flag set, in a fresh process
with no persistent cache, the compile (``lowered.compile()``) and the first run
of three programs of ``digits-nif8,tiny`` at batch 8 (``log_prob``, the train
step, ``sample`` of 16), the trace + lowering before it, and the process's CPU
time over the three. The flag sets run in turn, ``--reps`` rounds; the table is
the median over rounds.

Prints a table and writes ``bench/results/compile_flags.json``::

    python bench/compile_flags.py [--reps 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import FAST_COMPILE  # noqa: E402  The test session's flags.

# name -> XLA_FLAGS: none, then the suite's flags added one at a time.
_LOOP_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
_ONE_SPLIT = "--xla_cpu_parallel_codegen_split_count=1"
FLAG_SETS = {
    "default": "",
    "O0": " ".join(f for f in FAST_COMPILE if f not in (_LOOP_EMITTERS, _ONE_SPLIT)),
    "loop": " ".join(f for f in FAST_COMPILE if f != _ONE_SPLIT),
    "suite": " ".join(FAST_COMPILE),
}
PROGRAMS = ("log_prob", "train_step", "sample")

_CHILD = r"""
import json, sys, time
import jax
import numpy as np
from flax import nnx
from nifzoo import configs
from nifzoo import mesh as mesh_lib
from nifzoo.train import setup as setup_lib
from nifzoo.train import step as step_lib

c = configs.get_config("digits-nif8,tiny")
c.batch_size = 8
mesh = mesh_lib.make_mesh()
x = np.random.default_rng(0).integers(0, 17, size=(8, 8, 8, 1)).astype(np.int32)
graphdef, tx, state = setup_lib.create_state(c, mesh)
gd, st = nnx.split(nnx.merge(graphdef, state.params, state.rest))
programs = {
    "log_prob": (jax.jit(lambda st, x: nnx.merge(gd, st).log_prob(x)), (st, x)),
    "train_step": (jax.jit(step_lib.make_train_step(graphdef, tx, c)), (state, x)),
    "sample": (jax.jit(lambda st, k: nnx.merge(gd, st).sample(k, 16)),
               (st, jax.random.key(0))),
}
out, cpu0 = {}, time.process_time()
for name, (f, args) in programs.items():
  t0 = time.perf_counter()
  lowered = f.lower(*args)
  t1, c1 = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  t2, c2 = time.perf_counter(), time.process_time()
  jax.block_until_ready(compiled(*args))
  t3 = time.perf_counter()
  out[name] = dict(lower_s=t1 - t0, compile_s=t2 - t1, compile_cpu_s=c2 - c1,
                   first_run_s=t3 - t2)
out["cpu_s"] = time.process_time() - cpu0
print("RESULT " + json.dumps(out))
"""


def _run(flags: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(XLA_FLAGS=flags, NIFZOO_COMPILATION_CACHE="0", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                        text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"XLA_FLAGS={flags!r} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile_flags.json"))
  args = p.parse_args()
  runs = {name: [] for name in FLAG_SETS}
  t0 = time.time()
  for rep in range(args.reps):
    for name, flags in FLAG_SETS.items():
      runs[name].append(_run(flags))
      print(f"\rround {rep + 1}/{args.reps}: {name:8s}", end="", flush=True)
  print()
  med = lambda xs: statistics.median(xs)
  table = {}
  for name, rs in runs.items():
    row = {f"{prog}_{k}": med([r[prog][k] for r in rs])
           for prog in PROGRAMS
           for k in ("lower_s", "compile_s", "compile_cpu_s", "first_run_s")}
    row["cpu_s"] = med([r["cpu_s"] for r in rs])
    table[name] = row
  print("compile: wall / CPU (XLA's codegen threads included)")
  print(f"{'flags':8s} " + " ".join(f"{p:>18s}" for p in PROGRAMS)
        + f" {'process CPU':>12s}")
  for name, row in table.items():
    print(f"{name:8s} " + " ".join(
        f"{row[p + '_compile_s']:8.2f}s /{row[p + '_compile_cpu_s']:6.2f}s"
        for p in PROGRAMS) + f" {row['cpu_s']:11.1f}s")
  result = dict(
      flag_sets=FLAG_SETS, median=table, runs=runs, reps=args.reps,
      run_s=time.time() - t0, loadavg=os.getloadavg(), cpus=os.cpu_count(),
      python=platform.python_version(),
      jax=subprocess.run([sys.executable, "-c", "import jax; print(jax.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip(),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
