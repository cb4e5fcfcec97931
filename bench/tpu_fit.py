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
with --resume skips what the JSON already holds (and records the earlier
runs' commands and times in ``earlier_runs``).
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
from nifzoo import models  # noqa: E402
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


def new_row(name: str, gen: str) -> dict:
  return {"config": name, "generation": gen,
          "usable_hbm_gib": tpu.USABLE_HBM_GIB[gen]}


def at_paper_batch(row: dict, where: str, log) -> None:
  """The paper's batch over the generation's slice (``where="slice"``) or all
  on one chip (``"one_chip"``)."""
  config = configs.get_config(row["config"])
  gen, batch = row["generation"], config.batch_size
  topo = SLICES[gen] if where == "slice" else tpu.ONE_CHIP[gen]
  c = tpu.compile_train_step(config, topo, batch, keep_text=where == "one_chip")
  row[where] = _record(c)
  log(f"  {where} {topo} {c.per_chip_batch}/chip: "
      f"{'%.2f GiB' % c.hbm_gib if c.fits else 'REFUSED'} {c.compile_s:.0f} s")
  if where == "one_chip" and c.fits and models.PRIORS[config.model.prior].has_manifold:
    row["prior_products_highest"] = len(tpu.check_prior_precision(c.hlo_text))


def add_max_batch(row: dict, log, slope: float | None = None) -> None:
  """Phase 2: the largest per-chip batch on one chip, predicted from the two
  compiles of phase 1 (or, given ``slope``, HBM bytes per sample measured at
  large batches on another generation, from the one-chip compile) and
  confirmed by the compiler."""
  config = configs.get_config(row["config"])
  gen, batch = row["generation"], config.batch_size
  one = tpu.ONE_CHIP[gen]
  s, o = row.get("slice"), row["one_chip"]
  compiles = []

  def at(b):
    r = tpu.compile_train_step(config, one, b)
    compiles.append({"per_chip_batch": b, "fits": r.fits,
                     "compile_s": round(r.compile_s, 2),
                     **({"hbm_gib": round(r.hbm_gib, 3)} if r.fits else {})})
    log(f"    {b}/chip: {'%.2f GiB' % r.hbm_gib if r.fits else 'refused'} "
        f"{r.compile_s:.0f} s")
    return r

  hbm = {batch: o.get("hbm_bytes")}
  if s and s["per_chip_batch"] != batch:
    hbm[s["per_chip_batch"]] = s.get("hbm_bytes")
  guess = None
  if slope and o.get("hbm_bytes"):  # HBM per sample measured at large batches
    guess = int(batch + (row["usable_hbm_gib"] * GiB - o["hbm_bytes"]) / slope)
    row["max_batch_guess_from"] = "an earlier generation's HBM per sample"
  row["max_per_chip_batch"], row["max_batch_predicted"] = tpu.largest_batch(
      at, hbm, row["usable_hbm_gib"] * GiB, guess=guess)
  row["max_batch_compiles"] = compiles


def large_batch_slope(row: dict) -> float | None:
  """HBM bytes per sample at large batches in a row's largest-batch search:
  between its smallest and largest batches that fit when they are 64 or more
  apart, else from the one-chip compile at the paper's batch to the largest
  (None: no search yet)."""
  fit = sorted((c["per_chip_batch"], c["hbm_gib"] * GiB) for c in
               row.get("max_batch_compiles", []) if c["fits"])
  if not fit:
    return None
  if fit[-1][0] - fit[0][0] < 64:
    o = row["one_chip"]
    fit = [(o["per_chip_batch"], o["hbm_bytes"]), fit[-1]]
  (b1, h1), (b2, h2) = fit[0], fit[-1]
  return (h2 - h1) / (b2 - b1) if b2 > b1 and h2 > h1 else None


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default=",".join(paper_names()))
  p.add_argument("--generations", default="v5e,v4,v5p")
  p.add_argument("--out", default=str(RESULTS))
  p.add_argument("--resume", action="store_true",
                 help="keep the rows the JSON already holds")
  p.add_argument("--headline", default="celeba-nif128",
                 help="configs whose largest batch on the first generation is "
                      "searched right after the second generation's compiles")
  p.add_argument("--readme", action="store_true",
                 help="only rewrite README.md's table from the JSON")
  args = p.parse_args()
  if args.readme:
    write_readme(json.loads(pathlib.Path(args.out).read_text()))
    return
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
  if args.resume and out.exists():  # The earlier runs' rows, and their record.
    before = json.loads(out.read_text())
    data["rows"] = before["rows"]
    data["earlier_runs"] = before.get("earlier_runs", []) + [
        {"command": before["command"], "run_s": before.get("run_s")}]
  t0 = time.perf_counter()
  log = lambda s: print(s, flush=True)

  def write():
    data["run_s"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")

  rows = {(r["config"], r["generation"]): r for r in data["rows"]}
  for gen in gens:
    for name in names:
      if (name, gen) not in rows:
        rows[name, gen] = new_row(name, gen)
        data["rows"].append(rows[name, gen])
  # The order gets the most information early (an interrupted run keeps it):
  # the first generation at the paper's batch (slice and one chip), every
  # other generation on one chip, the first generation's largest batch
  # (largest models first), the other generations' slices, their largest batch.
  first, others = gens[0], gens[1:]
  # The largest batch: the largest models first (where the limit matters).
  by_size = sorted(names, key=lambda n: -rows[n, first].get(
      "one_chip", {}).get("hbm_bytes", 0))
  head = [n for n in args.headline.split(",") if n in names]
  tasks = ([(n, first, w) for n in names for w in ("slice", "one_chip")]
           + [(n, g, "one_chip") for g in others[:1] for n in names]
           + [(n, first, "max") for n in head]
           + [(n, g, "one_chip") for g in others[1:] for n in names]
           + [(n, first, "max") for n in by_size]
           + [(n, g, "slice") for g in others for n in names]
           + [(n, g, "max") for g in others for n in names])
  for name, gen, what in tasks:
    row = rows[name, gen]
    if what in row or (what == "max" and "max_per_chip_batch" in row):
      continue
    log(f"{name} on {gen}: {what}")
    if what == "max":  # From the nearest earlier generation searched.
      slopes = [large_batch_slope(rows[name, g]) for g in gens[:gens.index(gen)]]
      add_max_batch(row, log, next((x for x in reversed(slopes) if x), None))
    else:
      at_paper_batch(row, what, log)
    write()
  data["complete"] = all("max_per_chip_batch" in rows[n, g] and "slice" in rows[n, g]
                         for n in names for g in gens)
  write()
  print(table(data))


def table(data) -> str:
  """The markdown table of a tpu_fit.json: one row per config; per generation
  the HBM per chip at 8 per chip over the 4-chip slice, at 32 on one chip, and
  the largest per-chip batch that compiles on one chip ("-": not run yet)."""
  gens = list(data["slices"])
  rows = {(r["config"], r["generation"]): r for r in data["rows"]}
  names = list(dict.fromkeys(r["config"] for r in data["rows"]))
  head = ["model"] + [
      f"{g} ({data['usable_hbm_gib'][g]} GiB): {data['slices'][g]} · 1 chip · "
      "largest" for g in gens] + [f"compile, 1 {gens[0]} chip"]
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  f = lambda x: ("-" if x is None else f"{x['hbm_gib']:.2f}" if x["fits"]
                 else "no fit")
  for n in names:
    cells = [n]
    for g in gens:
      r = rows.get((n, g), {})
      cells.append(f"{f(r.get('slice'))} · {f(r.get('one_chip'))} GiB · "
                   f"{r.get('max_per_chip_batch', '-')}")
    o = rows.get((n, gens[0]), {}).get("one_chip")
    cells.append(f"{o['compile_s']:.0f} s" if o else "-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- tpu-fit-table: generated by bench/tpu_fit.py --readme from bench/results/tpu_fit.json -->"
END = "<!-- /tpu-fit-table -->"


def write_readme(data) -> None:
  text = README.read_text()
  a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
  README.write_text(text[:a] + "\n" + table(data) + "\n" + text[b:])


if __name__ == "__main__":
  main()
