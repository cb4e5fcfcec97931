"""An evaluation job: the evaluations a config names, on one model.

Every evaluation is a module with one entry point of one signature::

  run(model, settings, context) -> {"results": ..., "metrics": {name: metric},
                                    "files": [...], "summary": "one line"}

``settings`` is the evaluation's ``config.evals.<name>`` (``nifzoo.evaluate.config``
states the defaults); ``context`` (:class:`Context`) carries what the job
shares: the model's name, the mesh, the output directory, the evaluation's
own key, the batch size, the registry, the command recorded with every
metric, the earlier evaluations' results, the classifier's features. Metrics
are built by ``nifzoo.evaluate.metrics.registry_metric``; ``files`` and
``summary`` may be absent.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax

from nifzoo import fileio
from nifzoo import mesh as mesh_lib
from nifzoo.evaluate import bpd
from nifzoo.evaluate import classifier
from nifzoo.evaluate import config as config_lib
from nifzoo.evaluate import fd
from nifzoo.evaluate import fid
from nifzoo.evaluate import figures
from nifzoo.evaluate import iw_bound
from nifzoo.evaluate import knob
from nifzoo.evaluate import probe
from nifzoo.evaluate import sweep

# name -> (module with `run`, the index folded into the job's key for it).
EVALUATORS = {
    "bpd": (bpd, bpd.KEY_INDEX), "iw_bound": (iw_bound, bpd.KEY_INDEX), "fd": (fd, 2),
    "s_sweep": (sweep, 3), "knob": (knob, 7), "fid": (fid, 4),
    "figures": (figures, 5), "embeddings": (probe, 6),
}


@dataclasses.dataclass
class Context:
  """What the evaluations of a job share (module docstring)."""
  name: str                 # The model's registry name (or config name).
  mesh: Any
  outdir: str
  key: Any                  # This evaluation's key: fold_in(key(seed), index).
  seed: int
  batch_size: int
  registry: Any
  command: str
  progress: bool
  classifier_dir: str | None
  data_config: Any
  results: dict = dataclasses.field(default_factory=dict)
  _features: list = dataclasses.field(default_factory=list, repr=False)

  def classifier_features(self):
    """The dataset classifier's feature function, loaded once per job (its
    info goes into the job's results as "classifier")."""
    if not self._features:
      fn, info = classifier.load_features(self.classifier_dir, self.data_config,
                                          self.mesh)
      self._features.append(fn)
      self.results["classifier"] = info
    return self._features[0]


def run(model, config=None, *, mesh=None) -> dict:
  """Runs the evaluations ``config.evals`` names on ``model``.

  Args:
    model: a registry name or training workdir (anything ``zoo.load`` takes,
      loaded with ``config.registry``), or a model ``zoo.load`` returned
      (with its ``config`` and ``entry``).
    config: the job (``nifzoo.evaluate.config``; missing fields and settings
      at their defaults). ``config.outdir`` is required.
    mesh: default ``nifzoo.mesh.make_mesh()`` (every device).

  Writes ``<outdir>/metrics.json`` and the evaluations' PNGs, and with
  ``config.write_metrics`` merges the metrics into the model's registry entry
  there. Returns ``{"model", "source", "evals", "results": {eval: ...},
  "metrics": {registry metrics}, "files": [...], "wall_time_s"}``.
  """
  from nifzoo import zoo  # pylint: disable=g-import-not-at-top
  config = config_lib.resolve(config)
  names = [n for n in config_lib.EVALS if n in config.evals]
  if not config.outdir:
    raise ValueError("The evaluation job needs config.outdir (where "
                     "metrics.json and the PNGs go).")
  if "fid" in names and not config.evals.fid.weights:
    raise ValueError("The fid evaluation needs its Inception weights: "
                     "config.evals.fid.weights (--inception_weights=<file.npz>; "
                     "see nifzoo/evaluate/inception.py for how to make it).")
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  source = model if isinstance(model, str) else None
  if source is not None:
    model = zoo.load(source, mesh=mesh, registry=config.registry)
  entry = getattr(model, "entry", None)
  name = entry.name if entry is not None else model.config.name
  if config.write_metrics and entry is None:
    raise ValueError(
        f"--write_metrics needs a registry entry, but {source or name} is a "
        "workdir: register it first (launch/train.py --register=<dir>, or "
        "registry.register) and evaluate it by name.")
  outdir = str(fileio.as_path(config.outdir))  # Local or gs://.
  fileio.as_path(outdir).mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  context = Context(
      name=name, mesh=mesh, outdir=outdir, key=None, seed=config.seed,
      batch_size=config.batch_size, registry=config.registry,
      command=config.command or f"python launch/evaluate.py --model={source or name}",
      progress=config.progress, classifier_dir=config.classifier_dir,
      data_config=model.config.data)
  log = functools.partial(_log, name, t0, config.progress)
  metrics, files = {}, []
  for eval_name in names:
    module, index = EVALUATORS[eval_name]
    out = module.run(model, config.evals[eval_name], dataclasses.replace(
        context, key=jax.random.fold_in(jax.random.key(config.seed), index)))
    context.results[eval_name] = out["results"]
    metrics.update(out["metrics"])
    files += out.get("files", [])
    if out.get("summary"):
      log(out["summary"])

  result = {"model": name, "source": source or name, "evals": names,
            "results": context.results, "metrics": metrics, "files": files,
            "wall_time_s": round(time.time() - t0, 1)}
  if jax.process_index() == 0:
    fileio.write_json(fileio.join(outdir, "metrics.json"), result,
                      default=jsonable)
  if config.write_metrics and metrics and jax.process_index() == 0:
    from nifzoo import registry as registry_lib  # pylint: disable=g-import-not-at-top
    path = registry_lib.update_metrics(name, metrics, config.write_metrics,
                                       registry=config.registry)
    log(f"metrics written into {path}")
  return result


def _log(name: str, t0: float, enabled: bool, msg: str) -> None:
  if enabled:
    print(f"[{name} {time.time() - t0:.0f}s] {msg}", flush=True)


def jsonable(v):
  """``json.dump``'s ``default`` for the results: numpy scalars and arrays as
  Python values, anything else as its string."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  if isinstance(v, np.ndarray):
    return v.tolist()
  return str(v)
