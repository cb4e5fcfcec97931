"""The zoo: trained models by name, ``zoo.load("digits-nif16")``.

    from nifzoo import zoo
    zoo.list()                         # every registry name
    print(zoo.info("celeba-nif128"))   # the entry: config, metrics, paper figures
    model = zoo.load("digits-nif16")   # an ImageFlow, ready to use
    model = zoo.load("runs/my-run")    # a training workdir (newest step, or step=)

``load`` builds the model abstractly (``nnx.eval_shape``), restores only its
variables with Orbax into the sharding asked for (replicated over ``mesh``, or
one device), after checking the checkpoint's content hash and that the
checkpoint was trained with the same wiring as the code that loads it. The
returned model carries ``model.config`` (a FrozenConfigDict) and
``model.entry`` (the registry :class:`~nifzoo.registry.Entry`, or None for a
workdir).

Registering a run and exporting its variables: ``registry.register`` and
``variables.export`` (:mod:`nifzoo.registry`, :mod:`nifzoo.variables`).
"""

from __future__ import annotations

import builtins
import json
import os

import jax
import ml_collections
from flax import nnx

from nifzoo import cards
from nifzoo import configs
from nifzoo import fileio
from nifzoo import mesh as mesh_lib
from nifzoo import models
from nifzoo import registry as registry_lib
from nifzoo import variables as variables_lib
from nifzoo.variables import CheckpointError

INIT_MODES = (None, "random")


class ZooError(CheckpointError):
  """A model that cannot be loaded: no checkpoint, hash mismatch, bad wiring."""


class NoCheckpointError(ZooError):
  """The entry has no trained weights."""


# ------------------------------------------------------------------ listing


def list(pattern: str = "*", *, registry=None) -> builtins.list[str]:  # pylint: disable=redefined-builtin
  """Registry names matching a glob (``zoo.list("digits-*")``)."""
  return registry_lib.names(pattern, registry)


def info(name: str, *, registry=None) -> str:
  """The entry for ``name`` as readable text."""
  e = registry_lib.find(name, registry)
  d = e.data
  lines = [f"{d['name']}  ({e.path})", f"  {d['card']['summary']}",
           f"  config: {d['config']}" + (f" + {d['overrides']}" if d["overrides"] else "")]
  ds = d["dataset"]
  lines.append(f"  dataset: {ds['name']} ({ds['split']} splits), "
               f"{tuple(ds['image_shape'])}, {ds['num_levels']} levels")
  ck = d["checkpoint"]
  if ck is None:
    lines.append("  checkpoint: none (no trained weights ship for this name; "
                 "train one with:\n    " + cards.train_command(name) + ")")
  else:
    lines.append(f"  checkpoint: {ck['uri']} (step {ck['step']}, "
                 f"{ck['num_params']:,} parameters, {ck['sha256'][:19]}...)")
  if d["metrics"]:
    lines.append("  metrics:")
    for k, m in sorted(d["metrics"].items()):
      extra = {x: v for x, v in m.items() if x not in ("value", "command")}
      lines.append(f"    {k} = {m['value']:.4g}  {extra if extra else ''}".rstrip())
      lines.append(f"      by: {m['command']}")
  if d["paper"]:
    lines.append("  paper: " + ", ".join(f"{k} = {v}" for k, v in d["paper"].items()))
  if d["training"]:
    lines.append(f"  trained by: {d['training']['command']}")
    rest = {k: v for k, v in d["training"].items() if k != "command"}
    if rest:
      lines.append(f"    {rest}")
  if d.get("hardware"):
    lines.append(f"  fits (TPU compile check, {d['hardware']['command']}):")
    lines += [f"    {x}" for x in cards.hardware_lines(d["hardware"])]
  for field in ("training", "intended_use", "limitations"):
    lines.append(f"  {field.replace('_', ' ')}: {d['card'][field]}")
  return "\n".join(lines)


# ------------------------------------------------------------------ configs


def entry_config(entry: registry_lib.Entry) -> ml_collections.ConfigDict:
  """The config an entry names (registry name + overrides)."""
  c = configs.get_config(entry.data["config"])
  if entry.data["overrides"]:
    c.update_from_flattened_dict(entry.data["overrides"])
  return configs.finalize(c)


def check_wiring(saved: dict, config, where: str) -> None:
  """Refuses a checkpoint trained with another wiring, naming the fields."""
  diff = models.wiring_differences(saved, config)
  if diff:
    raise ZooError(
        f"The checkpoint at {where} was trained with a different wiring than "
        f"this code builds ({'; '.join(diff)}). Loading it would compute "
        f"something else without any shape error; retrain it, or use the "
        f"nifzoo version that wrote it.")


# ------------------------------------------------------------------ loading


def _target_sharding(mesh, sharding):
  if sharding is not None:
    return sharding
  if mesh is not None:
    return mesh_lib.replicated(mesh)
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def load(name_or_path: str, *, step: int | None = None, mesh=None,
         sharding=None, init: str | None = None, registry=None):
  """A ready ``ImageFlow`` from a registry name or a training workdir.

  Args:
    name_or_path: a registry name (``"digits-nif16"``) or a training workdir
      (a directory with ``config.json`` and ``checkpoints/``).
    step: a workdir's step (default: its newest checkpoint).
    mesh: replicate the variables over this mesh (e.g. ``nifzoo.mesh.make_mesh()``).
    sharding: or place them with this sharding. Default: the first device.
    init: ``"random"`` builds an entry without a checkpoint with random
      weights (seeded by the config) instead of refusing.
    registry: user registry directories searched before $NIFZOO_REGISTRY and
      the packaged registry.
  """
  if init not in INIT_MODES:
    raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}.")
  target_sharding = _target_sharding(mesh, sharding)
  if _is_workdir(name_or_path):
    entry = None
    config, path, partial = _workdir_checkpoint(name_or_path, step)
  else:
    entry = registry_lib.find(name_or_path, registry)
    config = entry_config(entry)
    if entry.checkpoint is None or init == "random":
      return _untrained(entry, config, init, target_sharding)
    path, partial = _entry_checkpoint(entry, config), False
  graphdef, variables = variables_lib.restore_model(config, path, target_sharding,
                                                    partial=partial)
  return _finish(graphdef, variables, config, entry)


def _workdir_checkpoint(workdir, step):
  """``(config, variables path, partial)`` of a workdir, its wiring checked."""
  config = variables_lib.workdir_config(workdir)
  wiring_path = fileio.as_path(workdir) / variables_lib.WIRING_FILE
  if wiring_path.exists():
    check_wiring(json.loads(wiring_path.read_text()), config, str(wiring_path))
  path, partial, _ = variables_lib.source(workdir, step)
  return config, path, partial


def _entry_checkpoint(entry, config) -> str:
  """An entry's checkpoint path, its wiring and hash checked."""
  check_wiring(entry.data["wiring"], config, entry.path)
  path = entry.checkpoint_path()
  verify_hash(path, entry.checkpoint["sha256"], entry.path)
  return path


def _untrained(entry, config, init, sharding):
  if init != "random":
    raise NoCheckpointError(
        f"{entry.name} has no checkpoint in the registry ({entry.path}): no "
        f"trained weights ship for it. Train and register one with\n  "
        f"{cards.train_command(entry.name)}\nthen load it with "
        f"zoo.load({entry.name!r}, registry='~/nifzoo-registry'); or pass "
        f"init='random' for an untrained model of this architecture.")
  graphdef, variables = variables_lib.split(
      models.build(config, rngs=models.seeded_rngs(config.seed)))
  return _finish(graphdef, jax.device_put(variables, sharding), config, entry)


def _finish(graphdef, variables, config, entry):
  model = nnx.merge(graphdef, variables["params"], variables["rest"])
  model.config = ml_collections.FrozenConfigDict(config)
  model.entry = entry
  return model


def _is_workdir(name_or_path: str) -> bool:
  s = os.fspath(name_or_path)
  return not fileio.is_local(s) or os.sep in s or os.path.isdir(s)


def verify_hash(path: str, expected: str, where: str) -> None:
  try:
    got = variables_lib.hash_directory(path)
  except FileNotFoundError as e:
    raise ZooError(f"{where}: the checkpoint is missing: {e}") from e
  if got != expected:
    raise ZooError(
        f"The checkpoint at {path} does not match the hash in {where} "
        f"(expected {expected}, found {got}): it was modified, truncated or "
        f"replaced. Refusing to load it.")

