"""Benchmark: the training input pipeline's cost per batch (issue 9, a host cost per step).

``nifzoo.data.make_dataset`` batches before grain's prefetch (reader threads build
whole batches); the pipeline before it prefetched single examples and batched
after them. Both on the embedded digits (batch 64 by default), measured as:

* back to back: ms per ``next(it)`` with nothing else running;
* in a loop: ms the consumer's thread spends in ``next(it)`` when it does
  ``--work-ms`` of other work (a spin, as a train step keeps a core busy)
  between batches, the cost a training step pays on its own thread.

    python bench/input_pipeline.py [--batch 64] [--batches 300] [--work-ms 30]

Prints a table and writes bench/results/input_pipeline.json (medians over
``--batches`` batches after 10 warm-up batches). Both pipelines yield the same
batches (checked).
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
import time

import grain
import numpy as np

from nifzoo import data as data_lib
from nifzoo.data import pipeline
from nifzoo.data import sources

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "input_pipeline.json"


def example_level(data_config, batch: int, seed: int, num_threads: int = 8):
  """The pipeline before batching moved ahead of the prefetch (same batches)."""
  ds = grain.MapDataset.source(sources.get_source(data_config, "train"))
  ds = ds.shuffle(seed=seed).repeat(None)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch)
  return ds.to_iter_dataset(read).batch(batch, drop_remainder=True,
                                         batch_fn=pipeline._batch_fn)


def _spin(ms: float) -> None:
  end = time.perf_counter() + ms / 1e3
  while time.perf_counter() < end:
    pass


def time_next(it, batches: int, work_ms: float) -> float:
  """Median ms of ``next(it)`` over ``batches`` calls, ``work_ms`` of spin between."""
  for _ in range(10):
    next(it)
  ts = []
  for _ in range(batches):
    if work_ms:
      _spin(work_ms)
    t = time.perf_counter()
    next(it)
    ts.append(time.perf_counter() - t)
  return statistics.median(ts) * 1e3


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=300)
  parser.add_argument("--work-ms", type=float, default=30.0)
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = parser.parse_args(argv)

  config = data_lib.default_data_config("digits")
  pipelines = {
      "batched (make_dataset)": lambda: iter(data_lib.make_dataset(
          config, "train", global_batch_size=args.batch, seed=0,
          process_index=0, process_count=1)),
      "example-level (before)": lambda: iter(example_level(config, args.batch, 0)),
  }
  a, b = (make() for make in pipelines.values())
  same = all(np.array_equal(x["image"], y["image"]) and
             np.array_equal(x["label"], y["label"])
             for x, y in ((next(a), next(b)) for _ in range(20)))
  if not same:
    raise SystemExit("the two pipelines yield different batches")

  print(f"digits, batch {args.batch}, median of {args.batches} batches "
        f"({os.cpu_count()} CPUs); same batches: {same}")
  print(f"  {'pipeline':24} {'back to back':>13} {'in a loop':>10}  (ms per batch)")
  rows = {}
  for name, make in pipelines.items():
    back = time_next(make(), args.batches, 0.0)
    loop = time_next(make(), args.batches, args.work_ms)
    rows[name] = dict(back_to_back_ms=back, in_loop_ms=loop)
    print(f"  {name:24} {back:13.2f} {loop:10.2f}")
  base, new = rows["example-level (before)"], rows["batched (make_dataset)"]
  ratio = {k: base[k] / new[k] for k in new}
  print(f"  example-level / batched: {ratio['back_to_back_ms']:.1f}x back to back, "
        f"{ratio['in_loop_ms']:.1f}x in a loop with {args.work_ms:g} ms of work")

  git = subprocess.run(["git", "log", "-1", "--format=%h %s"], capture_output=True,
                       text=True, cwd=pathlib.Path(__file__).parent).stdout.strip()
  result = dict(
      benchmark="input_pipeline", git=git,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
      grain=grain.__version__, cpus=os.cpu_count(), machine=platform.machine(),
      batch=args.batch, batches=args.batches, work_ms=args.work_ms,
      same_batches=same, pipelines=rows, ratio_before_over_now=ratio)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
