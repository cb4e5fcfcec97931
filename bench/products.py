"""The coupling network's matrix products and shifted sum, each shape timed both ways.

``flows.cpu_kernels`` picks how each product of the Glow's 3x3 and 1x1 convolutions is
formed from timings of this kind on XLA:CPU (bench/README.md, "The CPU kernels"):

* a weight gradient ``a^T b`` (contracting the B H W positions) is formed as
  ``(M, N)`` or as ``(b^T a)^T``, whichever puts the operand whose width is a
  multiple of 32 in the product's columns (``cpu_kernels._contract_positions``);
* a product with fewer than 64 columns gets zero columns up to a multiple of 16
  (``cpu_kernels._pad_columns``);
* the shifted sum (col2im) pads each tap's in-range slice, instead of slicing a
  padded z (``cpu_kernels._shifted_sum``);
* the activations are position-major, (B H W, C), not channel-major, (C, B H W):
  the nine products of the first scale's coupling network are timed both ways
  (channel-major weight gradients in whichever orientation is faster), and
  summed.

For each case the script times both forms alternately, one jitted program each
(median of ``--reps`` calls, ``--rounds`` rounds, the fastest round kept), marks the
one ``flows.cpu_kernels`` uses, and writes ``results/products.json``::

    python bench/products.py [--reps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nifzoo import runtime  # noqa: E402  (no jax import)

runtime.reexec_with_defaults()  # As launch/train.py runs (bench/README.md, "Threads").

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nifzoo.flows import cpu_kernels  # noqa: E402

# (positions, a's width, b's width): the weight gradients of the benchmark Glow
# (width 128; 16 x 16 and 8 x 8 positions at batch 64) and of width 256.
CONTRACTIONS = [(16384, 128, 108), (4096, 128, 216), (16384, 54, 128),
                (4096, 108, 128), (16384, 128, 128), (8192, 256, 108),
                (8192, 54, 256)]
# (positions, K, N): products with fewer than 64 columns (the 3x3 conv's dx when
# its input has 6 or 3 channels: 9 x 6 = 54, 9 x 3 = 27 columns).
NARROW = [(16384, 128, 54), (16384, 128, 27), (4096, 128, 54), (8192, 256, 54)]
# (positions, in, width, out): the coupling network of the benchmark Glow's first
# scale (16 x 16 positions at batch 64; 12 channels, 6 conditioning).
LAYOUT = (16384, 6, 128, 12)
# (B, H, W, O): shifted sums of the benchmark Glow's last 3x3 convs and dx.
SHIFTED = [(64, 16, 16, 12), (64, 16, 16, 6), (64, 8, 8, 24), (64, 8, 8, 12)]


def _time(fn, args, reps):
  f = jax.jit(fn)
  jax.block_until_ready(f(*args))
  t = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    t.append(time.perf_counter() - t0)
  return float(np.median(t))


def _compare(forms, args, reps, rounds):
  """{name: fastest-round median seconds} of the forms, timed alternately."""
  times = {name: [] for name in forms}
  for r in range(rounds):
    for name in (list(forms) if r % 2 == 0 else list(forms)[::-1]):
      times[name].append(_time(forms[name], args, reps))
  return {name: min(t) for name, t in times.items()}


def _padded_slice_shifted_sum(z):
  """The shifted sum as slices of the zero-padded z (the alternative)."""
  _, h, w, _, _ = z.shape
  zp = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
  return sum(zp[:, r:r + h, c:c + w, 3 * r + c] for r, c in cpu_kernels._TAPS)


def _padded_product(x, w):
  """``x @ w`` with w's columns padded as ``flows.cpu_kernels`` pads them, sliced back."""
  return cpu_kernels._matmul(x, cpu_kernels._pad_columns(w))[:, :w.shape[1]]


def _layout_rows(normal, reps, rounds):
  """The coupling network's nine products (forward, dx, dk of its three layers)
  position-major as ``flows.cpu_kernels`` forms them, against channel-major."""
  pos, c_in, f, c_out = LAYOUT
  matmul = cpu_kernels._matmul
  nt = lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))
  # (product, contraction I, output O, kind): "fwd" a (positions, I) @ (I, O)
  # product (a forward, or a dx with I and O swapped), "narrow" the same with
  # fewer than 64 columns (padded), "dk" a weight gradient x^T dy over the positions.
  products = [("3x3 in: forward", 9 * c_in, f, "fwd"),
              ("3x3 in: dx", f, 9 * c_in, "narrow"),
              ("3x3 in: dk", 9 * c_in, f, "dk"),
              ("1x1: forward", f, f, "fwd"), ("1x1: dx", f, f, "fwd"),
              ("1x1: dk", f, f, "dk"),
              ("3x3 out: forward", f, 9 * c_out, "fwd"),
              ("3x3 out: dx", 9 * c_out, f, "fwd"),
              ("3x3 out: dk", f, 9 * c_out, "dk")]
  rows, total = [], {"position-major": 0.0, "channel-major": 0.0}
  for name, i, o, kind in products:
    # Every form gets the operands in both layouts (transposed outside the timing)
    # so the forms are timed alternately on one argument tuple.
    if kind == "dk":
      a, b = normal(pos, i), normal(pos, o)
      args = (a, b, a.T, b.T)
      t = _compare({"pm": lambda a, b, at, bt: cpu_kernels._contract_positions(a, b),
                    "cm (I, O)": lambda a, b, at, bt: nt(at, bt),
                    "cm (O, I)": lambda a, b, at, bt: nt(bt, at)},
                   args, reps, rounds)
      pm, cm = t["pm"], min(t["cm (I, O)"], t["cm (O, I)"])
    else:
      x, w = normal(pos, i), normal(i, o)
      pm_fn = _padded_product if kind == "narrow" else matmul
      t = _compare({"pm": lambda x, w, xt, wt: pm_fn(x, w),
                    "cm": lambda x, w, xt, wt: matmul(wt, xt)},
                   (x, w, x.T, w.T), reps, rounds)
      pm, cm = t["pm"], t["cm"]
    ms = {"position-major": 1e3 * pm, "channel-major": 1e3 * cm}
    for k in total:
      total[k] += ms[k]
    rows.append(dict(case="layout", product=name, positions=pos, ms=ms,
                     used="position-major"))
  rows.append(dict(case="layout", product="sum of the nine", positions=pos,
                   ms=total, used="position-major"))
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--reps", type=int, default=30)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default=str(ROOT / "bench" / "results" / "products.json"))
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  normal = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  rows = []

  matmul = cpu_kernels._matmul        # (M, K) @ (K, N); contract_a=0: (K, M)^T @ (K, N)
  for pos, m, n in CONTRACTIONS:
    a, b = normal(pos, m), normal(pos, n)
    forms = {
        f"({m}, {n})": lambda a, b: matmul(a, b, contract_a=0),
        f"({n}, {m})^T": lambda a, b: jax.lax.optimization_barrier(
            matmul(b, a, contract_a=0)).T,
    }
    jaxpr = str(jax.make_jaxpr(cpu_kernels._contract_positions)(a, b))
    chosen = f"({n}, {m})^T" if "optimization_barrier" in jaxpr else f"({m}, {n})"
    t = _compare(forms, (a, b), args.reps, args.rounds)
    rows.append(dict(case="weight gradient a^T b", positions=pos, a_width=m,
                     b_width=n, ms={k: 1e3 * v for k, v in t.items()},
                     gflops={k: 2 * pos * m * n / v / 1e9 for k, v in t.items()},
                     used=chosen))

  for pos, k, n in NARROW:
    x, w = normal(pos, k), normal(k, n)
    padded = f"{cpu_kernels._pad_columns(w).shape[1]} columns"
    forms = {f"{n} columns": matmul,
             padded: _padded_product}
    t = _compare(forms, (x, w), args.reps, args.rounds)
    rows.append(dict(case="product with few columns", positions=pos, k=k, n=n,
                     ms={k_: 1e3 * v for k_, v in t.items()}, used=padded))

  for b, h, w, o in SHIFTED:
    z = normal(b, h, w, 9, o)
    forms = {"slices of padded z": _padded_slice_shifted_sum,
             "padded in-range slices": cpu_kernels._shifted_sum}
    np.testing.assert_allclose(_padded_slice_shifted_sum(z), cpu_kernels._shifted_sum(z),
                               rtol=1e-6, atol=1e-5)
    t = _compare(forms, (z,), args.reps, args.rounds)
    rows.append(dict(case="shifted sum", shape=[b, h, w, 9, o],
                     ms={k: 1e3 * v for k, v in t.items()},
                     used="padded in-range slices"))

  rows += _layout_rows(normal, args.reps, args.rounds)

  for row in rows:
    shape = {k: row[k] for k in ("product", "positions", "a_width", "b_width", "k",
                                 "n", "shape")
             if k in row}
    times = ", ".join(f"{k}{' *' if k == row['used'] else ''} {v:.3f} ms"
                      for k, v in row["ms"].items())
    print(f"{row['case']:26s} {shape}: {times}")
  print("(* the form flows.cpu_kernels uses)")
  git = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"],
                       capture_output=True, text=True).stdout.strip()
  out = dict(benchmark="products", git=git,
             date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
             load=os.getloadavg()[0], reps=args.reps, rounds=args.rounds, rows=rows)
  pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
