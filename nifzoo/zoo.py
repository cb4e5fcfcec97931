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

import jax
import ml_collections
from flax import nnx
from flax import traverse_util

import nifzoo
from nifzoo import configs
from nifzoo import fileio
from nifzoo import models
from nifzoo import registry as registry_lib
from nifzoo.train import checkpoint as ckpt_lib
from nifzoo.train.checkpoint import CONFIG_FILE
from nifzoo.train.checkpoint import CheckpointError

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
  if d.get("hardware"):
    from nifzoo import tpu  # pylint: disable=g-import-not-at-top
    lines.append(f"  fits (TPU compile check, {d['hardware']['command']}):")
    lines += [f"    {x}" for x in tpu.hardware_lines(d["hardware"])]
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
  path = fileio.as_path(workdir) / CONFIG_FILE
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
  diff = models.wiring_differences(saved, config)
  if diff:
    raise ZooError(
        f"The checkpoint at {where} was trained with a different wiring than "
        f"this code builds ({'; '.join(diff)}). Loading it would compute "
        f"something else without any shape error; retrain it, or use the "
        f"nifzoo version that wrote it.")


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
  ckpt_lib.check_shapes(path, target)
  restored = ckpt_lib.restore_variables(path, ckpt_lib.abstract_like(target, target_sharding))
  return _finish(graphdef, restored, config, entry)


def _is_workdir(name_or_path: str) -> bool:
  s = os.fspath(name_or_path)
  return not fileio.is_local(s) or os.sep in s or os.path.isdir(s)


def _load_workdir(workdir, step, target_sharding):
  config = workdir_config(workdir)
  wiring_path = fileio.as_path(workdir) / ckpt_lib.WIRING_FILE
  if wiring_path.exists():
    check_wiring(json.loads(wiring_path.read_text()), config, str(wiring_path))
  path, partial, step = ckpt_lib.variables_source(workdir, step)
  graphdef, target = _abstract_model(config)
  ckpt_lib.check_shapes(path, target)
  restored = ckpt_lib.restore_variables(
      path, ckpt_lib.abstract_like(target, target_sharding), partial=partial)
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


def export(workdir: str, path: str, *, step: int | None = None) -> dict:
  """Training checkpoint (state + optimiser + iterator), or a workdir holding
  ``variables/`` (``launch/convert.py``) -> a registry checkpoint of the
  variables only, at ``path``. Returns ``{"sha256", "num_params",
  "step"}``."""
  config = workdir_config(workdir)
  src, partial, step = ckpt_lib.variables_source(workdir, step)
  _, target = _abstract_model(config)
  ckpt_lib.check_shapes(src, target)
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restored = ckpt_lib.restore_variables(
      src, ckpt_lib.abstract_like(target, cpu), partial=partial)
  num_params = ckpt_lib.save_variables(restored, path)
  return {"sha256": registry_lib.hash_directory(path), "num_params": num_params,
          "step": step}


# ------------------------------------------------------------------ register


def register(workdir: str, registry_dir: str, *, name: str | None = None,
             step: int | None = None, metrics: dict | None = None,
             command: str | None = None, training: dict | None = None,
             card: dict | None = None) -> str:
  """Writes an entry (and a variables-only checkpoint) for a finished run.

  The checkpoint goes to ``<registry_dir>/checkpoints/<name>/`` and the entry
  to ``<registry_dir>/entries/<name>.json``; ``name`` defaults to the run's
  ``config.name``. Returns the entry's path. With several processes, every
  process calls it (the export is an Orbax save, which is collective);
  process 0 writes the entry.
  """
  registry_dir = str(fileio.as_path(registry_dir))
  config = workdir_config(workdir)
  name = name or config.name
  base = base_name(config)
  ckpt_dir = fileio.join(registry_dir, registry_lib.CHECKPOINTS, name)
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
  if jax.process_index() == 0:
    return registry_lib.write_entry(registry_dir, data)
  return registry_lib.entry_path(registry_dir, name)


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


def base_name(config) -> str:
  """The registry config name a config derives from (``digits-nif16`` for a
  converted ``digits-nif16-from-nf``)."""
  m = config.model
  model = {"normal": "nf", "nif": f"nif{m.latent_dim}",
           "deepnif": f"deepnif{m.latent_dim}"}[m.prior]
  return f"{config.dataset}-{model}"


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
                   + f", seed {config.seed}"
                   + (f", starting from the variables of {config.init_from}"
                      if config.get("init_from") else "") + "."),
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


def write_paper_entry(name: str, registry_dir: str,
                      hardware: dict | None = None) -> str:
  """An entry without a checkpoint for one of the paper's models; ``hardware``:
  its record from bench/tpu_fit.py (``nifzoo.tpu.hardware_record``)."""
  config = configs.get_config(name)
  card = default_card(config)
  card["training"] = ("Not trained here (paper scale, accelerators needed). The "
                      "paper's protocol: " + card["training"])
  if hardware:
    from nifzoo import tpu  # pylint: disable=g-import-not-at-top
    card["training"] += (" Fits (TPU compile check, python bench/tpu_fit.py): "
                         + tpu.hardware_summary(hardware) + ".")
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
  if hardware:
    data["hardware"] = hardware
  return registry_lib.write_entry(registry_dir, data)


TABLE_BEGIN = "<!-- zoo-table: generated by launch/build_registry.py from the registry -->"
TABLE_END = "<!-- /zoo-table -->"


def markdown_table(pattern: str = "*", *, registry=None) -> str:
  """The shipped models (entries with a checkpoint) as a Markdown table."""
  rows = ["| name | model | parameters | steps | test bits/dim | trained in |",
          "|---|---|---|---|---|---|"]
  def order(e):  # digits-nf, digits-nif4, ..., digits-nif32, then derived names
    ds, _, model = e.name.partition("-")
    digits = "".join(ch for ch in model.split("-")[0] if ch.isdigit())
    return (ds, "-" in model, int(digits or 0), model)

  for e in sorted(registry_lib.all_entries(pattern, registry), key=order):
    if e.checkpoint is None:
      continue
    m = e.metrics.get("test_bits_per_dim")
    bpd = (f"{m['value']:.3f} ({m['num_images']} images x {m['num_draws']} draws)"
           if m else "—")
    training = e.data["training"] or {}
    t = training.get("wall_time_s")
    load = training.get("load_average_1min")
    rows.append(f"| `{e.name}` | {e.data['card']['summary'].split(' on ')[0]} | "
                f"{e.checkpoint['num_params']:,} | {e.checkpoint['step']:,} | {bpd} | "
                f"{f'{t:.0f} s' if t is not None else '—'}"
                f"{f' (load {load:g})' if load is not None else ''} |")
  return "\n".join(rows)


def update_readme_table(readme: str, *, registry=None) -> None:
  text = open(readme).read()
  if TABLE_BEGIN not in text or TABLE_END not in text:
    raise ValueError(f"{readme} has no {TABLE_BEGIN!r} ... {TABLE_END!r} block.")
  head, rest = text.split(TABLE_BEGIN, 1)
  _, tail = rest.split(TABLE_END, 1)
  with open(readme, "w") as f:
    f.write(f"{head}{TABLE_BEGIN}\n{markdown_table(registry=registry)}\n{TABLE_END}{tail}")
