r"""The evaluation job's config: which evaluations run, with which settings.

  python launch/evaluate.py --model=digits-nif16 --outdir=runs/eval/digits-nif16 \
      --config=nifzoo/evaluate/config.py:bpd,knob \
      --config.evals.knob.num_samples=2000 --config.batch_size=128

``get_config(arg)``: ``arg`` names the evaluations, comma-separated (default
:data:`DEFAULT_EVALS`); each gets its settings at their defaults
(:data:`SETTINGS`, the one place they are stated), under ``config.evals.<name>``.
The job-wide fields (batch size, seed, output directory, ...) are documented
in :func:`get_config`. ``nifzoo.evaluate.run(model, config)`` runs a job; a
config given there need not be complete: :func:`resolve` fills in the defaults
and names any evaluation or setting it does not know.

The file lives in the package, as big_vision's configs do, because the library
(``nifzoo.evaluate.run``) needs the defaults after a plain ``pip install``.
"""

from __future__ import annotations

from ml_collections import config_dict

from nifzoo.evaluate import knob
from nifzoo.evaluate import sweep

# The evaluations in the order a job runs them (fid uses knob's s*).
EVALS = ("bpd", "iw_bound", "fd", "s_sweep", "knob", "fid", "figures",
         "embeddings")
DEFAULT_EVALS = "bpd,knob,figures,embeddings"

# Settings of each evaluation, at their defaults. None: a placeholder of the
# given type (a value to be set, or the evaluator's own choice).
SETTINGS = {
    # Test bits/dim at s = 1: dequantisation draws; deep NIF: N of the IW
    # bound (None: the training N).
    "bpd": {"num_draws": 4, "iw_samples": int},
    # Deep NIF: the test bound at each N, beside NIF-k's exact bits/dim.
    "iw_bound": {"num_draws": 4, "iw_samples": (1, 4, 16, 64, 256)},
    # Fréchet distance at s = 1 on the dataset classifier's features.
    "fd": {"num_samples": 1000},
    # FD(s) and bits/dim(s); s* chosen on tune_size train images (None: as
    # many as the test split has).
    "s_sweep": {"scales": sweep.DEFAULT_SCALES, "num_samples": 1000,
                "tune_size": int, "bpd_draws": 4},
    # FD at the default and the tuned knobs (T for the NF; s, then T, for a
    # NIF), mean ± SE over test_draws sample draws; the knobs tuned on
    # tune_size train images over grid, extended by step within [lower, upper]
    # (knob.py).
    "knob": {"num_samples": 1000, "tune_draws": 10, "test_draws": 20,
             "tune_size": int, "grid": knob.DEFAULT_GRID, "step": knob.STEP,
             "lower": knob.LOWER, "upper": knob.UPPER},
    # Inception-v3 FID; weights: a pytorch-fid .npz (see inception.py).
    "fid": {"num_samples": 1000, "weights": str},
    "figures": {},
    # Linear probe and a 2-D map: "umap" (PCA without umap-learn) or "pca".
    "embeddings": {"method": "umap"},
}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """The job config running the evaluations named in ``arg``.

  Fields: ``evals`` ({name: settings}); ``outdir`` (metrics.json and PNGs,
  local or gs://); ``batch_size`` (global); ``seed`` (fixes every random
  draw); ``registry`` (user registry directories for loading models);
  ``write_metrics`` (merge the metrics into the model's entry in this
  registry directory); ``classifier_dir`` (the FD's feature network; None:
  the registry's ``<dataset>-classifier``); ``command`` (recorded with every
  metric; empty: a launch/evaluate.py command line); ``progress``.
  """
  c = config_dict.ConfigDict()
  c.evals = config_dict.ConfigDict(
      {name: settings(name) for name in _names(arg or DEFAULT_EVALS)})
  c.outdir = config_dict.placeholder(str)
  c.batch_size = 256
  c.seed = 0
  c.registry = config_dict.placeholder(tuple)
  c.write_metrics = config_dict.placeholder(str)
  c.classifier_dir = config_dict.placeholder(str)
  c.command = ""
  c.progress = True
  return c


def settings(name: str, overrides=None) -> config_dict.ConfigDict:
  """The settings of evaluation ``name`` at their defaults, then ``overrides``
  (a mapping; None values leave the default)."""
  _names(name)
  overrides = dict(overrides.items()) if overrides is not None else {}
  c = config_dict.ConfigDict(
      {k: config_dict.placeholder(v) if isinstance(v, type) else v
       for k, v in SETTINGS[name].items()})
  unknown = sorted(set(overrides) - set(c))
  if unknown:
    raise ValueError(f"Unknown settings {unknown} of the {name!r} evaluation; "
                     f"it has {sorted(c) or 'none'}.")
  for k, v in overrides.items():
    if v is not None:
      c[k] = v
  return c


def resolve(config) -> config_dict.ConfigDict:
  """A complete job config from ``config`` (a ConfigDict or mapping): every
  field and setting it lacks at its default; a field or evaluation it names
  that does not exist is an error naming it."""
  given = dict(config.items()) if config is not None else {}
  evals = given.pop("evals", None)
  out = get_config()
  unknown = sorted(set(given) - set(out))
  if unknown:
    raise ValueError(f"Unknown evaluation job fields {unknown}; the job has "
                     f"{sorted(out)}.")
  if isinstance(given.get("registry"), str):
    given["registry"] = (given["registry"],)
  for k, v in given.items():
    out[k] = v
  if evals is not None:
    evals = dict(evals.items())
    if not _names(",".join(evals)):
      raise ValueError("config.evals names no evaluation; choose from "
                       f"{', '.join(EVALS)}.")
    out.evals = config_dict.ConfigDict(
        {name: settings(name, s) for name, s in evals.items()})
  return out


def _names(arg: str) -> list[str]:
  names = [n.strip() for n in arg.split(",") if n.strip()]
  unknown = sorted(set(names) - set(EVALS))
  if unknown:
    raise ValueError(f"Unknown evals {unknown}; choose from {', '.join(EVALS)}.")
  return names


# Shortcut flags (launch/evaluate.py, launch/results_digits.py): flag -> the
# settings ("<eval>.<setting>", of the evaluations the job runs) or job fields
# it sets.
SHORTCUTS = {
    "num_samples": ("fd.num_samples", "s_sweep.num_samples", "knob.num_samples",
                    "fid.num_samples"),
    "tune_size": ("s_sweep.tune_size", "knob.tune_size"),
    "scales": ("s_sweep.scales",),
    "bpd_draws": ("bpd.num_draws", "iw_bound.num_draws", "s_sweep.bpd_draws"),
    "iw_samples": ("bpd.iw_samples",),
    "iw_curve": ("iw_bound.iw_samples",),
    "inception_weights": ("fid.weights",),
    "embedding_method": ("embeddings.method",),
    "batch_size": ("batch_size",),
    "seed": ("seed",),
    "classifier": ("classifier_dir",),
    "registry": ("registry",),
    "write_metrics": ("write_metrics",),
}


def with_shortcuts(config, **values) -> config_dict.ConfigDict:
  """``config`` resolved, with each shortcut in ``values`` that is not None
  applied (:data:`SHORTCUTS`; settings only of the evaluations it runs)."""
  unknown = sorted(set(values) - set(SHORTCUTS))
  if unknown:
    raise ValueError(f"Unknown shortcuts {unknown}; choose from {sorted(SHORTCUTS)}.")
  config = resolve(config)
  for flag, value in values.items():
    if value is None:
      continue
    for target in SHORTCUTS[flag]:
      if "." not in target:
        config[target] = tuple(value) if isinstance(value, list) else value
      elif target.split(".")[0] in config.evals:
        name, setting = target.split(".")
        config.evals[name][setting] = value
  return config


def define_flags():
  """Defines the shortcut flags (absl, default None: the config's value);
  returns ``apply(config) -> config`` with the given ones applied."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  defined = {
      "num_samples": flags.DEFINE_integer(
          "num_samples", None, "Samples per FD (fd, s_sweep, fid)."),
      "tune_size": flags.DEFINE_integer(
          "tune_size", None, "Train images for tuning s (default: the test "
          "split's size)."),
      "scales": flags.DEFINE_list(
          "scales", None, "Noise scales of the sweep (default linspace(0, 1.2, 15))."),
      "bpd_draws": flags.DEFINE_integer(
          "bpd_draws", None, "Dequantisation draws per image (bpd, iw_bound, s_sweep)."),
      "iw_samples": flags.DEFINE_integer(
          "iw_samples", None, "Deep NIF: N of the bpd IW bound (default: the "
          "training N)."),
      "iw_curve": flags.DEFINE_list("iw_curve", None, "Deep NIF: the N of iw_bound."),
      "inception_weights": flags.DEFINE_string(
          "inception_weights", None, "Inception-v3 FID weights (.npz), for fid."),
      "embedding_method": flags.DEFINE_enum(
          "embedding_method", None, ["umap", "pca"],
          "2-D map of the embeddings (umap falls back to PCA without umap-learn)."),
      "batch_size": flags.DEFINE_integer("batch_size", None, "Global batch."),
      "seed": flags.DEFINE_integer("seed", None, "Fixes every random draw."),
      "classifier": flags.DEFINE_string(
          "classifier", None, "Classifier directory for FD (default: the "
          "registry's checkpoints/<dataset>-classifier)."),
      "registry": flags.DEFINE_list("registry", None, "User registry directories."),
      "write_metrics": flags.DEFINE_string(
          "write_metrics", None, "Merge the metrics into the model's entry in "
          "this user registry directory."),
  }
  convert = {"scales": lambda v: tuple(float(s) for s in v),
             "iw_curve": lambda v: tuple(int(n) for n in v)}

  def apply(config):
    return with_shortcuts(config, **{
        k: None if f.value is None else convert.get(k, lambda v: v)(f.value)
        for k, f in defined.items()})

  return apply
