"""Interactive latency of the zoo models' public methods (issue 31).

For each model (``zoo.load(name, init="random")``, ActNorms initialised on one
random batch, batch 16) and each public method, in one process:

- ``first``: the first call (trace + compile; the persistent cache is a fresh,
  empty directory, so this is a cold compile),
- ``warm``: the median of warm calls,
- ``ref``: the same call under a hand-written ``nnx.jit`` (warm median), the
  reference the compiled methods are measured against,
- ``eager``: the method op by op (``nifzoo.configure(compiled_methods=False)``,
  what every call cost before; digits models only, ``--eager_reps`` calls).

Warm calls of the method and of the reference alternate in ``--rounds`` rounds
of ``--reps`` calls; each keeps its fastest round's median (the machine may be
shared). Then, each in a fresh Python process:

- ``fresh``: ``import nifzoo`` + ``zoo.load("digits-nif16")`` (trained weights) +
  the first ``sample(key, 16)``, with a cold (new, empty) and then a warm (the
  same directory again) persistent cache, ``--fresh_pairs`` such pairs in turn
  (the ratio is the median of the pairs' warm / cold), and op by op with no
  cache (before);
- ``fresh_first_calls``: every method of ``celeba-nif128`` (``init="random"``)
  in a fresh process, cold and warm cache, called in the order of the table
  (as a user would go through them). A method's ``first`` call is the wall time
  from the call until its result (for ``initialize``, the model's new state) is
  ready, its inputs made and ready before; ``second`` is the call right after
  it (execution only: its program is loaded), and ``first - second`` the
  compile (or cache load) and tracing the first call pays (its warm / cold
  ratio is left out where the cold first call is less than ``NO_COMPILE_S``
  slower than the second: nothing was compiled). ``bits_per_dim`` runs
  ``log_prob``'s program (already loaded by then) and one tiny op, so its first
  call is execution either way and its warm / cold ratio says nothing about
  the cache.

Prints a table and writes ``bench/results/latency.json``::

    python bench/latency.py [--models digits-nif16,digits-deepnif16,celeba-nif128]
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
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if __name__ == "__main__":
  # The benchmark's own cache directory, empty: first calls are cold compiles
  # (and the user's cache is left alone). Set before nifzoo is imported.
  os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
  os.environ["NIFZOO_COMPILATION_CACHE"] = tempfile.mkdtemp(
      prefix="nifzoo-latency-cache-")

import warnings  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import nifzoo  # noqa: E402
from nifzoo import zoo  # noqa: E402

BATCH = 16
# A cold first call at most this much slower than the second compiled nothing
# (bits_per_dim: log_prob's program): no compile-time ratio for it.
NO_COMPILE_S = 0.1


def _methods(n):
  """name -> f(model, inputs): every public method, as a user calls it."""
  return {
      "log_prob": lambda m, a: m.log_prob(a["x"], key=a["k"]),
      "bits_per_dim": lambda m, a: m.bits_per_dim(a["x"], key=a["k"]),
      "encode": lambda m, a: m.encode(a["x"]),
      "decode": lambda m, a: m.decode(a["z"], key=a["k"], noise_scale=1.0),
      "reconstruct": lambda m, a: m.reconstruct(a["x"]),
      "sample": lambda m, a: m.sample(a["k"], n),
      "sample_latent": lambda m, a: m.sample_latent(a["k"], n),
      "flow_latent": lambda m, a: m.flow_latent(a["x"], key=a["k"]),
      "flow_inverse": lambda m, a: m.flow_inverse(a["v"]),
  }


def _time(fn) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def _initialize(model, args):
  """``model.initialize`` as timed: returns the new state (None otherwise)."""
  model.initialize(args["x"], key=args["k"])
  return nnx.state(model)


def _median(fn, reps) -> float:
  return statistics.median(_time(fn) for _ in range(reps))


def inputs(model, key):
  """Images, latents and flow latents, made without calling the model (so
  that no method is compiled before its first call is timed)."""
  kx, kz, kv, k = jax.random.split(key, 4)
  return {"x": jax.random.randint(kx, (BATCH, *model.image_shape), 0,
                                  model.num_levels),
          "z": jax.random.normal(kz, (BATCH, model.latent_dim)),
          "v": jax.random.normal(kv, (BATCH, model.dim)), "k": k}


def bench_model(name, *, reps, rounds, eager_reps):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # ActNorms not initialised yet.
    t = time.perf_counter()
    model = zoo.load(name, init="random")
    load_s = time.perf_counter() - t
    args = jax.block_until_ready(inputs(model, jax.random.key(0)))
    init_s = _time(lambda: _initialize(model, args))
  rows = {"initialize": {"first_ms": 1e3 * init_s}}
  for method, fn in _methods(BATCH).items():
    first = _time(lambda: fn(model, args))
    ref = nnx.jit(fn)
    ref_first = _time(lambda: ref(model, args))
    warm, warm_ref = [], []
    for _ in range(rounds):
      warm.append(_median(lambda: fn(model, args), reps))
      warm_ref.append(_median(lambda: ref(model, args), reps))
    row = {"first_ms": 1e3 * first, "warm_ms": 1e3 * min(warm),
           "ref_ms": 1e3 * min(warm_ref), "ref_first_ms": 1e3 * ref_first}
    row["warm_over_ref"] = row["warm_ms"] / row["ref_ms"]
    if eager_reps:
      nifzoo.configure(compiled_methods=False)
      try:
        _time(lambda: fn(model, args))  # Compiles its ops: not counted.
        row["eager_ms"] = 1e3 * _median(lambda: fn(model, args), eager_reps)
      finally:
        nifzoo.configure(compiled_methods=True)
    rows[method] = row
    print(f"  {name} {method}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
          flush=True)
  params = sum(int(np.size(p)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return {"params": params, "load_ms": 1e3 * load_s, "methods": rows}


# ---- fresh processes ----------------------------------------------------------

_FRESH = r"""
import json, os, sys, time, warnings
t0 = time.perf_counter()
import jax
import nifzoo
from nifzoo import zoo
t1 = time.perf_counter()
if os.environ.get("BENCH_EAGER") == "1":
  nifzoo.configure(compiled_methods=False)
name, which = sys.argv[1], sys.argv[2]
out = {"cache": nifzoo.cache.status()["dir"]}
warnings.simplefilter("ignore", UserWarning)
model = zoo.load(name, **({"init": "random"} if which == "all" else {}))
t2 = time.perf_counter()
key = jax.random.key(0)
if which == "sample":
  jax.block_until_ready(model.sample(key, 16))
  t3 = time.perf_counter()
  out.update(import_s=t1 - t0, load_s=t2 - t1, first_sample_s=t3 - t2, total_s=t3 - t0)
else:
  sys.path.insert(0, os.path.join(os.environ["BENCH_ROOT"], "bench"))
  import latency
  args = jax.block_until_ready(latency.inputs(model, key))
  calls = {"initialize": latency._initialize, **latency._methods(16)}
  first, second = {}, {}
  for m, fn in calls.items():
    first[m] = latency._time(lambda: fn(model, args))
    second[m] = latency._time(lambda: fn(model, args))
  out.update(import_s=t1 - t0, load_s=t2 - t1, first_s=first, second_s=second,
             total_s=time.perf_counter() - t0)
print("RESULT " + json.dumps(out))
"""


def _fresh(name, which, cache, eager=False):
  env = dict(os.environ, BENCH_ROOT=str(ROOT),
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["NIFZOO_COMPILATION_CACHE"] = cache if cache else "0"
  if eager:
    env["BENCH_EAGER"] = "1"
  out = subprocess.run([sys.executable, "-c", _FRESH, name, which],
                       capture_output=True, text=True, env=env, timeout=3600)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def fresh_processes(models_all_methods, pairs):
  result = {}
  r = {"before_eager_no_cache": _fresh("digits-nif16", "sample", None, eager=True),
       "pairs": []}
  for _ in range(pairs):
    cache = tempfile.mkdtemp(prefix="nifzoo-latency-fresh-")
    cold = _fresh("digits-nif16", "sample", cache)
    warm = _fresh("digits-nif16", "sample", cache)
    r["pairs"].append({"cold": cold, "warm": warm,
                       "warm_over_cold": warm["total_s"] / cold["total_s"]})
    print("  fresh digits-nif16:", json.dumps(r["pairs"][-1]), flush=True)
  # The pair with the median ratio stands for the run (cold and warm of one pair).
  median = sorted(r["pairs"], key=lambda p: p["warm_over_cold"])[(pairs - 1) // 2]
  r.update(cold=median["cold"], warm=median["warm"],
           warm_over_cold=median["warm_over_cold"])
  result["digits-nif16_sample"] = r
  for name in models_all_methods:
    cache = tempfile.mkdtemp(prefix="nifzoo-latency-fresh-")
    cold = _fresh(name, "all", cache)
    warm = _fresh(name, "all", cache)
    overhead = lambda o, m: o["first_s"][m] - o["second_s"][m]
    result[f"{name}_first_calls"] = {
        "cold": cold, "warm": warm,
        "warm_over_cold": {m: warm["first_s"][m] / cold["first_s"][m]
                           for m in cold["first_s"]},
        "overhead_warm_over_cold": {
            m: overhead(warm, m) / overhead(cold, m) for m in cold["first_s"]
            if overhead(cold, m) >= NO_COMPILE_S},
        "total_warm_over_cold": warm["total_s"] / cold["total_s"]}
    print(f"  fresh {name}:", json.dumps(result[f"{name}_first_calls"]), flush=True)
  return result


def _table(results) -> str:
  lines = ["| model | method | first call (s) | warm (ms) | nnx.jit ref (ms) | warm / ref | op by op, before (ms) |",
           "|---|---|---|---|---|---|---|"]
  for name, r in results["models"].items():
    for method, row in r["methods"].items():
      if "warm_ms" not in row:
        lines.append(f"| {name} | {method} | {row['first_ms'] / 1e3:.2f} | | | | |")
        continue
      eager = f"{row['eager_ms']:.0f}" if "eager_ms" in row else "—"
      lines.append(f"| {name} | {method} | {row['first_ms'] / 1e3:.2f} | "
                   f"{row['warm_ms']:.2f} | {row['ref_ms']:.2f} | "
                   f"{row['warm_over_ref']:.2f} | {eager} |")
  fresh = results.get("fresh", {})
  if "digits-nif16_sample" in fresh:
    f = fresh["digits-nif16_sample"]
    lines += ["", "| fresh process: import + zoo.load(\"digits-nif16\") + first sample | import (s) | load (s) | first sample (s) | total (s) |",
              "|---|---|---|---|---|"]
    for k in ("before_eager_no_cache", "cold", "warm"):
      g = f[k]
      lines.append(f"| {k} | {g['import_s']:.2f} | {g['load_s']:.2f} | "
                   f"{g['first_sample_s']:.2f} | {g['total_s']:.2f} |")
    lines.append(f"| warm / cold (median of {len(f['pairs'])} pairs: "
                 + ", ".join(f"{p['warm_over_cold']:.2f}" for p in f["pairs"])
                 + f") | | | | {f['warm_over_cold']:.2f} |")
  for key, f in fresh.items():
    if not key.endswith("_first_calls"):
      continue
    lines += ["", f"| fresh process, {key[:-len('_first_calls')]}: first call (s) | cold cache | warm cache | warm / cold | second call, cold / warm process (s) | first - second, warm / cold |",
              "|---|---|---|---|---|---|"]
    for m in f["cold"]["first_s"]:
      lines.append(f"| {m} | {f['cold']['first_s'][m]:.2f} | "
                   f"{f['warm']['first_s'][m]:.2f} | {f['warm_over_cold'][m]:.2f} | "
                   f"{f['cold']['second_s'][m]:.2f} / {f['warm']['second_s'][m]:.2f} | "
                   + (f"{f['overhead_warm_over_cold'][m]:.2f} |"
                      if m in f["overhead_warm_over_cold"] else "— |"))
    lines.append(f"| whole process (import, load, every call twice) | {f['cold']['total_s']:.1f} | "
                 f"{f['warm']['total_s']:.1f} | {f['total_warm_over_cold']:.2f} | | |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="digits-nif16,digits-deepnif16,celeba-nif128")
  parser.add_argument("--fresh_all_methods", default="celeba-nif128",
                      help="models whose every first call is timed in fresh processes")
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--big_reps", type=int, default=3,
                      help="reps for models whose image has over 1,000 values")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--eager_reps", type=int, default=3,
                      help="op-by-op calls per method (digits models only; 0: none)")
  parser.add_argument("--fresh_pairs", type=int, default=3,
                      help="cold/warm fresh-process pairs for digits-nif16's first sample")
  parser.add_argument("--no_fresh", action="store_true")
  parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.json"))
  args = parser.parse_args()
  results = {
      "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": f"{platform.node()} {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), shared with other jobs",
      "load_average_start": os.getloadavg(),
      "jax": jax.__version__, "backend": jax.default_backend(), "batch": BATCH,
      "models": {}}
  for name in [m for m in args.models.split(",") if m]:
    big = name.startswith(("celeba", "cifar", "fmnist"))
    print(f"{name}:", flush=True)
    results["models"][name] = bench_model(
        name, reps=args.big_reps if big else args.reps, rounds=args.rounds,
        eager_reps=0 if big else args.eager_reps)
  if not args.no_fresh:
    print("fresh processes:", flush=True)
    results["fresh"] = fresh_processes(
        [m for m in args.fresh_all_methods.split(",") if m], args.fresh_pairs)
  results["load_average_end"] = os.getloadavg()
  table = _table(results)
  results["table"] = table
  print(table)
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
  pathlib.Path(args.out).with_suffix(".md").write_text(table + "\n")
  print("wrote", args.out)


if __name__ == "__main__":
  main()
