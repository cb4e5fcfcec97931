r"""Regenerates the packaged registry (registry/): one command.

  python launch/build_registry.py                 # paper entries + train & ship digits
  python launch/build_registry.py --nodigits      # paper entries and README table only
  python launch/build_registry.py --models=deepnif8,deepnif16   # only these digits models

1. Writes an entry (no checkpoint) for each of the paper's 16 models (and the
   deep NIF), with the paper's figures and, from bench/tpu_fit.py's JSON
   (--tpu_fit), the hardware record: which TPUs it fits, at which batch.
2. Trains each shipped digits model with the project's own launcher (same
   Glow, same seed, same batches), exactly as
     python launch/train.py --config=configs/digits.py:<model> \
         --workdir=<runs>/digits-<model> --register=registry
   which exports its variables into registry/checkpoints/ and writes its entry
   with the content hash and the whole-test-split bits/dim.
   A deep NIF is then scored by launch/evaluate.py --evals=iw_bound
   --write_metrics=registry: its test bound at N = 1, 4, 16, 64, 256 beside the
   closed-form bits/dim of digits-nif<k>, merged into its entry.
3. Rewrites the README's table of shipped models from the registry.
"""

import os
import subprocess
import sys

from absl import app
from absl import flags

_DIGITS = flags.DEFINE_bool("digits", True, "Train and register the digits models.")
_MODELS = flags.DEFINE_list("models", ["nf", "nif4", "nif8", "nif16", "nif32",
                                       "deepnif8", "deepnif16"],
                            "Digits models to train.")
_RUNS = flags.DEFINE_string("runs", "runs/registry", "Workdir root of the runs.")
_REGISTRY = flags.DEFINE_string("registry", "registry", "Registry directory to write.")
_README = flags.DEFINE_string("readme", "README.md", "README whose table to rewrite.")
_TPU_FIT = flags.DEFINE_string("tpu_fit", "bench/results/tpu_fit.json",
                               "bench/tpu_fit.py's results, for the paper "
                               "entries' hardware records ('' for none).")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  del argv
  import json  # pylint: disable=g-import-not-at-top
  from nifzoo import cards, configs, registry  # pylint: disable=g-import-not-at-top
  os.chdir(_ROOT)
  fit = None
  if _TPU_FIT.value and os.path.exists(_TPU_FIT.value):
    with open(_TPU_FIT.value) as f:
      fit = json.load(f)
  for name in configs.names():
    if not name.startswith("digits-"):
      hardware = cards.hardware_record(fit, name) if fit else None
      path = registry.write_paper_entry(name, _REGISTRY.value, hardware=hardware)
      print(f"wrote {path}")
  if _DIGITS.value:
    for model in _MODELS.value:
      name = f"digits-{model}"
      workdir = os.path.join(_RUNS.value, name)
      if os.path.exists(workdir):  # A fresh run: same seed, same batches.
        import shutil  # pylint: disable=g-import-not-at-top
        shutil.rmtree(workdir)
      cmd = [sys.executable, "launch/train.py",
             f"--config=configs/digits.py:{model}", f"--workdir={workdir}",
             f"--register={_REGISTRY.value}"]
      print(" ".join(cmd[1:]), flush=True)
      subprocess.run(cmd, check=True)
      if model.startswith("deepnif"):
        cmd = [sys.executable, "launch/evaluate.py", f"--model={name}",
               "--evals=iw_bound", f"--outdir={workdir}/eval",
               f"--write_metrics={_REGISTRY.value}"]
        print(" ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
  cards.update_readme_table(_README.value,
                            registry.all_entries(registry=_REGISTRY.value))
  print(f"updated the shipped-models table in {_README.value}")


if __name__ == "__main__":
  app.run(main)
