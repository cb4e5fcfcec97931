"""gs:// with TensorFlow's tf.io.gfile in play, and the pod rehearsal (slow).

Every process here talks to the local GCS emulator (tests/conftest.py's `gcs`
fixture): the launchers' subprocesses inherit its variables, and
TensorFlow (clu's TensorBoard writer, and epath's backend where
``EPATH_USE_TF=true``) reaches it through the fixture's TLS proxy.

The pod rehearsal (README, "On Cloud TPU and GCS"): 2 processes x 2 host
devices train from digits in the bucket into a gs:// workdir, with TensorFlow's
backend as on a TPU VM (its ``dir/`` placeholder objects and clu's TensorBoard
log included); SIGTERM to both stops them at one step with one exit checkpoint;
the resumed run registers into a gs:// registry; a 2-process
launch/evaluate.py without TensorFlow (gcsfs, as on a VM with the ``gcs`` extra
only) reads that entry, gives the trainer's test bits/dim and writes its
outputs to gs://; this process (gcsfs) loads what TensorFlow wrote and gives
the trainer's log p.
"""

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nifzoo import configs
from nifzoo import data
from nifzoo import fileio
from nifzoo import registry
from nifzoo import zoo
from nifzoo import variables

import gcs_emulator  # free_port
import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
EVALUATE = os.path.join(ROOT, "launch", "evaluate.py")
SMALL = ("--config.eval_batches=1", "--config.sample_every=100000")

def _env(gcs, devices=1, **extra):
  env = {**os.environ, **gcs.env, "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}
  return helpers.env_with_devices(devices, env)


def _exists(gcs, path) -> bool:
  gcs.invalidate()
  return fileio.as_path(path).exists()


def _images():
  src = data.get_source(configs.get_config("digits-nif8").data, "test")
  return np.stack([src[i]["image"] for i in range(8)]).astype(np.int32)


def _log_prob(model, images):
  return np.asarray(model.log_prob(images, key=jax.random.key(1)))


def _steps(gcs, workdir):
  gcs.invalidate()
  return sorted(int(p.name) for p in fileio.as_path(f"{workdir}/checkpoints").iterdir()
                if p.name.isdigit())


def _launch(script, args, gcs, num_processes=2, devices=2, use_tf=True):
  """``script`` on 2 processes x 2 devices, with TensorFlow's gs:// backend
  (``use_tf``) or gcsfs; without TensorFlow, each process logs its imports."""
  port = gcs_emulator.free_port()
  python = [sys.executable] if use_tf else [sys.executable, "-X", "importtime"]
  return [subprocess.Popen(
      [*python, script, *args, f"--coordinator_address=127.0.0.1:{port}",
       f"--num_processes={num_processes}", f"--process_id={i}"],
      env=_env(gcs, devices, EPATH_USE_TF="true" if use_tf else "false"),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(num_processes)]


def _wait(procs, timeout=600):
  # Read every pipe at once: one left unread could fill up and stall its
  # process, and with it the others at their next collective.
  with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
    outs = list(pool.map(lambda p: p.communicate(timeout=timeout)[0], procs))
  if os.environ.get("NIFZOO_POD_LOGS"):  # Where to keep the processes' output.
    for i, o in enumerate(outs):
      with open(os.path.join(os.environ["NIFZOO_POD_LOGS"],
                             f"{time.time():.0f}-{i}.log"), "w") as f:
        f.write(o)
  return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_pod_rehearsal(gcs):
  from nifzoo.data import digits  # pylint: disable=g-import-not-at-top
  data_dir, workdir = gcs.prefix("tfds"), gcs.prefix("pod")
  reg, outdir, name = gcs.prefix("registry"), gcs.prefix("eval"), "digits-nif8-pod"
  digits.write_tfds(data_dir)
  train = [f"--config={ROOT}/configs/digits.py:nif8,tiny", f"--workdir={workdir}",
           f"--config.data.data_dir={data_dir}", "--config.log_every=3", *SMALL]

  # 2 processes x 2 devices; SIGTERM to both once step 3 is checkpointed.
  procs = _launch(TRAIN, [*train, "--config.total_steps=100000",
                          "--config.checkpoint_every=3"], gcs)
  first = f"{workdir}/checkpoints/3/{variables.CHECKSUMS_FILE}"
  deadline = time.time() + 400
  while (not _exists(gcs, first) and all(p.poll() is None for p in procs)
         and time.time() < deadline):
    time.sleep(0.5)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  codes, outs = _wait(procs)
  assert codes == [143, 143], "\n".join(o[-3000:] for o in outs)
  stopped = {int(re.search(r"Stopped by SIGTERM \(preemption\) at step (\d+)", o)[1])
             for o in outs}
  assert len(stopped) == 1, stopped  # Both at the same step...
  stop = stopped.pop()
  steps = _steps(gcs, workdir)
  assert steps[-1] == stop >= 3, steps  # ...with its exit checkpoint,
  assert [s for s in steps if s % 3] in ([], [stop]), steps  # and only that one.
  assert variables.verify_checksums(f"{workdir}/checkpoints/{stop}")
  assert not _exists(gcs, f"{workdir}/lease.json")  # Released on the way out.

  # Resume to stop + 3 (one save, at the end) and register into the gs:// registry.
  procs = _launch(TRAIN, [*train, f"--config.total_steps={stop + 3}",
                          "--config.checkpoint_every=1000",
                          f"--register={reg}", f"--name={name}"], gcs)
  codes, outs = _wait(procs)
  assert codes == [0, 0], "\n".join(o[-3000:] for o in outs)
  assert "Resumed from" in outs[0] and f"at step {stop}" in outs[0]
  assert _steps(gcs, workdir)[-1] == stop + 3
  entry = registry.find(name, reg)
  assert entry.checkpoint["step"] == stop + 3 and "test_bits_per_dim" in entry.metrics
  objects = gcs.objects(workdir)  # What TensorFlow's backend leaves:
  assert any(k.endswith("/") and v == 0 for k, v in objects.items()), objects
  assert any("events.out.tfevents" in k for k in objects)  # clu's TensorBoard log.

  # Evaluation on 2 processes without TensorFlow: reads the entry (gcsfs), gives
  # the trainer's test bits/dim, writes metrics.json and PNGs to gs://.
  procs = _launch(EVALUATE, [f"--model={name}", f"--registry={reg}",
                             "--evals=bpd,figures", f"--outdir={outdir}",
                             "--batch_size=64", "--bpd_draws=1"], gcs, use_tf=False)
  codes, outs = _wait(procs)
  assert codes == [0, 0], "\n".join(o[-3000:] for o in outs)
  for out in outs:
    imported = helpers.imported_packages(out)
    assert {"jax", "gcsfs"} <= imported and "tensorflow" not in imported
  gcs.invalidate()
  saved = fileio.read_json(f"{outdir}/metrics.json")
  assert saved["results"]["bpd"]["num_images"] == 300
  np.testing.assert_allclose(saved["metrics"]["test_bits_per_dim"]["value"],
                             entry.metrics["test_bits_per_dim"]["value"], atol=1e-4)
  assert {"samples_s0.png", "samples_s1.png", "reconstructions.png"} <= set(
      fileio.list_files(outdir))

  # Loaded here (gcsfs), the entry gives the trainer's final log p.
  images = _images()
  final = zoo.load(workdir)  # The trainer's newest checkpoint (stop + 3), via gcsfs.
  want = _log_prob(final, images)
  np.testing.assert_array_equal(_log_prob(zoo.load(name, registry=reg), images), want)
  # Re-registered from here (gcsfs) it loads to the same numbers.
  registry.register(workdir, f"{reg}-gcsfs", name=name, command="pytest")
  np.testing.assert_array_equal(
      _log_prob(zoo.load(name, registry=f"{reg}-gcsfs"), images), want)
