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

A registry checkpoint holds the model's variables only, ``{"params", "rest"}``
(``nnx.Param`` and every other variable: ActNorm flags, the LU conv's fixed
permutation); :func:`export` makes one from a training checkpoint (which also
holds the optimiser state and the data iterator), and :func:`register` writes
an entry for a finished run into a registry directory.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from flax import traverse_util

import nifzoo
from nifzoo import configs
from nifzoo import models
from nifzoo import registry as registry_lib
from nifzoo.train.checkpoint import CONFIG_FILE

INIT_MODES = (None, "random")


class ZooError(RuntimeError):
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
                 "train one with:\n    " + train_command(name) + ")")
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
  for field in ("training", "intended_use", "limitations"):
    lines.append(f"  {field.replace('_', ' ')}: {d['card'][field]}")
  return "\n".join(lines)


def train_command(name: str, registry_dir: str = "~/nifzoo-registry") -> str:
  dataset, _, model = name.partition("-")
  return (f"python launch/train.py --config=configs/{dataset}.py:{model} "
          f"--workdir=runs/{name} --register={registry_dir}")


# ------------------------------------------------------------------ configs


def entry_config(entry: registry_lib.Entry) -> ml_collections.ConfigDict:
  """The config an entry names (registry name + overrides)."""
  c = configs.get_config(entry.data["config"])
  if entry.data["overrides"]:
    c.update_from_flattened_dict(entry.data["overrides"])
  return configs.finalize(c)


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ZooError(
        f"{workdir} has no {CONFIG_FILE}: not a nifzoo training workdir (or one "
        f"written before the loop saved its config).")
  return configs.finalize(ml_collections.ConfigDict(json.loads(path.read_text())))


def config_overrides(config, base: str) -> dict:
  """Dotted fields of ``config`` that differ from ``configs.get_config(base)``."""
  ref = _flatten(configs.get_config(base).to_dict())
  got = _flatten(config.to_dict())
  return {k: v for k, v in sorted(got.items()) if _jsonable(ref.get(k)) != _jsonable(v)}


def _flatten(d):
  return traverse_util.flatten_dict(d, sep=".")


def _jsonable(v):
  return json.loads(json.dumps(v))


def check_wiring(saved: dict, config, where: str) -> None:
  """Refuses a checkpoint trained with another wiring, naming the fields."""
  now = _jsonable(models.wiring(config))
  saved = _jsonable(saved)
  diff = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))
  if diff:
    details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, code {now.get(k)!r}"
                        for k in diff)
    raise ZooError(
        f"The checkpoint at {where} was trained with a different wiring than "
        f"this code builds ({details}). Loading it would compute something "
        f"else without any shape error; retrain it, or use the nifzoo version "
        f"that wrote it.")


# ------------------------------------------------------------------ restoring


def _abstract_model(config):
  abstract = nnx.eval_shape(lambda: models.build(config, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  return graphdef, {"params": params, "rest": rest}


def _target_sharding(mesh, sharding):
  if sharding is not None:
    return sharding
  if mesh is not None:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _path_str(path) -> str:
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
    parts.append(str(name))
  if parts and parts[-1] == "value":
    parts.pop()
  return "/".join(parts)


def _flat_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): tuple(getattr(l, "shape", ())) for p, l in leaves}


def _abspath(path: str) -> str:
  # Orbax reads an empty tree from a relative path without complaint.
  return path if str(path).startswith("gs://") else os.path.abspath(path)


def _check_shapes(path: str, target, prefix: str = "") -> None:
  """Names the first variable whose saved shape differs from the config's."""
  path = _abspath(path)
  try:
    meta = ocp.StandardCheckpointer().metadata(path)
  except Exception as e:  # Orbax raises many types for a damaged directory.
    raise ZooError(f"Cannot read the checkpoint at {path}: "
                   f"{type(e).__name__}: {e}") from e
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  saved = _flat_shapes(tree)
  if not saved:
    raise ZooError(f"The checkpoint at {path} lists no variables.")
  want = {prefix + k: v for k, v in _flat_shapes(target).items()}
  for k, shape in want.items():
    if k not in saved:
      raise ZooError(f"The checkpoint at {path} has no variable {k!r} that the "
                     f"config's model needs (shape {shape}).")
    if saved[k] != shape:
      raise ZooError(f"The checkpoint at {path} does not fit the config: "
                     f"variable {k!r} has shape {saved[k]} there, the model "
                     f"needs {shape}.")


def _restore(path: str, target: dict, *, partial: bool = False) -> dict:
  path = _abspath(path)
  try:
    if partial:
      ckptr = ocp.PyTreeCheckpointer()
      restore_args = ocp.checkpoint_utils.construct_restore_args(target)
      return ckptr.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))
    return ocp.StandardCheckpointer().restore(path, target)
  except Exception as e:  # Never a partial model: say what failed.
    raise ZooError(f"Could not restore the checkpoint at {path}: "
                   f"{type(e).__name__}: {e}") from e


def _with_sharding(tree, sharding):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _finish(graphdef, restored, config, entry):
  model = nnx.merge(graphdef, restored["params"], restored["rest"])
  model.config = ml_collections.FrozenConfigDict(config)
  model.entry = entry
  return model


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
    return _load_workdir(name_or_path, step, target_sharding)
  entry = registry_lib.find(name_or_path, registry)
  config = entry_config(entry)
  if entry.checkpoint is None or init == "random":
    if init != "random":
      raise NoCheckpointError(
          f"{entry.name} has no checkpoint in the registry ({entry.path}): no "
          f"trained weights ship for it. Train and register one with\n  "
          f"{train_command(entry.name)}\nthen load it with "
          f"zoo.load({entry.name!r}, registry='~/nifzoo-registry'); or pass "
          f"init='random' for an untrained model of this architecture.")
    model = models.build(config, rngs=models.seeded_rngs(config.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = jax.device_put({"params": params, "rest": rest}, target_sharding)
    return _finish(graphdef, state, config, entry)
  check_wiring(entry.data["wiring"], config, entry.path)
  path = entry.checkpoint_path()
  verify_hash(path, entry.checkpoint["sha256"], entry.path)
  graphdef, target = _abstract_model(config)
  _check_shapes(path, target)
  restored = _restore(path, _with_sharding(target, target_sharding))
  return _finish(graphdef, restored, config, entry)


def _is_workdir(name_or_path: str) -> bool:
  s = os.fspath(name_or_path)
  return s.startswith("gs://") or os.sep in s or os.path.isdir(s)


def latest_step(workdir: str) -> int:
  root = epath.Path(workdir) / "checkpoints"
  steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if (
      root.exists()) else []
  if not steps:
    raise ZooError(f"{workdir} holds no checkpoint (looked in {root}).")
  return steps[-1]


def _train_state_path(workdir: str, step: int | None) -> tuple[str, int]:
  step = latest_step(workdir) if step is None else int(step)
  path = epath.Path(workdir) / "checkpoints" / str(step) / "state"
  if not path.exists():
    raise ZooError(f"{workdir} has no checkpoint at step {step} ({path}).")
  return str(path), step


def _load_workdir(workdir, step, target_sharding):
  config = workdir_config(workdir)
  path, step = _train_state_path(workdir, step)
  graphdef, target = _abstract_model(config)
  _check_shapes(path, target)
  restored = _restore(path, _with_sharding(target, target_sharding),
                      partial=True)
  return _finish(graphdef, restored, config, None)


def verify_hash(path: str, expected: str, where: str) -> None:
  try:
    got = registry_lib.hash_directory(path)
  except FileNotFoundError as e:
    raise ZooError(f"{where}: the checkpoint is missing: {e}") from e
  if got != expected:
    raise ZooError(
        f"The checkpoint at {path} does not match the hash in {where} "
        f"(expected {expected}, found {got}): it was modified, truncated or "
        f"replaced. Refusing to load it.")


# ------------------------------------------------------------------ export


def save_variables(model_or_state, path: str) -> dict:
  """Writes a registry checkpoint ``{"params", "rest"}`` (replicated, unsharded)
  at ``path`` and returns ``{"sha256", "num_params"}``."""
  if isinstance(model_or_state, nnx.Module):
    _, params, rest = nnx.split(model_or_state, nnx.Param, ...)
    state = {"params": params, "rest": rest}
  else:
    state = model_or_state
  state = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state)
  path = _abspath(path)
  if os.path.exists(path):
    shutil.rmtree(path)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, state)
  ckptr.wait_until_finished()
  num_params = int(sum(np.size(x) for x in jax.tree.leaves(state["params"])))
  return {"sha256": registry_lib.hash_directory(path), "num_params": num_params}


def export(workdir: str, path: str, *, step: int | None = None) -> dict:
  """Training checkpoint (state + optimiser + iterator) -> a registry checkpoint
  of the variables only, at ``path``. Returns ``{"sha256", "num_params",
  "step"}``."""
  config = workdir_config(workdir)
  src, step = _train_state_path(workdir, step)
  _, target = _abstract_model(config)
  _check_shapes(src, target)
  cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored = _restore(src, _with_sharding(target, cpu), partial=True)
  out = save_variables(restored, path)
  out["step"] = step
  return out


# ------------------------------------------------------------------ register


def register(workdir: str, registry_dir: str, *, name: str | None = None,
             step: int | None = None, metrics: dict | None = None,
             command: str | None = None, training: dict | None = None,
             card: dict | None = None) -> str:
  """Writes an entry (and a variables-only checkpoint) for a finished run.

  The checkpoint goes to ``<registry_dir>/checkpoints/<name>/`` and the entry
  to ``<registry_dir>/entries/<name>.json``; ``name`` defaults to the run's
  ``config.name``. Returns the entry's path.
  """
  registry_dir = os.path.expanduser(registry_dir)
  config = workdir_config(workdir)
  name = name or config.name
  base = config.name
  ckpt_dir = os.path.join(registry_dir, registry_lib.CHECKPOINTS, name)
  exported = export(workdir, ckpt_dir, step=step)
  data = {
      "schema": registry_lib.SCHEMA_VERSION,
      "name": name,
      "config": base,
      "overrides": config_overrides(config, base),
      "nifzoo_version": nifzoo.__version__,
      "wiring": _jsonable(models.wiring(config)),
      "checkpoint": {"uri": f"{registry_lib.CHECKPOINTS}/{name}",
                     "step": exported["step"], "sha256": exported["sha256"],
                     "num_params": exported["num_params"]},
      "dataset": {"name": config.data.name,
                  "split": config.data.get("split", "standard"),
                  "image_shape": [int(v) for v in config.data.image_shape],
                  "num_levels": int(config.data.num_levels)},
      "metrics": metrics or {},
      "paper": paper_figures(base),
      "training": training or ({"command": command} if command else None),
      "card": card or default_card(config, exported["step"]),
  }
  return registry_lib.write_entry(registry_dir, data)


def eval_metrics(result: dict | None, command: str) -> dict:
  """A registry ``metrics`` dict from an ``evaluate.bits_per_dim`` result."""
  if not result:
    return {}
  name = f"{result['split']}_bits_per_dim"
  if result["noise_scale"] != 1.0:
    name += f"_s{result['noise_scale']:g}"
  return {name: {"value": round(float(result["bits_per_dim"]), 5),
                 "command": command,
                 **{k: result[k] for k in ("split", "num_images", "num_draws",
                                           "noise_scale", "num_samples")
                    if result.get(k) is not None}}}


def hardware_string() -> str:
  devs = jax.devices()
  return (f"{len(devs)} x {devs[0].device_kind} ({devs[0].platform}), "
          f"{os.cpu_count()} host CPU cores")


def default_card(config, step: int | None = None) -> dict:
  m = config.model
  kind = {"normal": "normalizing flow (Glow, N(0, I) prior)",
          "nif": f"noisy injective flow, Gaussian NIF prior with k = {m.latent_dim}",
          "deepnif": f"deep noisy injective flow (Gaussian NIF, k = {m.latent_dim}, "
                     "+ low-dimensional flow, importance-weighted bound)"}[m.prior]
  shape = "x".join(str(v) for v in config.data.image_shape)
  return {
      "summary": f"{kind} on {config.data.name} ({shape}, "
                 f"{config.data.num_levels} levels).",
      "training": (f"Glow with {m.num_scales} scales x {m.steps_per_scale} steps, "
                   f"coupling width {m.width}; Adam lr {config.learning_rate}, "
                   f"batch {config.batch_size}"
                   + (f", {step} steps" if step is not None else "")
                   + f", seed {config.seed}."),
      "intended_use": "Density estimation, sampling and embedding research on "
                      f"{config.data.name}; a reference for the NIF method.",
      "limitations": "Trained on one dataset at its quantisation; densities and "
                     "samples are not meaningful for other data.",
  }


# The paper's results (FID: 25k samples, s tuned on a train subsample over
# linspace(0, 1.2, 15), T = 1; bits/dim: 3-bit data at s = 1); docs/math.md §6.
_PAPER_FID = {
    "fmnist": {"nf": 42.77, "nif64": 23.97, "nif128": 23.23, "nif256": 24.84,
               "nif512": 25.34},
    "cifar10": {"nf": 78.58, "nif64": 80.15, "nif128": 79.38, "nif256": 78.44,
                "nif512": 77.47},
    "celeba": {"nf": 63.07, "nif64": 30.96, "nif128": 34.46, "nif256": 33.95,
               "nif512": 35.96},
}
_PAPER_BPD = {
    "fmnist": {"nf": 1.518, "nif64": 1.506, "nif128": 1.506, "nif256": 1.515,
               "nif512": 1.523},
    "cifar10": {"nf": 1.072, "nif64": 1.069, "nif128": 1.071, "nif256": 1.073,
                "nif512": 1.070},
    "celeba": {"nf": 0.852, "nif64": 0.839, "nif128": 0.835, "nif256": 0.830,
               "nif512": 0.838},
}


def paper_figures(name: str) -> dict | None:
  """The paper's FID and bits/dim for a paper model name, else None."""
  dataset, _, model = name.partition("-")
  if model not in _PAPER_FID.get(dataset, {}):
    return None
  return {"fid": _PAPER_FID[dataset][model],
          "bits_per_dim": _PAPER_BPD[dataset][model],
          "data_bits": 3,
          "protocol": "FID: Inception-v3, 25,000 samples, s tuned on a train "
                      "subsample over linspace(0, 1.2, 15), T = 1; bits/dim: "
                      "3-bit test images at s = 1."}


def write_paper_entry(name: str, registry_dir: str) -> str:
  """An entry without a checkpoint for one of the paper's models."""
  config = configs.get_config(name)
  card = default_card(config)
  card["training"] = ("Not trained here (paper scale, accelerators needed). The "
                      "paper's protocol: " + card["training"])
  card["limitations"] = ("No weights ship: zoo.load refuses this name unless "
                         "init='random'. Train and register it with: "
                         + train_command(name))
  data = {
      "schema": registry_lib.SCHEMA_VERSION, "name": name, "config": name,
      "overrides": {}, "nifzoo_version": nifzoo.__version__,
      "wiring": _jsonable(models.wiring(config)), "checkpoint": None,
      "dataset": {"name": config.data.name,
                  "split": config.data.get("split", "standard"),
                  "image_shape": [int(v) for v in config.data.image_shape],
                  "num_levels": int(config.data.num_levels)},
      "metrics": {}, "paper": paper_figures(name), "training": None,
      "card": card,
  }
  return registry_lib.write_entry(registry_dir, data)


TABLE_BEGIN = "<!-- zoo-table: generated by launch/build_registry.py from the registry -->"
TABLE_END = "<!-- /zoo-table -->"


def markdown_table(pattern: str = "*", *, registry=None) -> str:
  """The shipped models (entries with a checkpoint) as a Markdown table."""
  rows = ["| name | model | parameters | steps | test bits/dim | trained in |",
          "|---|---|---|---|---|---|"]
  for e in registry_lib.all_entries(pattern, registry):
    if e.checkpoint is None:
      continue
    m = e.metrics.get("test_bits_per_dim")
    bpd = (f"{m['value']:.3f} ({m['num_images']} images x {m['num_draws']} draws)"
           if m else "—")
    t = (e.data["training"] or {}).get("wall_time_s")
    rows.append(f"| `{e.name}` | {e.data['card']['summary'].split(' on ')[0]} | "
                f"{e.checkpoint['num_params']:,} | {e.checkpoint['step']:,} | {bpd} | "
                f"{f'{t:.0f} s' if t is not None else '—'} |")
  return "\n".join(rows)


def update_readme_table(readme: str, *, registry=None) -> None:
  text = open(readme).read()
  if TABLE_BEGIN not in text or TABLE_END not in text:
    raise ValueError(f"{readme} has no {TABLE_BEGIN!r} ... {TABLE_END!r} block.")
  head, rest = text.split(TABLE_BEGIN, 1)
  _, tail = rest.split(TABLE_END, 1)
  with open(readme, "w") as f:
    f.write(f"{head}{TABLE_BEGIN}\n{markdown_table(registry=registry)}\n{TABLE_END}{tail}")
