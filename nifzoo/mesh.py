"""One data-parallel code path from one CPU to a TPU pod.

The mesh has one axis, ``data``: the global batch is split over it and the
parameters are replicated. On several hosts every process feeds its own
shard of the batch and :func:`global_batch` assembles the global array.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(enabled: bool | None = None, **kwargs) -> None:
  """Calls ``jax.distributed.initialize()`` for multi-host runs only.

  ``enabled=None`` reads the environment: ``NIFZOO_DISTRIBUTED=1`` or the
  variables that Cloud TPU pods / SLURM set. On a single non-TPU host the call
  would fail, which is why big_vision guards it the same way. Keyword
  arguments (``coordinator_address``, ``num_processes``, ``process_id``) pass
  through, for CPU clusters on 127.0.0.1.
  """
  if enabled is None:
    enabled = os.environ.get("NIFZOO_DISTRIBUTED", "0") == "1" or bool(
        os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1)
  if not enabled:
    return
  # Cross-process collectives on CPU need gloo (no effect on TPU/GPU). Asking
  # for the backend here would initialise it, which must come after this call.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def define_distributed_flags():
  """Defines the launchers' multi-host flags (``--distributed``,
  ``--coordinator_address``, ``--num_processes``, ``--process_id``) and
  returns a function that calls :func:`maybe_initialize_distributed` with
  them (after absl has parsed the command line)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  distributed = flags.DEFINE_bool(
      "distributed", None,
      "Call jax.distributed.initialize() (default: from the environment).")
  coordinator = flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0 (CPU clusters).")
  num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes.")
  process_id = flags.DEFINE_integer("process_id", None, "This process's index.")

  def initialize():
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator.value,
                                    num_processes=num_processes.value,
                                    process_id=process_id.value).items()
              if v is not None}
    enabled = distributed.value
    maybe_initialize_distributed(
        enabled if enabled is not None else (True if kwargs else None), **kwargs)

  return initialize


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over ``devices`` (Auto axis type).

  ``devices``: default every device of every process; or e.g. the compile-only
  devices of a TPU topology (``nifzoo.tpu.compile_mesh``), for which programs
  can be compiled but not run. jax 0.10's ``make_mesh`` defaults to Explicit
  axes, under which Glow's squeeze reshapes fail; Auto lets XLA propagate the
  batch sharding.
  """
  if devices is None:
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                         axis_types=(jax.sharding.AxisType.Auto,))
  devices = list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, *, process_count: int | None = None,
                     device_count: int | None = None,
                     name: str = "batch_size") -> int:
  """The global batch must divide by the number of processes (each reads its
  share) and of devices (each computes its share); returns the per-process
  batch. Counts default to this job's; ``device_count=1`` for a batch that is
  not sharded over the devices."""
  process_count = jax.process_count() if process_count is None else process_count
  device_count = jax.device_count() if device_count is None else device_count
  for what, n in (("processes", process_count), ("devices", device_count)):
    if global_batch_size % n:
      raise ValueError(
          f"{name}={global_batch_size} is not divisible by the number of "
          f"{what} ({n}); choose a multiple of {n}.")
  return global_batch_size // process_count


def global_batch(mesh, local_batch: np.ndarray) -> jax.Array:
  """Assembles a batch-sharded global array from this process's shard."""
  return jax.make_array_from_process_local_data(batch_sharded(mesh),
                                                np.asarray(local_batch))
