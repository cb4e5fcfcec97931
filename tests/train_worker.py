"""Runs a few data-parallel train steps in its own process, for the mesh tests.

  python tests/train_worker.py --devices=8 --steps=3 --out=/tmp/p.npz
  python tests/train_worker.py --devices=2 --process_id=0 --num_processes=2 \
      --coordinator=127.0.0.1:PORT --out=...

The host device count must be set before jax is imported, hence a separate
process (the one-device reference, ``train(devices=[device])``, runs in the
test's own process). The global batches are fixed digits images, and every
process feeds its own contiguous slice of each, so runs with different device
and process counts see the same global batches and must agree up to float
reduction order.
Process 0 writes the loss per step and the final parameters to ``--out``.
"""

import argparse
import os
import sys


def train(config_name="digits-nif8,tiny", batch=16, steps=3, devices=None):
  """``steps`` train steps on a mesh of ``devices`` (None: all, every process's)
  -> (loss per step, the final parameters as numpy arrays)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from nifzoo import configs  # pylint: disable=g-import-not-at-top
  from nifzoo import data  # pylint: disable=g-import-not-at-top
  from nifzoo import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from nifzoo.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from nifzoo.train import step as step_lib  # pylint: disable=g-import-not-at-top

  config = configs.get_config(config_name)
  config.batch_size = batch
  mesh = mesh_lib.make_mesh(devices=devices)
  local = mesh_lib.check_batch_size(batch, device_count=mesh.devices.size)
  pid = jax.process_index()

  src = data.get_source(config.data, "train")
  images = np.stack([src[i]["image"] for i in range(batch * (steps + 1))])
  images = images.reshape(steps + 1, batch, *images.shape[1:])
  feed = lambda i: mesh_lib.global_batch(
      mesh, images[i, pid * local:(pid + 1) * local].astype(np.int32))

  graphdef, tx, state = setup_lib.create_state(config, mesh)
  state = setup_lib.initialize_actnorms(graphdef, state, feed(0), mesh)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, config))
  losses = []
  for i in range(steps):
    state, metrics = step(state, feed(i + 1))
    losses.append(float(metrics["bits_per_dim"]))
  # Parameters are replicated: every process holds a full copy.
  leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
  return np.array(losses), leaves


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, required=True)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--config", default="digits-nif8,tiny")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--out", required=True)
  p.add_argument("--coordinator", default=None)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--num_processes", type=int, default=1)
  args = p.parse_args()
  os.environ["XLA_FLAGS"] = " ".join(  # Keeps the test session's flags.
      os.environ.get("XLA_FLAGS", "").split()
      + [f"--xla_force_host_platform_device_count={args.devices}"])
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from nifzoo import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

  if args.num_processes > 1:
    mesh_lib.maybe_initialize_distributed(
        True, coordinator_address=args.coordinator,
        num_processes=args.num_processes, process_id=args.process_id)
  losses, leaves = train(args.config, args.batch, args.steps)
  pid = jax.process_index()
  if pid == 0:
    np.savez(args.out, losses=losses, *leaves)
  print(f"process {pid}: devices={jax.device_count()} losses={losses.tolist()}",
        flush=True)


if __name__ == "__main__":
  main()
