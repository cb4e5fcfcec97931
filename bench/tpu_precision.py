r"""What TPU matmul precision does to nifzoo's numbers, measured on CPU by emulation.

  python bench/tpu_precision.py          # -> bench/results/tpu_precision.json

A TPU computes a float32 product whose precision is DEFAULT (JAX's default)
from bfloat16 operands, accumulating in float32. ``nifzoo.tpu.
emulate_tpu_precision`` re-evaluates a function on CPU with exactly those
operands rounded to bfloat16 (products marked HIGHEST stay float32). Three
variants of the same parameters and the same dequantisation draws:

  f32         every product float32 (CPU; the paper's numbers)
  tpu_before  emulated TPU, the code before the precision decision: the NIF
              prior's D x k products (x - b projected, A z) at the default
              precision (only the k x k Gram products HIGHEST)
  tpu_after   emulated TPU, the code now: every product of the NIF prior
              HIGHEST, the Glow's networks at the default (matmul_precision
              "default")

Measured: test bits/dim of the shipped digits models over the whole test split
(as nifzoo.evaluate.bits_per_dim: the config's evaluation batch, draws and key),
and log p (nats) of one random batch of celeba-nif128 (random weights, ActNorms
initialised on another random batch).
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from nifzoo import evaluate  # noqa: E402
from nifzoo import tpu  # noqa: E402
from nifzoo import zoo  # noqa: E402
from nifzoo.evaluate import bpd as bpd_lib  # noqa: E402
from nifzoo.nif import linalg  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "tpu_precision.json"
DIGITS = ("digits-nf", "digits-nif4", "digits-nif8", "digits-nif16",
          "digits-nif32", "digits-deepnif8", "digits-deepnif16")
VARIANTS = ("f32", "tpu_before", "tpu_after")


@contextlib.contextmanager
def variant(name):
  """The code of a variant: ``tpu_before`` puts the NIF prior's D x k products
  back at the default precision (linalg._mm as ``a @ b``, the code before)."""
  if name != "tpu_before":
    yield
    return
  saved = linalg._mm  # pylint: disable=protected-access
  linalg._mm = lambda a, b: a @ b  # pylint: disable=protected-access
  try:
    yield
  finally:
    linalg._mm = saved  # pylint: disable=protected-access


def per_image_fn(graphdef, num_draws, emulate):
  """(state, images, key) -> bits/dim per image, averaged over draws, as
  nifzoo.evaluate.bits_per_dim computes it."""

  def f(state, images, key):  # a new function per call (jax caches traces)
    m = nnx.merge(graphdef, state)
    per_draw = jax.lax.map(lambda k: m.bits_per_dim(images, key=k),
                           jax.random.split(key, num_draws))
    return jnp.mean(per_draw, axis=0)

  return jax.jit(tpu.emulate_tpu_precision(f) if emulate else f)


def digits_row(name):
  m = zoo.load(name)
  c = m.config
  key = jax.random.key(c.seed + 3)
  graphdef, state = nnx.split(m)
  ref = evaluate.bits_per_dim(m, c.data, "test", batch_size=c.batch_size,
                              key=key, num_draws=c.eval_num_draws)
  row = {"model": name, "num_images": ref["num_images"],
         "num_draws": ref["num_draws"],
         "evaluate_bits_per_dim": ref["bits_per_dim"]}
  per = {}
  for v in VARIANTS:
    with variant(v):
      fn = per_image_fn(graphdef, c.eval_num_draws, emulate=v != "f32")
      vals = []
      for i, (images, _, mask) in enumerate(bpd_lib.eval_batches(
          c.data, "test", c.batch_size)):
        out = np.asarray(fn(state, jnp.asarray(images), jax.random.fold_in(key, i)),
                         np.float64)
        vals.append(out[mask])
    per[v] = np.concatenate(vals)
    row[v] = float(per[v].mean())
  for v in ("tpu_before", "tpu_after"):
    d = per[v] - per["f32"]
    row[f"{v}_minus_f32"] = float(d.mean())
    row[f"{v}_max_abs_diff_per_image"] = float(np.abs(d).max())
  return row


def celeba_row(batch=16):
  m = zoo.load("celeba-nif128", init="random")
  c = m.config
  rng = np.random.default_rng(0)
  shape = (batch, *c.data.image_shape)
  init_images = jnp.asarray(rng.integers(0, c.data.num_levels, shape), jnp.int32)
  images = jnp.asarray(rng.integers(0, c.data.num_levels, shape), jnp.int32)
  graphdef, state = nnx.split(m)

  @jax.jit
  def init(state, x):
    model = nnx.merge(graphdef, state)
    model.initialize(x, key=jax.random.key(1))
    return nnx.state(model)

  state = init(state, init_images)
  key = jax.random.key(2)

  def make_f():  # a new function per variant: jax caches traces per function
    return lambda state, x, key: nnx.merge(graphdef, state).log_prob(x, key=key)

  row = {"model": "celeba-nif128", "weights": "random (seed 0), ActNorms "
         "initialised on a random batch", "batch": batch,
         "dim": int(math.prod(c.data.image_shape))}
  per = {}
  for v in VARIANTS:
    with variant(v):
      f = make_f()
      fn = jax.jit(tpu.emulate_tpu_precision(f) if v != "f32" else f)
      per[v] = np.asarray(fn(state, images, key), np.float64)
    row[f"{v}_log_prob_mean"] = float(per[v].mean())
  for v in ("tpu_before", "tpu_after"):
    d = per[v] - per["f32"]
    row[f"{v}_minus_f32_nats_mean"] = float(d.mean())
    row[f"{v}_max_abs_diff_nats"] = float(np.abs(d).max())
    row[f"{v}_minus_f32_bits_per_dim_mean"] = float(
        -d.mean() / (row["dim"] * math.log(2)))
  return row


def main():
  t0 = time.perf_counter()
  out = {"command": "python bench/tpu_precision.py", "jax": jax.__version__,
         "backend": jax.default_backend(), "variants": {
             "f32": "every product float32 (CPU)",
             "tpu_before": "emulated TPU (DEFAULT products: bfloat16 operands), "
                           "the NIF prior's D x k products at DEFAULT (code "
                           "before the precision decision)",
             "tpu_after": "emulated TPU, every NIF prior product HIGHEST, the "
                          "Glow's networks at DEFAULT (the code now, "
                          "matmul_precision='default')"},
         "digits": [], "celeba": None}

  def write():
    out["run_s"] = round(time.perf_counter() - t0, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")

  only = sys.argv[1:] == ["--celeba_only"]
  if only:  # keep the digits rows of the last run
    out["digits"] = json.loads(RESULTS.read_text())["digits"]
  for name in () if only else DIGITS:
    row = digits_row(name)
    print(json.dumps(row), flush=True)
    out["digits"].append(row)
    write()
  out["celeba"] = celeba_row()
  print(json.dumps(out["celeba"]), flush=True)
  write()


if __name__ == "__main__":
  main()
