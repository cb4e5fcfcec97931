r"""Evaluates a zoo model: bits/dim, Fréchet distances, the s sweep, figures.

  python launch/evaluate.py --model=digits-nif16 --outdir=runs/eval/digits-nif16
  python launch/evaluate.py --model=runs/digits-nif16 --evals=bpd,s_sweep \
      --write_metrics=~/nifzoo-registry
  python launch/evaluate.py --model=celeba-nif64 --registry=~/nifzoo-registry \
      --evals=bpd,fid --inception_weights=pt_inception.npz --num_samples=25000
  python launch/evaluate.py --model=digits-nif16 --outdir=runs/eval/digits-nif16 \
      --config=nifzoo/evaluate/config.py:bpd,s_sweep \
      --config.evals.s_sweep.num_samples=2000

--model is a registry name or a training workdir (anything ``zoo.load`` takes).
The job is a config (--config, default nifzoo/evaluate/config.py, whose
docstring lists every setting and its default; override any with
--config.<field>=...); the other flags are shortcuts into it. Evaluations
(--evals, comma-separated, replacing the config's list):

  bpd         test bits/dim at s = 1, every test image once, --bpd_draws
              dequantisation draws (deep NIF: IW bound with --iw_samples,
              default the training N)
  iw_bound    deep NIF only: the test bound at N in --iw_curve, beside the
              closed-form log-likelihood of <dataset>-nif<k> when the registry
              ships it (same images and dequantisation draws)
  fd          Fréchet distance on the dataset classifier's features at s = 1
  s_sweep     FD(s) and bits/dim(s) over --scales, s chosen on a train
              subsample, FD reported on test (sweep.png)
  fid         Inception-v3 FID (TTUR-compatible) at s = 1 and at s* when the
              sweep ran; needs --inception_weights
  figures     temperature grid, s strip, samples at s = 0 and 1,
              reconstructions, interpolations (PNG)
  embeddings  supervised UMAP of the test embeddings (embedding.png) and a
              linear probe (train -> test accuracy)

Everything runs data-parallel over all devices (the training mesh). Results go
to <outdir>/metrics.json and PNGs; --write_metrics=<dir> also merges the
metrics into the model's entry in that user registry.
"""

from __future__ import annotations

import json
import os
import sys

from nifzoo import runtime

# Before jax loads: nifzoo's CPU defaults, as launch/train.py (nifzoo/runtime.py).
runtime.reexec_with_defaults()

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from nifzoo import mesh as mesh_lib
from nifzoo.evaluate import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), "nifzoo", "evaluate", "config.py"),
    "The evaluation job: nifzoo/evaluate/config.py[:<evals>].")
_MODEL = flags.DEFINE_string("model", None, "Registry name or training workdir.")
_EVALS = flags.DEFINE_list(
    "evals", None, f"Any of {', '.join(config_lib.EVALS)} (default: the "
    f"config's, {config_lib.DEFAULT_EVALS}).")
_OUTDIR = flags.DEFINE_string("outdir", None, "Where metrics.json and PNGs go.")
_SHORTCUTS = config_lib.define_flags()
_INITIALIZE_DISTRIBUTED = mesh_lib.define_distributed_flags()


def job_config():
  """The job the flags describe: --config, then --evals, --outdir and the
  shortcut flags that are given."""
  config = config_lib.resolve(_CONFIG.value)
  if _EVALS.value is not None:
    config.evals = {name: config.evals.get(name) for name in _EVALS.value}
    config = config_lib.resolve(config)
  if _OUTDIR.value is not None:
    config.outdir = _OUTDIR.value
  config = _SHORTCUTS(config)
  config.command = " ".join(["python"] + sys.argv)
  return config


def main(argv):
  del argv
  if not _MODEL.value:
    raise app.UsageError("--model is required.")
  config = job_config()
  if not config.outdir:
    raise app.UsageError("--outdir (or --config.outdir) is required.")
  # Library INFO chatter (Orbax, XLA backends) off; --verbosity=0 brings it back.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  _INITIALIZE_DISTRIBUTED()
  from nifzoo import evaluate  # pylint: disable=g-import-not-at-top
  out = evaluate.run(_MODEL.value, config)
  print(json.dumps(out["metrics"], indent=2))


if __name__ == "__main__":
  app.run(main)
