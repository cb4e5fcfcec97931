"""The model registry: one JSON entry per zoo name, in one or more directories.

A registry directory holds ``entries/<name>.json`` and, for entries that ship
weights, ``checkpoints/<name>/`` (a variables-only checkpoint,
:mod:`nifzoo.variables`). The package ships one (``registry/`` in the
source tree, installed as ``nifzoo._registry``); user directories given as an
argument or in ``$NIFZOO_REGISTRY`` (``os.pathsep``-separated; ``gs://``
directories too) overlay it: the first directory that has an entry for a name
wins. Every directory may be local or in a bucket (:mod:`nifzoo.fileio`).

An entry (JSON, 2-space indent, sorted keys, so diffs stay small)::

  name            "digits-nif16" (= the file's stem)
  config          "digits-nif16" or "digits-nif16,steps=2": rebuilds the config
                  through nifzoo.configs.get_config
  overrides       {"model.width": 16, ...}: dotted config fields set on top
  nifzoo_version  version of nifzoo that wrote the checkpoint
  wiring          the config fields that change what the model computes, and
                  the code's wiring revision (nifzoo.models.wiring)
  checkpoint      null, or {"uri", "step", "sha256", "num_params"}: uri relative
                  to the registry directory, file://..., or gs://...
  dataset         {"name", "split", "image_shape", "num_levels"}
  metrics         {metric: {"value", "command", ...details}}
  paper           null, or the paper's figures for this model
  training        null, or {"command", "steps", "wall_time_s", "hardware", ...}
  card            {"summary", "training", "intended_use", "limitations"}
  hardware        optional: where it fits, {"command", "how", "batch", "tpu":
                  {generation: {...}}} (bench/tpu_fit.py, nifzoo.tpu)

Entries are written here: :func:`register` (a finished run: its variables
exported into ``checkpoints/<name>/`` and its entry), :func:`write_paper_entry`
(one of the paper's models, without weights), :func:`update_metrics` (metrics
merged into an entry); what they say about the model comes from
:mod:`nifzoo.cards`.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import os
import posixpath
import re
from typing import Any, Sequence

import jax

import nifzoo
from nifzoo import cards
from nifzoo import configs
from nifzoo import fileio
from nifzoo import models
from nifzoo import variables as variables_lib

SCHEMA_VERSION = 1
ENV_VAR = "NIFZOO_REGISTRY"
ENTRIES = "entries"
CHECKPOINTS = "checkpoints"

_CARD_FIELDS = ("summary", "training", "intended_use", "limitations")
_CHECKPOINT_FIELDS = {"uri": str, "step": int, "sha256": str, "num_params": int}
_DATASET_FIELDS = {"name": str, "split": str, "image_shape": list,
                   "num_levels": int}
# field -> (type(s), required)
_FIELDS = {
    "schema": (int, True),
    "name": (str, True),
    "config": (str, True),
    "overrides": (dict, True),
    "nifzoo_version": (str, True),
    "wiring": (dict, True),
    "checkpoint": ((dict, type(None)), True),
    "dataset": (dict, True),
    "metrics": (dict, True),
    "paper": ((dict, type(None)), True),
    "training": ((dict, type(None)), True),
    "card": (dict, True),
    "hardware": ((dict, type(None)), False),
}


class RegistryError(ValueError):
  """An entry that does not follow the schema, or an unknown name."""


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
  """A parsed registry entry and the directory it was read from."""
  data: dict
  directory: str          # the registry directory holding entries/<name>.json

  name = property(lambda self: self.data["name"])
  checkpoint = property(lambda self: self.data["checkpoint"])
  metrics = property(lambda self: self.data["metrics"])
  paper = property(lambda self: self.data["paper"])

  @property
  def path(self) -> str:
    return entry_path(self.directory, self.name)

  def checkpoint_path(self) -> str | None:
    """The checkpoint's location (local path or gs:// URI), or None."""
    if self.checkpoint is None:
      return None
    uri = self.checkpoint["uri"]
    if uri.startswith("file://"):
      return uri[len("file://"):]
    if "://" in uri:
      return uri
    if fileio.is_local(self.directory):
      return os.path.normpath(os.path.join(self.directory, uri))
    return fileio.join(self.directory, posixpath.normpath(uri))

  # Hashable by identity of content, so a model carrying it can be nnx.split.
  def __hash__(self):
    return hash((self.name, json.dumps(self.data, sort_keys=True)))

  def __eq__(self, other):
    return isinstance(other, Entry) and other.data == self.data

  def __repr__(self):
    return f"Entry({self.name!r} from {self.directory})"


# ------------------------------------------------------------------ locations


def packaged_dir() -> str:
  """The registry shipped inside the package (works after a plain pip install)."""
  import importlib.resources  # pylint: disable=g-import-not-at-top
  return str(importlib.resources.files("nifzoo._registry"))


def search_path(registry: str | Sequence[str] | None = None) -> list[str]:
  """Registry directories in lookup order: argument, $NIFZOO_REGISTRY, packaged."""
  dirs: list[str] = []
  if registry:
    dirs += [registry] if isinstance(registry, (str, os.PathLike)) else list(registry)
  dirs += split_search_path(os.environ.get(ENV_VAR, ""))
  dirs.append(packaged_dir())
  return [str(fileio.as_path(d)) for d in dirs]


def split_search_path(value: str) -> list[str]:
  """``$NIFZOO_REGISTRY`` split at ``os.pathsep`` (":" on POSIX), keeping
  URLs whole: ``gs://b/reg:~/reg`` is ``["gs://b/reg", "~/reg"]``."""
  parts, out = value.split(os.pathsep), []
  while parts:
    part = parts.pop(0)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", part) and parts and (
        parts[0].startswith("//")):
      part += os.pathsep + parts.pop(0)  # "gs" + ":" + "//b/reg"
    if part:
      out.append(part)
  return out


def entry_path(directory: str, name: str) -> str:
  return fileio.join(directory, ENTRIES, f"{name}.json")


# ------------------------------------------------------------------ reading


def validate(data: Any, source: str) -> dict:
  """Checks an entry against the schema; RegistryError names the file and field."""
  def fail(field, msg):
    raise RegistryError(f"{source}: field {field!r} {msg}")

  if not isinstance(data, dict):
    raise RegistryError(f"{source}: an entry must be a JSON object, got "
                        f"{type(data).__name__}.")
  for field, (types, required) in _FIELDS.items():
    if field not in data:
      if required:
        fail(field, "is missing.")
      continue
    if not isinstance(data[field], types) or isinstance(data[field], bool) and (
        types is int):
      fail(field, f"must be {_type_names(types)}, got "
                  f"{type(data[field]).__name__}.")
  unknown = sorted(set(data) - set(_FIELDS))
  if unknown:
    fail(unknown[0], f"is not part of the schema (known: {sorted(_FIELDS)}).")
  if data["schema"] != SCHEMA_VERSION:
    fail("schema", f"is {data['schema']}; this nifzoo reads {SCHEMA_VERSION}.")
  stem = os.path.splitext(os.path.basename(source))[0]
  if source.endswith(".json") and data["name"] != stem:
    fail("name", f"is {data['name']!r} but the file is named {stem!r}.")
  _check_sub(data, "checkpoint", _CHECKPOINT_FIELDS, fail)
  _check_sub(data, "dataset", _DATASET_FIELDS, fail)
  for field in _CARD_FIELDS:
    if not isinstance(data["card"].get(field), str) or not data["card"][field]:
      fail(f"card.{field}", "must be a non-empty string.")
  for metric, m in data["metrics"].items():
    if not isinstance(m, dict) or not isinstance(m.get("value"), (int, float)):
      fail(f"metrics.{metric}", "must be an object with a numeric 'value'.")
    if not isinstance(m.get("command"), str) or not m["command"]:
      fail(f"metrics.{metric}.command",
           "must say the exact command that produced the value.")
  if data["training"] is not None and not isinstance(
      data["training"].get("command"), str):
    fail("training.command", "must be a string.")
  return data


def _check_sub(data, field, spec, fail):
  sub = data[field]
  if sub is None:
    return
  for key, typ in spec.items():
    if key not in sub:
      fail(f"{field}.{key}", "is missing.")
    if not isinstance(sub[key], typ) or isinstance(sub[key], bool):
      fail(f"{field}.{key}", f"must be {_type_names(typ)}, got "
                             f"{type(sub[key]).__name__}.")


def _type_names(types) -> str:
  types = types if isinstance(types, tuple) else (types,)
  names = {dict: "an object", list: "a list", str: "a string", int: "an integer",
           type(None): "null"}
  return " or ".join(names.get(t, t.__name__) for t in types)


def read_entry(path: str, directory: str | None = None) -> Entry:
  """Parses and validates one entry file."""
  try:
    data = fileio.read_json(path)
  except json.JSONDecodeError as e:
    raise RegistryError(f"{path}: not valid JSON ({e}).") from e
  directory = directory or str(fileio.as_path(path).parent.parent)
  return Entry(validate(data, str(path)), str(directory))


def names(pattern: str = "*", registry=None) -> list[str]:
  """Every entry name in the search path matching a glob, sorted."""
  out = set()
  for d in search_path(registry):
    edir = fileio.as_path(d) / ENTRIES
    if edir.is_dir():
      out.update(p.name[:-5] for p in edir.iterdir() if p.name.endswith(".json"))
  return sorted(n for n in out if fnmatch.fnmatch(n, pattern))


def find(name: str, registry=None) -> Entry:
  """The entry for ``name`` from the first registry directory that has it."""
  for d in search_path(registry):
    path = entry_path(d, name)
    if fileio.as_path(path).exists():
      return read_entry(path, d)
  known = names(registry=registry)
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  raise RegistryError(
      f"Unknown model name {name!r}.{hint} Known: {', '.join(known)} "
      f"(registries searched: {', '.join(search_path(registry))}).")


def all_entries(pattern: str = "*", registry=None) -> list[Entry]:
  return [find(n, registry) for n in names(pattern, registry)]


# ------------------------------------------------------------------ writing


def register(workdir: str, registry_dir: str, *, name: str | None = None,
             step: int | None = None, metrics: dict | None = None,
             command: str | None = None, training: dict | None = None,
             card: dict | None = None) -> str:
  """Writes an entry (and a variables-only checkpoint) for a finished run.

  The checkpoint goes to ``<registry_dir>/checkpoints/<name>/``
  (:func:`nifzoo.variables.export` of the workdir's newest step, or ``step``)
  and the entry to ``<registry_dir>/entries/<name>.json``; ``name`` defaults
  to the run's ``config.name``. Returns the entry's path. With several
  processes, every process calls it (the export is an Orbax save, which is
  collective); process 0 writes the entry.
  """
  registry_dir = str(fileio.as_path(registry_dir))
  config = variables_lib.workdir_config(workdir)
  name = name or config.name
  exported = variables_lib.export(
      workdir, fileio.join(registry_dir, CHECKPOINTS, name), step=step)
  data = _new_entry(
      name, config, cards.base_name(config),
      checkpoint={"uri": f"{CHECKPOINTS}/{name}", **exported},
      metrics=metrics or {},
      training=training or ({"command": command} if command else None),
      card=card or cards.default_card(config, exported["step"]))
  if jax.process_index() == 0:
    return write_entry(registry_dir, data)
  return entry_path(registry_dir, name)


def write_paper_entry(name: str, registry_dir: str,
                      hardware: dict | None = None) -> str:
  """An entry without a checkpoint for one of the paper's models; ``hardware``:
  its record from bench/tpu_fit.py (``cards.hardware_record``)."""
  config = configs.get_config(name)
  data = _new_entry(name, config, name, checkpoint=None, metrics={},
                    training=None, card=cards.paper_card(name, config, hardware))
  if hardware:
    data["hardware"] = hardware
  return write_entry(registry_dir, data)


def _new_entry(name: str, config, base: str, **fields) -> dict:
  """An entry for ``config``'s model, named ``name``, rebuilt from the
  registry config ``base`` and the overrides; ``fields``: the rest."""
  return {"schema": SCHEMA_VERSION, "name": name, "config": base,
          "overrides": cards.config_overrides(config, base),
          "nifzoo_version": nifzoo.__version__,
          "wiring": cards.jsonable(models.wiring(config)),
          "dataset": cards.dataset(config), "paper": cards.paper_figures(base),
          **fields}


def write_entry(directory: str, data: dict) -> str:
  """Validates and writes ``data`` as ``<directory>/entries/<name>.json``
  (atomically: a reader sees the old entry or the new one)."""
  path = entry_path(directory, data["name"])
  validate(data, path)
  return fileio.write_json(path, data, indent=2, sort_keys=True)


def update_metrics(name: str, metrics: dict, directory: str, *,
                   registry=None) -> str:
  """Merges ``metrics`` ({metric: {"value", "command", ...}}) into the entry
  ``name`` of the user registry ``directory`` (copying it there from the
  search path first if it lives elsewhere, e.g. in the packaged registry —
  the copy keeps pointing at the original checkpoint)."""
  directory = str(fileio.as_path(directory))
  path = entry_path(directory, name)
  if fileio.as_path(path).exists():
    data = dict(read_entry(path, directory).data)
  else:
    entry = find(name, registry)
    data = dict(entry.data)
    if data["checkpoint"] is not None and "://" not in data["checkpoint"]["uri"]:
      where = entry.checkpoint_path()
      data["checkpoint"] = dict(data["checkpoint"], uri=(
          "file://" + where if fileio.is_local(where) else where))
  data["metrics"] = {**data["metrics"], **metrics}
  return write_entry(directory, data)
