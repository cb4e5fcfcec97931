r"""Will every paper model fit a TPU? Compiles each one's real train step for TPU
topologies on this CPU (libtpu's compiler, compile-only devices; nifzoo.tpu).

  python bench/tpu_fit.py                       # all 17 paper configs, v5e v4 v5p
  python bench/tpu_fit.py --configs=celeba-nif128 --generations=v5e

For every config and generation:
  slice     the paper's batch (32) data-parallel over a 4-chip slice
            (v5e:2x2, v4:2x2x1, v5p:2x2x1): 8 per chip
  one chip  all 32 on one chip (v5e:1x1, v4:1x1x1, v5p:1x1x1)
  max batch the largest per-chip batch (multiple of 8) that compiles on one chip.
            HBM is close to linear in the per-chip batch, so the line through
            the two compiles above (8 and 32 per chip) predicts it; the
            compiler then confirms: it accepts the prediction and refuses 8
            more (RESOURCE_EXHAUSTED, ~8 s). A miss falls back to a bracketed
            bisection on the compiler's refusals (nifzoo.tpu.max_batch).
HBM per chip is the compiler's buffer assignment (HBM allocations; not
memory_analysis(), which overstates TPU temporaries). The JSON is rewritten
after every compile, so an interrupted run keeps what it finished; a re-run
with --resume skips what the JSON already holds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")  # Only compiles: no TPU backend.

from nifzoo import configs  # noqa: E402
from nifzoo import tpu  # noqa: E402

GiB = 2 ** 30
SLICES = {"v5e": "v5e:2x2", "v4": "v4:2x2x1", "v5p": "v5p:2x2x1",
          "v6e": "v6e:2x2"}
RESULTS = pathlib.Path(__file__).parent / "results" / "tpu_fit.json"


def paper_names() -> list[str]:
  return [n for n in configs.names() if not n.startswith("digits-")]


def _record(c: tpu.Compiled) -> dict:
  out = {"topology": c.topology, "chips": c.devices,
         "global_batch": c.global_batch, "per_chip_batch": c.per_chip_batch,
         "fits": c.fits, "compile_s": round(c.compile_s, 2)}
  if c.fits:
    out["hbm_bytes"] = c.hbm["total"]
    out["hbm_gib"] = round(c.hbm["total"] / GiB, 3)
    out["hbm_breakdown_bytes"] = {k: c.hbm[k] for k in
                                  ("arguments", "outputs", "temp", "other")}
    out["memory_analysis_temp_bytes"] = c.memory_analysis.get(
        "temp_size_in_bytes")
  else:
    out["error"] = c.error
  return out


def at_paper_batch(name: str, gen: str, log) -> dict:
  """The row of one config on one generation: the paper's batch over a slice
  and on one chip (phase 1)."""
  config = configs.get_config(name)
  batch = config.batch_size
  row = {"config": name, "generation": gen,
         "usable_hbm_gib": tpu.USABLE_HBM_GIB[gen]}
  c = tpu.compile_train_step(config, SLICES[gen], batch)
  row["slice"] = _record(c)
  log(f"  slice {c.topology} {c.per_chip_batch}/chip: "
      f"{'%.2f GiB' % c.hbm_gib if c.fits else 'REFUSED'} {c.compile_s:.0f} s")
  one = tpu.ONE_CHIP[gen]
  o = tpu.compile_train_step(config, one, batch, keep_text=True)
  row["one_chip"] = _record(o)
  log(f"  one chip {one} {batch}/chip: "
      f"{'%.2f GiB' % o.hbm_gib if o.fits else 'REFUSED'} {o.compile_s:.0f} s")
  if o.fits and config.model.prior != "normal":
    row["prior_products_highest"] = len(tpu.check_prior_precision(o.hlo_text))
  return row


def add_max_batch(row: dict, log) -> None:
  """Phase 2: the largest per-chip batch on one chip, predicted from the two
  compiles of phase 1 and confirmed by the compiler."""
  config = configs.get_config(row["config"])
  gen, batch = row["generation"], config.batch_size
  one = tpu.ONE_CHIP[gen]
  s, o = row["slice"], row["one_chip"]
  compiles = []

  def at(b):
    r = tpu.compile_train_step(config, one, b)
    compiles.append({"per_chip_batch": b, "fits": r.fits,
                     "compile_s": round(r.compile_s, 2),
                     **({"hbm_gib": round(r.hbm_gib, 3)} if r.fits else {})})
    log(f"    {b}/chip: {'%.2f GiB' % r.hbm_gib if r.fits else 'refused'} "
        f"{r.compile_s:.0f} s")
    return r

  known = {batch: o["fits"]}
  if o["fits"] and s["fits"] and s["per_chip_batch"] != batch:
    guess = tpu.predict_max_batch(s["per_chip_batch"], s["hbm_bytes"], batch,
                                  o["hbm_bytes"], row["usable_hbm_gib"] * GiB)
  else:
    guess = batch
  row["max_batch_predicted"] = guess
  row["max_per_chip_batch"], _ = tpu.max_batch(at, guess, known=known)
  row["max_batch_compiles"] = compiles


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default=",".join(paper_names()))
  p.add_argument("--generations", default="v5e,v4,v5p")
  p.add_argument("--out", default=str(RESULTS))
  p.add_argument("--resume", action="store_true",
                 help="keep the rows the JSON already holds")
  args = p.parse_args()
  out = pathlib.Path(args.out)
  names = args.configs.split(",")
  gens = args.generations.split(",")
  import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  data = {"command": "python bench/tpu_fit.py " + " ".join(sys.argv[1:]),
          "jax": jax.__version__, "libtpu": metadata.version("libtpu"),
          "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
          "slices": {g: SLICES[g] for g in gens},
          "one_chip": {g: tpu.ONE_CHIP[g] for g in gens},
          "usable_hbm_gib": {g: tpu.USABLE_HBM_GIB[g] for g in gens},
          "batch_multiple": 8, "rows": [], "complete": False}
  if args.resume and out.exists():
    data["rows"] = json.loads(out.read_text())["rows"]
  t0 = time.perf_counter()
  log = lambda s: print(s, flush=True)

  def write():
    data["run_s"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")

  rows = {(r["config"], r["generation"]): r for r in data["rows"]}
  for gen in gens:  # Phase 1: the paper's batch, everywhere.
    for name in names:
      if (name, gen) not in rows:
        log(f"{name} on {gen}: batch 32")
        rows[name, gen] = at_paper_batch(name, gen, log)
        data["rows"].append(rows[name, gen])
        write()
  for gen in gens:  # Phase 2: the largest per-chip batch.
    for name in names:
      if "max_per_chip_batch" not in rows[name, gen]:
        log(f"{name} on {gen}: largest batch per chip")
        add_max_batch(rows[name, gen], log)
        write()
  data["complete"] = all("max_per_chip_batch" in rows[n, g]
                         for n in names for g in gens)
  write()
  print(table(data))


def table(data) -> str:
  """The markdown table of a tpu_fit.json."""
  lines = ["| model | TPU | HBM/chip, 32 over 4 chips | HBM, 32 on one chip "
           "| largest batch/chip | compile (one chip) |",
           "|---|---|---|---|---|---|"]
  for r in data["rows"]:
    s, o = r["slice"], r["one_chip"]
    f = lambda x: f"{x['hbm_gib']:.2f} GiB" if x["fits"] else "does not fit"
    lines.append(
        f"| {r['config']} | {r['generation']} ({r['usable_hbm_gib']} GiB) "
        f"| {f(s)} | {f(o)} | {r.get('max_per_chip_batch', '?')} "
        f"| {o['compile_s']:.0f} s |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
