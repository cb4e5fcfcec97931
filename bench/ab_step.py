"""XLA compiler options or config overrides on the train step, A/B in one process.

    python bench/ab_step.py --option xla_cpu_prefer_vector_width=512 \
        --option xla_cpu_enable_concurrency_optimized_scheduler=true
    python bench/ab_step.py --override unroll=true --out bench/results/ab_unroll.json
    python bench/ab_step.py --other cifar10-nif512,steps=8,width=128,scales=2,bits=8 \
        --out bench/results/ab_nif512.json

The model is built once; the step is compiled once with XLA's defaults (``base``)
and once per ``--option`` (each its own variant) or per ``--override`` (a config
override as in ``configs.get_config``'s argument, e.g. ``unroll=true``: the model is
built again from the same seed) or per ``--other`` (another config, e.g. the same
Glow with the NIF-512 prior), then a second time with the
defaults (``base again``: the spread between two identical programs is the noise
floor of the comparison). Every variant starts from the same state and batch
(its first-step loss is printed: an option that changes the numbers shows
there); the timed steps then run the variants in turn, in alternating order,
so load on the machine hits all alike. Runs with ``launch/train.py``'s
environment (``nifzoo/runtime.py``). Prints the median and minimum step time
of each and its ratio to ``base``; writes ``results/ab_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nifzoo import runtime  # noqa: E402  (no jax import)

runtime.reexec_with_defaults()  # As launch/train.py runs (bench/README.md, "Threads").

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _step  # noqa: E402
from nifzoo import configs  # noqa: E402


def parse_option(text):
  """'name=value' -> (name, value) with value a bool, an int or a string."""
  name, sep, value = text.partition("=")
  if not sep or not name:
    raise argparse.ArgumentTypeError(f"--option must be NAME=VALUE, got {text!r}")
  if value.lower() in ("true", "false"):
    return name, value.lower() == "true"
  try:
    return name, int(value)
  except ValueError:
    return name, value


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="cifar10-nf,steps=8,width=128,scales=2,bits=8")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--option", action="append", type=parse_option, default=[],
                 help="NAME=VALUE of one variant (repeat for more variants)")
  p.add_argument("--override", action="append", default=[],
                 help="a config override KEY=VALUE as one variant (repeatable)")
  p.add_argument("--other", action="append", default=[],
                 help="another config (a registry name with overrides) as one "
                      "variant, e.g. the same Glow with another prior")
  p.add_argument("--reps", type=int, default=12, help="timed steps per variant")
  p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ab_step.json"))
  args = p.parse_args(argv)

  config = configs.get_config(args.config)
  c = _step.compile_step(config, args.batch)
  start = _step.initialized(c)
  variants = ([("base", None)] + [(f"{n}={v}", {n: v}) for n, v in args.option]
              + [(o, f"{args.config},{o}") for o in args.override]
              + [(o, o) for o in args.other] + [("base again", None)])
  first = c.images()
  steps, states, compiled = {}, {}, {}
  for name, options in variants:
    begin = start
    if name == "base":
      step, compile_s = c.step, c.compile_s
    elif isinstance(options, str):  # --override or --other: a config to build.
      oc = _step.compile_step(configs.get_config(options), args.batch)
      step, compile_s, begin = oc.step, oc.compile_s, _step.initialized(oc)
    else:
      step, compile_s = _step.compile_train_step(c, config, options)
    state, m = step(jax.tree.map(jnp.copy, begin), first)
    jax.block_until_ready(m)
    steps[name], states[name] = step, state
    compiled[name] = dict(compile_s=compile_s,
                          first_bits_per_dim=float(m["bits_per_dim"]))
    print(f"{name}: compile {compile_s:.1f} s, first-step bits/dim "
          f"{float(m['bits_per_dim']):.6f}", flush=True)
  times = {name: [] for name, _ in variants}
  for r in range(args.reps):
    x = c.images()
    for name, _ in (variants if r % 2 == 0 else variants[::-1]):
      t0 = time.perf_counter()
      states[name], m = steps[name](states[name], x)
      jax.block_until_ready(m)
      times[name].append(time.perf_counter() - t0)
  base = float(np.median(times["base"]))
  rows = []
  for name, _ in variants:
    t = np.asarray(times[name])
    rows.append(dict(variant=name, median_s=float(np.median(t)), min_s=float(t.min()),
                     ratio=float(np.median(t)) / base,
                     images_per_s=args.batch / float(np.median(t)), **compiled[name]))
    print(f"{name:48s} median {1e3 * rows[-1]['median_s']:7.1f} ms  min "
          f"{1e3 * rows[-1]['min_s']:7.1f} ms  x base {rows[-1]['ratio']:.3f}")
  git = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"],
                       capture_output=True, text=True).stdout.strip()
  out = dict(commit=git, config=args.config, batch=args.batch, reps=args.reps,
             load=os.getloadavg()[0], variants=rows,
             command=" ".join(["python", "bench/ab_step.py"] + (argv or sys.argv[1:])))
  pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
