r"""Trains a zoo model.

  python launch/train.py --config=configs/digits.py:nif16 --workdir=runs/digits-nif16
  python launch/train.py --config=configs/cifar10.py:nif128 --workdir=gs://... \
      --config.data.data_dir=gs://.../tensorflow_datasets --config.batch_size=256

Resumes automatically from the checkpoints in --workdir. With
--register=<registry dir>, a finished run is exported (variables only) into
that registry with an entry holding its config, hash and final test metrics,
so that `zoo.load(name, registry=<dir>)` loads it. On several hosts
(Cloud TPU pod slices) run the same command on every worker; the job calls
jax.distributed.initialize() when --distributed is set or the environment
says it is a multi-host job (see nifzoo/mesh.py).
"""

import os
import sys
import time

from nifzoo import runtime

# Before anything else loads: one OpenBLAS thread (the NIF prior's Cholesky would
# compete with XLA's threads) and huge pages for XLA's per-step temporaries; the
# second is read at process start, so this re-executes the script once
# (nifzoo/runtime.py, bench/README.md "Threads" and "Memory").
runtime.reexec_with_defaults()

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from nifzoo import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and argument, e.g. configs/digits.py:nif16.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
_INITIALIZE_DISTRIBUTED = mesh_lib.define_distributed_flags()
_REGISTER = flags.DEFINE_string(
    "register", None,
    "After training, write a registry entry + checkpoint into this directory.")
_NAME = flags.DEFINE_string(
    "name", None, "Registry name of the entry (default: the config's name).")
_LIBRARY_LOGS = flags.DEFINE_bool(
    "library_logs", False,
    "Show the INFO logs of Orbax, grain, clu, jax (default: their warnings only).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from nifzoo.train import loop

  if not _LIBRARY_LOGS.value:
    loop.quiet_library_logs()
  _INITIALIZE_DISTRIBUTED()
  logging.info("Config:\n%s", _CONFIG.value)
  t0 = time.time()
  try:
    result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except loop.STOP_ERRORS as e:  # Said once, without a traceback.
    logging.error("%s", e)
    # 128 + 15: the shell's code for SIGTERM, which job schedulers recognise.
    sys.exit(143 if isinstance(e, loop.Preempted) else 1)
  wall = time.time() - t0
  logging.info("Done in %.0f s: %s", wall, result)
  if _REGISTER.value:  # On every process: the export is a collective save.
    from nifzoo import cards, registry  # pylint: disable=g-import-not-at-top
    from nifzoo.evaluate import metrics  # pylint: disable=g-import-not-at-top
    command = " ".join(["python"] + sys.argv)
    path = registry.register(
        _WORKDIR.value, _REGISTER.value, name=_NAME.value,
        metrics=metrics.bits_per_dim_metric(result.get("test_eval"), command),
        training={"command": command, "steps": int(_CONFIG.value.total_steps),
                  "wall_time_s": round(wall, 1),
                  "hardware": cards.hardware_string(),
                  # Other work on the machine slows the run: say how busy it was.
                  "load_average_1min": round(os.getloadavg()[0], 1)})
    logging.info("Registered %s", path)


if __name__ == "__main__":
  app.run(main)
