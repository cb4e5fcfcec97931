"""Benchmark: the README's main job (train digits-nif16 on CPU, 2,000 steps), end to end.

Runs ``launch/train.py --config=configs/digits.py:nif16`` in a fresh workdir, as
the README's first command does, and reads from its log the wall time the
launcher reports ("Done in N s": build, compile, train, evaluate, save), the
training rate of the last progress line (steps/s) and the final test bits/dim.
With ``--base PATH`` (another checkout of nifzoo, e.g. a ``git worktree`` at an
older commit) the two trees run alternately, ``--reps`` times each, so that load
on the machine hits both alike. With ``--two-devices`` the current tree runs
alternately with one CPU device and with two host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``: data parallel over both
cores), written to ``results/main_job_2dev.json`` unless ``--out`` says otherwise.

    python bench/main_job.py [--reps 2] [--base PATH | --two-devices] [--steps 2000]

Prints a table and writes bench/results/main_job.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "main_job.json"
CONFIG = "configs/digits.py:nif16"

_DONE = re.compile(r"Done in (\d+) s: .*'test_bits_per_dim': ([0-9.eE+-]+)")
_RATE = re.compile(r"([0-9.]+) steps/s")


def git_head(tree: pathlib.Path) -> str:
  return subprocess.run(["git", "log", "-1", "--format=%h %s"], capture_output=True,
                        text=True, cwd=tree).stdout.strip()


TWO_DEVICES = "--xla_force_host_platform_device_count=2"


def run_job(tree: pathlib.Path, steps: int, xla_flags: str = "") -> dict:
  """One run of the main job in ``tree`` (its own nifzoo on PYTHONPATH), with
  ``xla_flags`` appended to XLA_FLAGS."""
  with tempfile.TemporaryDirectory() as workdir:
    env = dict(os.environ, PYTHONPATH=str(tree))
    if xla_flags:
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    cmd = [sys.executable, "launch/train.py", f"--config={CONFIG}",
           f"--workdir={workdir}/run", f"--config.total_steps={steps}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
  log = p.stdout + p.stderr
  done, rates = _DONE.search(log), _RATE.findall(log)
  if p.returncode or not done or not rates:
    raise SystemExit(f"the main job failed in {tree} (rc {p.returncode}):\n{log[-3000:]}")
  return dict(done_s=int(done.group(1)), process_s=process_s,
              steps_per_s=float(rates[-1]), test_bits_per_dim=float(done.group(2)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=2)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--base", type=pathlib.Path, default=None,
                      help="another nifzoo checkout to time alternately")
  parser.add_argument("--two-devices", action="store_true",
                      help="time one device against two host devices")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  if args.base is not None and args.two_devices:
    parser.error("--base and --two-devices are two different comparisons")

  # name -> (tree, XLA flags)
  if args.base is not None:
    cases = {"base": (args.base.resolve(), ""), "current": (ROOT, "")}
  elif args.two_devices:
    cases = {"1 device": (ROOT, ""), "2 devices": (ROOT, TWO_DEVICES)}
  else:
    cases = {"current": (ROOT, "")}
  out = args.out or (RESULTS.with_name("main_job_2dev.json") if args.two_devices
                     else RESULTS)
  runs = {name: [] for name in cases}
  for rep in range(args.reps):
    for name, (tree, flags) in cases.items():
      r = run_job(tree, args.steps, flags)
      runs[name].append(r)
      print(f"rep {rep} {name:9} done in {r['done_s']:4d} s (process "
            f"{r['process_s']:.0f} s)  {r['steps_per_s']:6.1f} steps/s  test "
            f"bits/dim {r['test_bits_per_dim']:.4f}", flush=True)
  summary = {}
  for name, rs in runs.items():
    summary[name] = {k: statistics.median(r[k] for r in rs)
                     for k in ("done_s", "process_s", "steps_per_s")}
    summary[name]["git"] = git_head(cases[name][0])
    summary[name]["xla_flags"] = cases[name][1]
    print(f"{name:9} median: done in {summary[name]['done_s']:.0f} s, process "
          f"{summary[name]['process_s']:.0f} s, {summary[name]['steps_per_s']:.1f} "
          f"steps/s  ({summary[name]['git'][:7]})")
  result = dict(
      benchmark="main_job", command=f"python launch/train.py --config={CONFIG}",
      steps=args.steps, reps=args.reps,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
      cpus=os.cpu_count(), machine=platform.machine(),
      load_average=os.getloadavg(), summary=summary, runs=runs)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
