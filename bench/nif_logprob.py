"""Benchmark: NIF log_prob, closed form vs dense (docs/math.md §1.6, §3).

GaussianNIF.log_prob (Woodbury + determinant lemma, O(Dk² + k³)) against a dense
O(D³) evaluation of log N(x; b, AAᵀ + Σ) (form the D×D covariance, Cholesky), both
jitted, batch 32; and UpsampleNIF.log_prob (O(D)) against image size.

    python bench/nif_logprob.py [--quick] [--repeats 5] [--dense-limit 60]

Prints a table and writes bench/results/nif_logprob.json. Times are medians of
``--repeats`` calls after one warm-up (compile) call, with block_until_ready. A dense
evaluation whose warm-up takes longer than ``--dense-limit`` seconds is not timed,
and the remaining dense runs at that D are skipped (noted in the output); at
D ≥ 8192 the dense path is timed once after its warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import statistics
import time

import jax
import threadpoolctl
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo.nif import GaussianNIF
from nifzoo.experimental import StochasticCoupling
from nifzoo.experimental import UpsampleNIF

BATCH = 32
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "nif_logprob.json"


@jax.jit
def dense_log_prob(A, b, log_var, x):
  """log N(x; b, AAᵀ + Σ) with a dense D×D covariance and its Cholesky: O(D³)."""
  D = A.shape[0]
  cov = A @ A.T + jnp.diag(jnp.exp(log_var))
  L = jnp.linalg.cholesky(cov)
  w = jax.scipy.linalg.solve_triangular(L, (x - b).T, lower=True)  # (D, B)
  return (-0.5 * jnp.sum(w * w, axis=0) - jnp.sum(jnp.log(jnp.diagonal(L)))
          - 0.5 * D * math.log(2 * math.pi))


def jitted_log_prob(layer):
  """jax.jit over the layer's state (nnx.split/merge): no per-call graph overhead."""
  graphdef, state = nnx.split(layer)
  fn = jax.jit(lambda state, x: nnx.merge(graphdef, state).log_prob(x))
  return lambda x: fn(state, x)


def timed(fn, *args, repeats: int, limit: float | None = None):
  """(warm-up seconds, median seconds or None, last output)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  warm = time.perf_counter() - t0
  if limit is not None and warm > limit:
    return warm, None, out
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return warm, statistics.median(times), out


def load_lapack():
  """Loads the OpenBLAS that jax's CPU Cholesky and triangular solves run in.

  It is scipy's, a second library beside numpy's, loaded at jax's first LAPACK
  call; threadpoolctl limits only libraries already loaded, so without this the
  closed form's "one BLAS thread" silently ran with the default two (and took
  ~110 instead of ~60 ms at D = 12288, k = 512: the idle OpenBLAS thread spins
  on a core the next call's GEMMs need).
  """
  jax.block_until_ready(jnp.linalg.cholesky(jnp.eye(2)))


def blas_threads():
  """{library file: threads} of every loaded BLAS."""
  return {pathlib.Path(i["filepath"]).name: i["num_threads"]
          for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def gaussian_layer(D, k, seed=0):
  rng = np.random.default_rng(seed)
  layer = GaussianNIF(D, k, rngs=nnx.Rngs(seed))
  layer.b[...] = jnp.asarray(rng.normal(size=D), jnp.float32)
  layer.log_var[...] = jnp.asarray(rng.uniform(-0.5, 0.5, D), jnp.float32)
  x = jnp.asarray(rng.normal(size=(BATCH, D)), jnp.float32)
  return layer, x


def bench_gaussian(dims, latents, repeats, dense_limit):
  rows = []
  for D in dims:
    dense_skip = None
    for k in latents:
      layer, x = gaussian_layer(D, k)
      # The closed form with one BLAS thread, as launch/train.py runs (its k x k
      # Cholesky's OpenBLAS threads would compete with XLA's: README "Threads");
      # the dense O(D^3) path with the default threads, its fastest.
      with threadpoolctl.threadpool_limits(1, user_api="blas"):
        closed_threads = blas_threads()
        _, fast_s, fast_out = timed(jitted_log_prob(layer), x, repeats=repeats)
      assert set(closed_threads.values()) == {1}, closed_threads
      row = dict(D=D, k=k, batch=BATCH, fast_ms=1e3 * fast_s, dense_ms=None,
                 dense_warmup_s=None, speedup=None, max_abs_diff=None, note="")
      if dense_skip is not None:
        row["note"] = dense_skip
      else:
        # At the largest D the dense path is timed once after its warm-up.
        reps = 1 if D >= 8192 else repeats
        args = (layer.A[...], layer.b[...], layer.log_var[...], x)
        warm, dense_s, dense_out = timed(dense_log_prob, *args, repeats=reps,
                                         limit=dense_limit)
        row["dense_warmup_s"] = warm
        row["max_abs_diff"] = float(jnp.max(jnp.abs(dense_out - fast_out)))
        if dense_s is None:
          dense_skip = (f"dense skipped: warm-up took {warm:.0f} s "
                        f"> {dense_limit:.0f} s limit")
          row["note"] = dense_skip
        else:
          row["dense_ms"] = 1e3 * dense_s
          row["speedup"] = dense_s / fast_s
          row["dense_repeats"] = reps
      rows.append(row)
      print_gaussian_row(row)
  return rows


def bench_upsample(shapes, repeats):
  rows = []
  for shape in shapes:
    layer = UpsampleNIF(shape, (2, 2))
    rng = np.random.default_rng(0)
    layer.log_var[...] = jnp.asarray(rng.uniform(-0.5, 0.5, shape), jnp.float32)
    x = jnp.asarray(rng.normal(size=(BATCH,) + shape), jnp.float32)
    _, t, _ = timed(jitted_log_prob(layer), x, repeats=repeats)
    D = math.prod(shape)
    row = dict(shape=list(shape), factors=[2, 2], D=D, k=D // 4, batch=BATCH,
               ms=1e3 * t, ns_per_dim_per_example=1e9 * t / (D * BATCH))
    rows.append(row)
    print(f"  {str(shape):>16} {D:>7} {D // 4:>7} {row['ms']:>10.3f} "
          f"{row['ns_per_dim_per_example']:>10.2f}")
  return rows


def bench_stochastic_coupling(shapes, repeats, hidden=64):
  """StochasticCoupling (§4): forward (sample z1 + log h) and inverse (generate)."""
  rows = []
  for shape in shapes:
    layer = StochasticCoupling(shape, (2, 2), hidden=hidden, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(layer)
    fwd = jax.jit(lambda st, x, key: nnx.merge(graphdef, st).forward(x, key))
    inv = jax.jit(lambda st, z1, x2, key: nnx.merge(graphdef, st).inverse(
        z1, x2, key=key, noise_scale=1.0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(BATCH,) + shape), jnp.float32)
    key = jax.random.key(0)
    _, t_fwd, (z1, x2, _) = timed(fwd, state, x, key, repeats=repeats)
    _, t_inv, _ = timed(inv, state, z1, x2, key, repeats=repeats)
    row = dict(shape=list(shape), factors=[2, 2], hidden=hidden, batch=BATCH,
               forward_ms=1e3 * t_fwd, inverse_ms=1e3 * t_inv)
    rows.append(row)
    print(f"  {str(shape):>16} {row['forward_ms']:>11.3f} {row['inverse_ms']:>11.3f}")
  return rows


def print_gaussian_row(r):
  dense = f"{r['dense_ms']:>11.1f}" if r["dense_ms"] is not None else f"{'—':>11}"
  speed = f"{r['speedup']:>9.0f}x" if r["speedup"] is not None else f"{'—':>10}"
  diff = (f"{r['max_abs_diff']:>9.1e}" if r["max_abs_diff"] is not None
          else f"{'—':>9}")
  print(f"  {r['D']:>6} {r['k']:>5} {r['fast_ms']:>10.2f} {dense} {speed} {diff}"
        f"  {r['note']}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes only")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dense-limit", type=float, default=60.0,
                      help="skip dense runs whose warm-up exceeds this (s)")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = parser.parse_args(argv)

  if args.quick:
    dims, latents = [784], [64, 128]
    shapes = [(28, 28, 1), (32, 32, 3)]
  else:
    dims, latents = [784, 3072, 12288], [64, 128, 256, 512]
    shapes = [(28, 28, 1), (32, 32, 3), (64, 64, 3), (128, 128, 3)]

  load_lapack()
  dense_threads = blas_threads()
  print(f"jax {jax.__version__} on {jax.default_backend()} "
        f"({os.cpu_count()} CPUs), batch {BATCH}, median of {args.repeats}")
  print(f"BLAS threads: closed form 1, dense {dense_threads}")
  print("GaussianNIF.log_prob: closed form vs dense O(D³) (ms per batch)")
  print(f"  {'D':>6} {'k':>5} {'closed':>10} {'dense':>11} {'speed-up':>10} "
        f"{'|Δ|max':>9}")
  gauss = bench_gaussian(dims, latents, args.repeats, args.dense_limit)
  print("UpsampleNIF.log_prob, factors (2, 2) (ms per batch)")
  print(f"  {'shape':>16} {'D':>7} {'k':>7} {'ms':>10} {'ns/dim/ex':>10}")
  up = bench_upsample(shapes, args.repeats)
  print("StochasticCoupling (upsampling A, conv conditioner F=64) (ms per batch)")
  print(f"  {'shape':>16} {'forward':>11} {'inverse':>11}")
  # Squeezed image shapes (a coupling needs >= 2 channels to split).
  coupling = bench_stochastic_coupling(
      [(h // 2, w // 2, 4 * c) for h, w, c in shapes], args.repeats)

  result = dict(
      benchmark="nif_logprob",
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
      jax=jax.__version__, backend=jax.default_backend(),
      device=str(jax.devices()[0]), cpus=os.cpu_count(),
      machine=platform.machine(), quick=args.quick, repeats=args.repeats,
      dense_limit_s=args.dense_limit,
      blas_threads=dict(closed_form=1, dense=dense_threads),
      gaussian=gauss, upsample=up,
      stochastic_coupling=coupling)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
