r"""Trains a zoo model.

  python launch/train.py --config=configs/digits.py:nif16 --workdir=runs/digits-nif16
  python launch/train.py --config=configs/cifar10.py:nif128 --workdir=gs://... \
      --config.data.data_dir=gs://.../tensorflow_datasets --config.batch_size=256

Resumes automatically from the checkpoints in --workdir. On several hosts
(Cloud TPU pod slices) run the same command on every worker; the job calls
jax.distributed.initialize() when --distributed is set or the environment
says it is a multi-host job (see nifzoo/mesh.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and argument, e.g. configs/digits.py:nif16.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None,
    "Call jax.distributed.initialize() (default: from the environment).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (CPU clusters).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from nifzoo import mesh  # Imports jax after flags are parsed.
  from nifzoo.train import loop

  kwargs = {k: v for k, v in dict(coordinator_address=_COORDINATOR.value,
                                  num_processes=_NUM_PROCESSES.value,
                                  process_id=_PROCESS_ID.value).items()
            if v is not None}
  mesh.maybe_initialize_distributed(
      _DISTRIBUTED.value if _DISTRIBUTED.value is not None else
      (True if kwargs else None), **kwargs)
  logging.info("Config:\n%s", _CONFIG.value)
  result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("Done: %s", result)


if __name__ == "__main__":
  app.run(main)
