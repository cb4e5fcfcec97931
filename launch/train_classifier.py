r"""Trains the dataset classifier whose features give the offline Fréchet distance.

  python launch/train_classifier.py --dataset=digits
      # -> registry/checkpoints/digits-classifier/{state/, classifier.json}

The JSON beside the Orbax state records the architecture, the training
settings, the train/test accuracy, the state's sha256 (checked when
launch/evaluate.py loads it) and this command.
"""

from __future__ import annotations

import os
import sys

from nifzoo import runtime

# Before jax loads: nifzoo's CPU defaults, as launch/train.py (nifzoo/runtime.py).
runtime.reexec_with_defaults()

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DATASET = flags.DEFINE_string("dataset", "digits", "Short dataset name (digits, fmnist, ...).")
_OUTDIR = flags.DEFINE_string(
    "outdir", None, "Default: registry/checkpoints/<dataset>-classifier in this checkout.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Training steps.")
_HIDDEN = flags.DEFINE_list("hidden", ["256", "32"], "Hidden widths; the last is the feature dim.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (not for digits).")


def main(argv):
  del argv
  from nifzoo import configs, registry, variables  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import classifier  # pylint: disable=g-import-not-at-top
  data_config = configs.get_config(
      f"{_DATASET.value}-nf").data  # Any model of the dataset: same data config.
  if _DATA_DIR.value:
    data_config.data_dir = _DATA_DIR.value
  outdir = _OUTDIR.value or os.path.join(ROOT, "registry", registry.CHECKPOINTS,
                                         f"{_DATASET.value}-classifier")
  model, info = classifier.train_classifier(
      data_config, hidden=tuple(int(h) for h in _HIDDEN.value),
      steps=_STEPS.value, seed=_SEED.value)
  classifier.save_classifier(model, outdir, info)
  info["sha256"] = variables.hash_directory(os.path.join(outdir, classifier.STATE_DIR))
  info["command"] = "python launch/train_classifier.py " + " ".join(sys.argv[1:])
  classifier.write_info(outdir, info)
  print(f"{outdir}: test accuracy {info['test_accuracy']:.4f} "
        f"({info['num_test_images']} images)")


if __name__ == "__main__":
  app.run(main)
