"""Glow train step on CPU: nifzoo against normflows, side by side in one run.

The same model shape in both libraries: Glow, K = 8 steps per scale, L = 2
scales, coupling width 128, 32x32x3 images, batch 64, Adam (lr 1e-3). nifzoo is
``cifar10-nf,steps=8,width=128,scales=2,bits=8``; the peer is normflows 1.7.3's
``MultiscaleFlow`` of ``GlowBlock``s (channel split, affine coupling, LU 1x1
conv, ActNorm) with ``DiagGaussian`` base distributions, PyTorch CPU eager on 2
threads. The peer runs in its own venv (see bench/README.md)::

    python bench/glow_vs_peer.py                    # 5 alternating repetitions
    python bench/glow_vs_peer.py --reps 3 --steps 8 --label after
    python bench/glow_vs_peer.py --no-extras        # train step only
    python bench/glow_vs_peer.py --base PATH        # also another checkout's nifzoo

Every measurement is a fresh subprocess (so peak RSS is its own); the cases are
run in turn, repetition after repetition, so machine load hits all of them
alike. Cases:

  nifzoo      the train step, default devices (1 CPU device, XLA's thread pool)
  nifzoo-unroll the same with the Glow's step loops unrolled (``unroll=true``)
  nifzoo-2dev the same on 2 host devices (data-parallel over both cores)
  peer        normflows' train step (zero_grad, forward_kld, backward, Adam)
  matmul      float32 2048^2 matmul in jax: the machine's attainable GFLOP/s
  nifzoo-nif512 (extras) the same Glow with the NIF-512 prior (D = 3072)

With ``--base PATH`` (another checkout of nifzoo, e.g. a ``git worktree`` at an
older commit) each nifzoo case also runs from that tree (``<case>@base``), in the
same rotation: before and after a change, in one run.

plus, once per run (extras): sampling and log_prob throughput of both models,
and XLA's own FLOP count of the step (cost analysis of the unrolled program: XLA
counts a scanned body once, whatever its trip count).

Prints images/s per case (median over repetitions, with min-max spread), the
ratio nifzoo / peer of the medians, achieved GFLOP/s (analytic FLOPs of the step,
``train_flops``) against the matmul measured in the same run, compile time and
peak RSS; writes bench/results/glow_vs_peer[_LABEL].json (one run, one file).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_PEER_PYTHON = "/work/peer-venv/bin/python"

IMAGE_SHAPE = (32, 32, 3)     # (H, W, C)
SCALES, STEPS, WIDTH, BATCH, LR = 2, 8, 128, 64, 1e-3
NIFZOO_CONFIG = f"cifar10-nf,steps={STEPS},width={WIDTH},scales={SCALES},bits=8"
NIF_CONFIG = f"cifar10-nif512,steps={STEPS},width={WIDTH},scales={SCALES},bits=8"
UNROLLED_CONFIG = NIFZOO_CONFIG + ",unroll=true"


# ----------------------------------------------------------------------------
# Arithmetic of the step (the same for both libraries).
# ----------------------------------------------------------------------------


def forward_flops_per_image(shape=IMAGE_SHAPE, scales=SCALES, steps=STEPS,
                            width=WIDTH) -> int:
  """Multiply-adds x 2 of one Glow forward pass per image (convs and 1x1 convs).

  Scale s acts on (H/2^(s+1), W/2^(s+1), c = 4 C 2^s); a step costs
  2 P (9 (c/2) F + F^2 + 9 F c + c^2) with P positions. Element-wise work
  (ActNorm, exp, tanh, adds) is O(P c) and left out.
  """
  h, w, ch = shape
  total = 0
  for s in range(scales):
    p = (h // 2**(s + 1)) * (w // 2**(s + 1))
    c, f = 4 * ch * 2**s, width
    total += steps * 2 * p * (9 * (c // 2) * f + f * f + 9 * f * c + c * c)
  return total


def train_flops(batch=BATCH, **kw) -> int:
  """A train step is a forward and a backward pass: 3 x forward (input and weight
  gradients of every matmul/conv; every layer's input gradient is needed)."""
  return 3 * batch * forward_flops_per_image(**kw)


# ----------------------------------------------------------------------------
# Workers (each runs in its own process and prints one JSON line).
# ----------------------------------------------------------------------------


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _time_calls(fn, n):
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def worker_nifzoo(config_name, steps, extras):
  sys.path.insert(0, str(ROOT / "bench"))
  import jax
  from flax import nnx

  import _step
  from nifzoo import configs

  config = configs.get_config(config_name)
  config.learning_rate = LR
  c = _step.compile_step(config, BATCH)
  graphdef, images, compiled, compile_s = c.graphdef, c.images, c.step, c.compile_s
  state = _step.initialized(c)
  state, m = compiled(state, images())    # warm-up
  jax.block_until_ready(m)
  batches = [images() for _ in range(steps)]
  times, cpu = [], []
  for x in batches:
    t0, c0 = time.perf_counter(), _cpu_s()
    state, m = compiled(state, x)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    cpu.append(_cpu_s() - c0)
  out = dict(devices=jax.device_count(), compile_s=compile_s, step_times=times,
             step_cpu_s=cpu,
             params=int(sum(x.size for x in jax.tree.leaves(state.params))),
             bits_per_dim=float(m["bits_per_dim"]))
  if extras:
    model_fn = lambda p, r: nnx.merge(graphdef, p, r)
    log_prob = jax.jit(lambda p, r, x, key: model_fn(p, r).log_prob(x, key=key))
    sample = jax.jit(lambda p, r, key: model_fn(p, r).sample(key, BATCH))
    x, key = images(), jax.random.key(0)
    jax.block_until_ready(log_prob(state.params, state.rest, x, key))
    jax.block_until_ready(sample(state.params, state.rest, key))
    out["log_prob_times"] = _time_calls(lambda: jax.block_until_ready(
        log_prob(state.params, state.rest, x, key)), steps)
    out["sample_times"] = _time_calls(lambda: jax.block_until_ready(
        sample(state.params, state.rest, key)), steps)
  out["peak_rss_mb"] = _peak_rss_mb()
  return out


def worker_flop_count():
  """XLA's FLOP count of the nifzoo step, from the unrolled program.

  XLA's cost analysis counts a ``while`` body once, whatever its trip count, so the
  scanned (default) program reports about one Glow step per scale; unrolled, the
  same step has no loop and every step is counted. The scanned count is kept
  beside it."""
  sys.path.insert(0, str(ROOT / "bench"))
  import _step
  from nifzoo import configs

  flops = {}
  for name, config in (("xla_flops", UNROLLED_CONFIG),
                       ("xla_flops_scanned", NIFZOO_CONFIG)):
    cost = _step.compile_step(configs.get_config(config), BATCH).step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops[name] = float(cost["flops"])
  return flops


def worker_matmul(n=2048, reps=10):
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  times = _time_calls(lambda: jax.block_until_ready(f(a, b)), reps)
  return dict(n=n, gflops=2 * n**3 / statistics.median(times) / 1e9,
              gflops_best=2 * n**3 / min(times) / 1e9)


def build_peer():
  """normflows' Glow with the shape above (its glow example with L=2, K=8, F=128)."""
  import normflows as nf
  import torch
  c, h, w = IMAGE_SHAPE[2], IMAGE_SHAPE[0], IMAGE_SHAPE[1]
  L, K = SCALES, STEPS
  q0, merges, flows = [], [], []
  for i in range(L):
    flows.append([nf.flows.GlowBlock(c * 2**(L + 1 - i), WIDTH,
                                     split_mode="channel", scale=True)
                  for _ in range(K)] + [nf.flows.Squeeze()])
    if i > 0:
      merges.append(nf.flows.Merge())
      latent = (c * 2**(L - i), h // 2**(L - i), w // 2**(L - i))
    else:
      latent = (c * 2**(L + 1), h // 2**L, w // 2**L)
    q0.append(nf.distributions.DiagGaussian(latent))
  torch.manual_seed(0)
  return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def peer_effective_params(model) -> int:
  """Trainable numbers that the model can change: normflows stores the LU 1x1
  conv's L and U as full c x c matrices, of which only the strict triangles
  (c(c-1)/2 each) are used; the DiagGaussian bases' loc/log_scale are learned."""
  import normflows as nf
  total = sum(p.numel() for p in model.parameters())
  for m in model.modules():
    if isinstance(m, nf.flows.Invertible1x1Conv) and m.use_lu:
      c = m.num_channels
      total -= 2 * c * c - c * (c - 1)    # unused halves of L and U
  return total


def worker_peer(steps, extras, threads):
  import numpy as np
  import torch
  torch.set_num_threads(threads)
  import warnings
  warnings.filterwarnings("ignore")    # torch.lu deprecation inside normflows
  import normflows as nf
  model = build_peer()
  opt = torch.optim.Adam(model.parameters(), lr=LR)
  rng = np.random.default_rng(0)
  h, w, c = IMAGE_SHAPE

  def images():
    x = rng.integers(0, 256, (BATCH, c, h, w)) + rng.uniform(size=(BATCH, c, h, w))
    return torch.from_numpy((x / 256).astype(np.float32))

  def train_step(x):
    opt.zero_grad()
    loss = model.forward_kld(x)
    loss.backward()
    opt.step()
    return loss

  t0 = time.perf_counter()
  train_step(images())        # ActNorm data init happens here
  first_s = time.perf_counter() - t0
  train_step(images())
  batches = [images() for _ in range(steps)]
  times, cpu = [], []
  for x in batches:
    t0, c0 = time.perf_counter(), _cpu_s()
    loss = train_step(x)
    times.append(time.perf_counter() - t0)
    cpu.append(_cpu_s() - c0)
  bpd = float(loss.detach()) / (np.prod(IMAGE_SHAPE) * np.log(2)) + 8
  out = dict(threads=torch.get_num_threads(), torch=torch.__version__,
             normflows=getattr(nf, "__version__", "1.7.3"), first_step_s=first_s,
             step_times=times, step_cpu_s=cpu, bits_per_dim=bpd,
             params=sum(p.numel() for p in model.parameters()),
             params_effective=peer_effective_params(model))
  if extras:
    x = images()
    with torch.no_grad():
      model.log_prob(x, None)
      model.sample(BATCH)
      out["log_prob_times"] = _time_calls(lambda: model.log_prob(x, None), steps)
      out["sample_times"] = _time_calls(lambda: model.sample(BATCH), steps)
  out["peak_rss_mb"] = _peak_rss_mb()
  return out


# ----------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------


def run_worker(cmd, env_extra=None, tree=ROOT):
  env = dict(os.environ, **(env_extra or {}))
  env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out["wall_s"] = time.perf_counter() - t0
  return out


def git_head(tree: pathlib.Path) -> str:
  return subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                        capture_output=True, text=True).stdout.strip()


def _load() -> list[float]:
  return list(os.getloadavg())


def _spread(values):
  return dict(median=statistics.median(values), min=min(values), max=max(values),
              values=values)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--reps", type=int, default=5, help="alternating repetitions")
  p.add_argument("--steps", type=int, default=10, help="timed steps per process")
  p.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
  p.add_argument("--threads", type=int, default=2, help="torch threads")
  p.add_argument("--no-extras", action="store_true",
                 help="skip NIF-512, sampling/log_prob and the XLA FLOP count")
  p.add_argument("--no-2dev", action="store_true", help="skip the 2-device case")
  p.add_argument("--label", default="", help="suffix of the JSON file name")
  p.add_argument("--base", type=pathlib.Path, default=None,
                 help="another nifzoo checkout whose nifzoo cases run too")
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--config", default=NIFZOO_CONFIG, help=argparse.SUPPRESS)
  p.add_argument("--extras", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.worker:
    fn = dict(
        nifzoo=lambda: worker_nifzoo(args.config, args.steps, args.extras),
        peer=lambda: worker_peer(args.steps, args.extras, args.threads),
        matmul=worker_matmul, flops=worker_flop_count)[args.worker]
    print(json.dumps(fn()))
    return

  if not os.path.exists(args.peer_python):
    sys.exit(f"peer python {args.peer_python} not found: make the venv first "
             f"(bench/README.md) or pass --peer-python.")
  extras = not args.no_extras
  me = [sys.executable, __file__, f"--steps={args.steps}"]
  # nifzoo processes as launch/train.py runs them (one OpenBLAS thread, huge
  # pages for malloc: nifzoo/runtime.py).
  sys.path.insert(0, str(ROOT))
  from nifzoo import runtime  # pylint: disable=g-import-not-at-top
  nz = {k: v for k, v in runtime.with_defaults(os.environ).items()
        if os.environ.get(k) != v}
  two_dev = dict(nz, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=2").strip())
  cases = {"nifzoo": (me + ["--worker=nifzoo"], nz),
           "nifzoo-unroll": (me + ["--worker=nifzoo", f"--config={UNROLLED_CONFIG}"],
                             nz)}
  if not args.no_2dev:
    cases["nifzoo-2dev"] = (me + ["--worker=nifzoo"], two_dev)
  trees = {}  # case -> the checkout it runs from, when not this one
  if args.base is not None:  # Each nifzoo case, then the same from the base tree.
    base = args.base.resolve()
    for name, (cmd, env) in list(cases.items()):
      cases[f"{name}@base"] = ([cmd[0], str(base / "bench" / "glow_vs_peer.py")]
                               + cmd[2:], env)
      trees[f"{name}@base"] = base
    cases = {n: cases[n] for name in list(trees) for n in (name[:-5], name)}
  peer = [args.peer_python, __file__, f"--steps={args.steps}", "--worker=peer",
          f"--threads={args.threads}"]
  cases["peer"] = (peer, None)
  # On a shared machine torch's OpenMP threads spin-wait for a descheduled
  # sibling and a step can take 10x longer; passive waiting avoids that. The
  # ratio is taken against the faster of the two peer cases.
  cases["peer-passive"] = (peer, {"OMP_WAIT_POLICY": "PASSIVE"})
  # The peer with nifzoo's malloc setting too, so that no gain of nifzoo's comes
  # from the environment alone.
  cases["peer-hugetlb"] = (peer, {"OMP_WAIT_POLICY": "PASSIVE",
                                  "GLIBC_TUNABLES": nz.get("GLIBC_TUNABLES",
                                                           runtime.HUGETLB)})
  cases["matmul"] = (me + ["--worker=matmul"], nz)
  if extras:
    cases["nifzoo-nif512"] = (me + ["--worker=nifzoo", f"--config={NIF_CONFIG}"],
                              nz)

  git = git_head(ROOT)
  print(f"nifzoo {git}\n{NIFZOO_CONFIG} vs normflows MultiscaleFlow, batch {BATCH},"
        f" {args.reps} reps x {args.steps} steps; load {_load()}", flush=True)
  runs = {name: [] for name in cases}
  for rep in range(args.reps):
    for name, (cmd, env) in cases.items():
      # Sampling/log_prob on the first repetition only.
      if extras and rep == 0 and name in ("nifzoo", "peer-passive"):
        cmd = cmd + ["--extras"]
      r = run_worker(cmd, env, trees.get(name, ROOT))
      r["load"] = _load()
      runs[name].append(r)
      if "step_times" in r:
        msg = f"{BATCH / statistics.median(r['step_times']):7.1f} img/s"
      else:
        msg = f"{r['gflops']:7.1f} GFLOP/s"
      print(f"  rep {rep + 1}/{args.reps} {name:<14} {msg}  "
            f"(load {r['load'][0]:.2f})", flush=True)
  flop_count = run_worker(me + ["--worker=flops"], nz) if extras else {}

  flops = train_flops()
  matmul = statistics.median(r["gflops"] for r in runs["matmul"])
  summary = {}
  for name, rs in runs.items():
    if name == "matmul":
      continue
    ips = [BATCH / statistics.median(r["step_times"]) for r in rs]
    s = dict(images_per_s=_spread(ips),
             step_s=statistics.median(statistics.median(r["step_times"])
                                      for r in rs),
             step_cpu_s=statistics.median(statistics.median(r["step_cpu_s"])
                                          for r in rs),
             peak_rss_mb=max(r["peak_rss_mb"] for r in rs),
             params=rs[0]["params"])
    s["gflops"] = flops / s["step_s"] / 1e9
    s["fraction_of_matmul"] = s["gflops"] / matmul
    if "compile_s" in rs[0]:
      s["compile_s"] = _spread([r["compile_s"] for r in rs])
    if "first_step_s" in rs[0]:
      s["first_step_s"] = _spread([r["first_step_s"] for r in rs])
      s["params_effective"] = rs[0]["params_effective"]
    for kind in ("log_prob", "sample"):
      if f"{kind}_times" in rs[0]:
        s[f"{kind}_images_per_s"] = BATCH / statistics.median(rs[0][f"{kind}_times"])
    summary[name] = s
  peer_ips = max(s["images_per_s"]["median"] for n, s in summary.items()
                 if n.startswith("peer"))
  ratios = {n: s["images_per_s"]["median"] / peer_ips
            for n, s in summary.items() if not n.startswith("peer")}
  for name in trees:
    ratios[f"{name[:-len('@base')]} / base"] = (
        summary[name[:-len("@base")]]["images_per_s"]["median"]
        / summary[name]["images_per_s"]["median"])
  if "nifzoo-nif512" in summary:
    ratios["nif512_overhead"] = (summary["nifzoo"]["images_per_s"]["median"] /
                                 summary["nifzoo-nif512"]["images_per_s"]["median"]
                                 - 1)

  report = []

  def say(line=""):  # The table, printed and written beside the JSON.
    print(line)
    report.append(line)

  say(f"\nparameters: nifzoo {summary['nifzoo']['params']:,}; normflows "
      f"{summary['peer']['params']:,} ({summary['peer']['params_effective']:,} "
      "effective: LU L/U stored as full matrices)")
  say(f"step arithmetic: {flops / 1e9:.1f} GFLOP (analytic)"
      + (f", XLA cost analysis {flop_count['xla_flops'] / 1e9:.1f} GFLOP (unrolled; "
         f"{flop_count['xla_flops_scanned'] / 1e9:.1f} for the scanned program, whose "
         "loop body it counts once)" if flop_count else "")
      + f"; jax f32 matmul {matmul:.0f} GFLOP/s (median)")
  say(f"{'case':<14} {'img/s':>7} {'(min-max)':>13} {'step s':>7} {'x peer':>6} "
      f"{'GFLOP/s':>8} {'%mm':>4} {'compile':>8} {'RSS MB':>7} "
      f"{'logp/s':>7} {'smpl/s':>7}")
  for name, s in summary.items():
    ips = s["images_per_s"]
    comp = s.get("compile_s", s.get("first_step_s"))["median"]
    ratio = ips["median"] / peer_ips
    say(f"{name:<14} {ips['median']:7.1f} {ips['min']:6.1f}-{ips['max']:<6.1f} "
        f"{s['step_s']:7.3f} {ratio:6.2f} {s['gflops']:8.1f} "
        f"{100 * s['fraction_of_matmul']:4.0f} {comp:8.1f} "
        f"{s['peak_rss_mb']:7.0f} {s.get('log_prob_images_per_s', 0):7.0f} "
        f"{s.get('sample_images_per_s', 0):7.0f}")
  for name in trees:
    key = f"{name[:-len('@base')]} / base"
    say(f"{key}: {ratios[key]:.3f} (images/s, medians; base: "
        f"{git_head(trees[name])})")
  if "nif512_overhead" in ratios:
    say(f"NIF-512 prior adds {100 * ratios['nif512_overhead']:.1f} % to the NF "
        "step")
  say("(peer 'compile' column: its first step, ActNorm init included; "
      "'x peer': against the faster peer case)")

  name = "glow_vs_peer" + (f"_{args.label}" if args.label else "") + ".json"
  out = RESULTS / name
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(
      benchmark="glow_vs_peer", label=args.label, git=git,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
      machine=dict(cpus=os.cpu_count(), platform=platform.platform()),
      config=dict(nifzoo=NIFZOO_CONFIG, nif=NIF_CONFIG, unrolled=UNROLLED_CONFIG,
                  batch=BATCH, lr=LR,
                  peer="normflows MultiscaleFlow, GlowBlock x 8 x 2, width 128",
                  peer_threads=args.threads, reps=args.reps, steps=args.steps,
                  base=git_head(args.base) if args.base else None),
      train_flops=flops, matmul_gflops=matmul, **flop_count, ratios=ratios,
      summary=summary, runs=runs), indent=2) + "\n")
  md = out.with_suffix(".txt")
  md.write_text(f"nifzoo {git}, {summary['nifzoo']['params']:,} parameters\n"
                + "\n".join(report).lstrip("\n") + "\n")
  print(f"wrote {out} and {md.name}")


if __name__ == "__main__":
  main()
