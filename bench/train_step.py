"""Train-step throughput, peak memory and compile time on this machine.

  python bench/train_step.py            # all cases -> bench/results/train_step.json
  python bench/train_step.py --quick    # the small configs -> .../train_step_quick.json

Each case runs in its own process, so that its peak RSS (ru_maxrss) is its own:
build + ActNorm init + compile the jitted train step, then time a few steps
(images/s, median step time). The CelebA paper config (80 Glow steps) runs three
timed steps at batch 32: its compile time and the peak RSS of a real step. The
paper-size configs also run with ``unroll=true`` (the Glow's steps unrolled),
each in its own process as a training run would.
``--host_devices=N`` runs every case on N XLA host devices (data parallel over
the cores; the default is the one device jax gives a CPU). Prints a table and writes
the whole results file from this one run (with the machine's load average, since
other processes slow every figure); if a case fails, nothing is written.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nifzoo import runtime  # noqa: E402  (no jax import)
CASES = [
    # (registry name with overrides, batch, steps to time, compile only)
    ("digits-nif8,tiny", 32, 20, False),
    ("digits-nif16", 64, 20, False),
    ("cifar10-nif128", 32, 3, False),
    ("cifar10-nif128,unroll=true", 32, 3, False),
    ("celeba-nif128", 32, 3, False),   # The paper's 80-step Glow: compile + RSS.
    ("celeba-nif128,unroll=true", 32, 3, False),
]


def run_case(name, batch, steps, compile_only):
  sys.path.insert(0, os.path.join(ROOT, "bench"))
  import jax
  import numpy as np

  import _step
  from nifzoo import configs

  c = _step.compile_step(configs.get_config(name), batch)
  state, images, compiled = c.state, c.images, c.step
  build_s, compile_s = c.build_s, c.compile_s
  result = dict(name=name, batch=batch, devices=jax.device_count(),
                build_s=build_s, compile_s=compile_s,
                params=int(sum(x.size for x in jax.tree.leaves(state.params))))
  if not compile_only:
    state = _step.initialized(c)
    state, m = compiled(state, images())  # Warm-up.
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
      x = images()
      t0 = time.perf_counter()
      state, m = compiled(state, x)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    result.update(steps=steps, step_s=med, images_per_s=batch / med,
                  bits_per_dim=float(m["bits_per_dim"]))
  result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return result


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="small configs only")
  p.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument("--host_devices", type=int, default=None,
                 help="XLA host devices per case (default: jax's, 1 on CPU)")
  p.add_argument("--out", default=None,
                 help="results file (default bench/results/train_step[_quick].json)")
  args = p.parse_args()
  if args.case is not None:
    print(json.dumps(run_case(*CASES[args.case])))
    return
  cases = range(2) if args.quick else range(len(CASES))
  out_path = args.out or os.path.join(
      ROOT, "bench", "results",
      ("train_step_quick" if args.quick else "train_step")
      + (f"_{args.host_devices}dev" if args.host_devices else "") + ".json")
  load_before = os.getloadavg()
  results, failed = [], []
  print(f"{'config':<20} {'batch':>5} {'params':>11} {'compile s':>9} "
        f"{'step s':>8} {'img/s':>8} {'peak RSS MB':>11}", flush=True)
  for i in cases:
    env = runtime.with_defaults(os.environ)  # As launch/train.py runs.
    if args.host_devices:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                          f"device_count={args.host_devices}").strip()
    out = subprocess.run([sys.executable, __file__, f"--case={i}"],
                         capture_output=True, text=True, env=env)
    if out.returncode:
      print(f"{CASES[i][0]}: failed\n{out.stderr[-2000:]}", flush=True)
      failed.append(CASES[i][0])
      continue
    r = json.loads(out.stdout.strip().splitlines()[-1])
    results.append(r)
    step_s = f"{r['step_s']:.3f}" if "step_s" in r else "-"
    ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"
    print(f"{r['name']:<20} {r['batch']:>5} {r['params']:>11,} "
          f"{r['compile_s']:>9.1f} {step_s:>8} {ips:>8} {r['peak_rss_mb']:>11.0f}",
          flush=True)
  if failed:
    sys.exit(f"Not writing {out_path}: {', '.join(failed)} failed.")
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  with open(out_path, "w") as f:
    json.dump(dict(
        command=" ".join(["python", "bench/train_step.py"] + sys.argv[1:]),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=dict(cpus=os.cpu_count(), platform=platform.platform(),
                     load_average_1m_before_after=[load_before[0], os.getloadavg()[0]]),
        results=results), f, indent=2)
  print(f"wrote {out_path}")


if __name__ == "__main__":
  main()
