"""Where the train step's time goes: a jax.profiler trace, aggregated per HLO op.

    python bench/profile_step.py                       # the glow_vs_peer config
    python bench/profile_step.py --config digits-nif16 --batch 64 --top 30

Compiles the train step, runs a few steps under ``jax.profiler.trace`` and sums
the host thread events of the XLA:CPU executable by name (HLO fusion / op
names, e.g. ``dot.12``, ``loop_fusion.3``). Prints the top ops with their
share of the step, and their HLO (``--show-hlo``) so that a name can be traced
back to the model. Events of nested ops overlap their parents, and XLA:CPU
runs ops from several threads, so shares are of the summed op time. Runs in
``launch/train.py``'s environment (``nifzoo/runtime.py``), as the other benchmarks do.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nifzoo import runtime  # noqa: E402  (no jax import)

runtime.reexec_with_defaults()  # As launch/train.py runs (bench/README.md, "Threads").

import jax  # noqa: E402

import _step  # noqa: E402
from nifzoo import configs  # noqa: E402


def op_times(trace_dir):
  """{event name: (total seconds, count)} over every XLA op event in the trace."""
  files = list(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
  data = jax.profiler.ProfileData.from_file(str(files[0]))
  totals = collections.defaultdict(lambda: [0.0, 0])
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        name = ev.name
        totals[name][0] += ev.duration_ns * 1e-9
        totals[name][1] += 1
  return totals


def split_dots(hlo, ops):
  """(seconds in matrix products, {JAX op: seconds} of the other ops).

  A product is a ``dot`` or a fusion whose computation holds one. The others are
  grouped by the JAX primitive in their metadata (``dynamic_update_slice``,
  ``concatenate``, ...); ops without metadata (the scan's zero-filled buffers,
  ``wrapped_broadcast.*``, and copies XLA inserted) by their HLO kind. Eigen's
  products run beside other ops, so the time they take shows partly in others'."""
  bodies = dict(re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S))
  lines = dict(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", hlo, re.M))
  dots, rest = 0.0, collections.defaultdict(float)
  for name, (t, _) in ops.items():
    line = lines.get(name, "")
    called = re.search(r"calls=%?([\w.\-]+)", line)
    body = bodies.get(called.group(1), "") if called else ""
    if re.search(r"\bdot\(", line) or re.search(r"\bdot\(", body):
      dots += t
      continue
    meta = re.search(r'op_name="([^"]*)"', line)
    rest[meta.group(1).split("/")[-1] if meta else
         re.sub(r"[.\d]+$", "", name) + " (no metadata)"] += t
  return dots, rest


class _Tee:
  """Writes to a file and to a stream."""

  def __init__(self, *streams):
    self.streams = streams

  def write(self, text):
    for st in self.streams:
      st.write(text)

  def flush(self):
    for st in self.streams:
      st.flush()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="cifar10-nf,steps=8,width=128,scales=2,bits=8")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--show-hlo", action="store_true")
  p.add_argument("--dump-hlo", default=None, help="write the optimised HLO here")
  p.add_argument("--out", default=None,
                 help="also write what is printed to this file (bench/results/...)")
  args = p.parse_args(argv)
  if args.out:
    sys.stdout = _Tee(open(args.out, "w"), sys.stdout)

  git = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
                       capture_output=True, text=True).stdout.strip()
  print(f"nifzoo {git}\n{args.config}, batch {args.batch}")
  c = _step.compile_step(configs.get_config(args.config), args.batch)
  compiled, images = c.step, c.images
  print(f"compile {c.compile_s:.1f} s")
  hlo = compiled.as_text()
  if args.dump_hlo:
    pathlib.Path(args.dump_hlo).write_text(hlo)
  state = _step.initialized(c)
  state, m = compiled(state, images())
  jax.block_until_ready(m)
  xs = [images() for _ in range(args.steps)]
  # Unprofiled: wall, user and kernel CPU time and page faults per step (the
  # temporaries are allocated afresh every step: bench/README.md, "Memory").
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for x in xs:
    state, m = compiled(state, x)
    jax.block_until_ready(m)
  r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
  n = args.steps
  temp = compiled.memory_analysis().temp_size_in_bytes
  print(f"unprofiled step {wall / n:.3f} s; per step: user {(r1.ru_utime - r0.ru_utime) / n:.3f}"
        f" s, kernel {(r1.ru_stime - r0.ru_stime) / n:.3f} s CPU, "
        f"{(r1.ru_minflt - r0.ru_minflt) / n:.0f} minor page faults; temporaries "
        f"{temp / 2**20:.0f} MiB; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  xs = [images() for _ in range(args.steps)]
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    with jax.profiler.trace(d):
      for x in xs:
        state, m = compiled(state, x)
        jax.block_until_ready(m)
    wall = (time.perf_counter() - t0) / args.steps
    totals = op_times(d)
  print(f"step {wall:.3f} s under the profiler ({args.batch / wall:.1f} img/s), "
        f"load {os.getloadavg()[0]:.2f}")
  # Keep XLA op events (HLO instruction names), drop runtime/python wrappers.
  hlo_names = set(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = ", hlo, re.M))
  ops = {k: v for k, v in totals.items() if k in hlo_names}
  total = sum(v[0] for v in ops.values())
  print(f"summed op time per step {total / args.steps:.3f} s over {len(ops)} ops")
  rows = sorted(ops.items(), key=lambda kv: -kv[1][0])[:args.top]
  kinds = collections.defaultdict(float)
  for name, (t, _) in ops.items():
    kinds[re.sub(r"[.\d]+$", "", name)] += t
  print("by kind: " + ", ".join(f"{k} {100 * t / total:.0f}%" for k, t in
                                sorted(kinds.items(), key=lambda kv: -kv[1])[:8]))
  dots, rest = split_dots(hlo, ops)
  print(f"matrix products {1e3 * dots / args.steps:.1f} ms/step "
        f"({100 * dots / total:.0f}%), everything else "
        f"{1e3 * sum(rest.values()) / args.steps:.1f} ms/step, by JAX op: " +
        ", ".join(f"{k} {1e3 * t / args.steps:.1f}" for k, t in
                  sorted(rest.items(), key=lambda kv: -kv[1])[:10]))
  print(f"{'op':<40} {'ms/step':>8} {'%':>5} {'calls/step':>10}")
  for name, (t, n) in rows:
    print(f"{name:<40} {1e3 * t / args.steps:8.1f} {100 * t / total:5.1f} "
          f"{n / args.steps:10.0f}")
    if args.show_hlo:
      line = next((l for l in hlo.splitlines()
                   if re.match(rf"^\s*(ROOT )?%?{re.escape(name)} = ", l)), "")
      print("    " + line.strip()[:300])


if __name__ == "__main__":
  main()
