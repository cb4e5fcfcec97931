"""Every model of the zoo by name: ``<dataset>-<model>`` -> ``ml_collections`` config.

Each dataset's recipe is its big_vision-style config file,
``configs/<dataset>.py`` (``get_config(arg)``): the paper's recipe
(:func:`base_config`, every model field's default in :func:`model_defaults`),
what the dataset changes, then the arg's overrides (:func:`override`).
Registry names such as ``"celeba-nif128"`` resolve through :func:`get_config`.
An ``arg`` is a model name plus optional comma-separated overrides, presets
(:data:`PRESETS`) or ``key=value`` shortcuts, e.g. ``"nif128"``,
``"nif64,tiny"``, ``"nf,bits=5"``, ``"nif16,steps=2,width=16"``.

Paper values (docs/math.md §5): 3-bit data, 16 steps per scale,
width 256, Adam lr 1e-4 with 10k warmup, batch 32, global-norm clip 5, the
authors' channel-major squeeze; scales CelebA 5, CIFAR-10 4, Fashion-MNIST 2.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.resources
import importlib.util
import pathlib
import re

import ml_collections

# Imports only the light data config (no jax): config files stay cheap to load.
from nifzoo.data import config as data_config
from nifzoo.data.config import finalize  # noqa: F401  (configs.finalize(c))

# dataset short name -> its model names (the facts about the data are in
# nifzoo.data.config.DATASETS).
MODELS = {
    "fmnist": ("nf", "nif64", "nif128", "nif256", "nif512"),
    "cifar10": ("nf", "nif64", "nif128", "nif256", "nif512"),
    "celeba": ("nf", "nif64", "nif128", "nif256", "nif512", "deepnif128"),
    "digits": ("nf", "nif4", "nif8", "nif16", "nif32", "deepnif8", "deepnif16"),
}

_CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
_RECIPES = {}  # dataset -> its config file's module.

_MODEL_RE = re.compile(r"^(nf|nif(\d+)|deepnif(\d+))$")

# Overrides accepted as `key=value` in an arg, and the config field each sets.
_SHORTCUTS = {
    "bits": ("data", "bits"),
    "k": ("model", "latent_dim"),
    "steps": ("model", "steps_per_scale"),
    "width": ("model", "width"),
    "scales": ("model", "num_scales"),
    "conv": ("model", "conv"),
    "squeeze": ("model", "squeeze"),
    "noise": ("model", "sample_noise"),
    "unroll": ("model", "unroll"),
    "precision": ("model", "matmul_precision"),
    "batch": (None, "batch_size"),
    "total_steps": (None, "total_steps"),
    "lr": (None, "learning_rate"),
    "seed": (None, "seed"),
    "split": ("data", "split"),
    "data_dir": ("data", "data_dir"),
}


# Named sets of overrides. "tiny" shrinks any model and its run for tests and
# smoke runs.
PRESETS = {
    "tiny": {
        "model.steps_per_scale": 2, "model.width": 8, "model.lowdim_layers": 2,
        "model.lowdim_hidden": 16, "model.lowdim_depth": 2,
        "model.num_iw_samples": 4, "batch_size": 8, "total_steps": 20,
        "warmup_steps": 5, "checkpoint_every": 10, "log_every": 5,
        "sample_every": 10, "num_sample_images": 16, "eval_batches": 2,
        "eval_num_draws": 1,
    },
}


def names(pattern: str = "*") -> list[str]:
  """All registry names (``fmnist-nf`` ... ``digits-nif32``) matching a glob."""
  out = [f"{ds}-{m}" for ds, models in MODELS.items() for m in models]
  return [n for n in out if fnmatch.fnmatch(n, pattern)]


def _unknown(kind: str, name: str, choices) -> ValueError:
  close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return ValueError(
      f"Unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(choices))}.")


def get_config(name: str) -> ml_collections.ConfigDict:
  """Config for a registry name, e.g. ``"celeba-nif128"`` or ``"digits-nif16,tiny"``."""
  base, _, overrides = name.partition(",")
  dataset, _, model = base.partition("-")
  if dataset not in MODELS or model not in MODELS[dataset]:
    raise _unknown("model name", base, names())
  return recipe(dataset).get_config(model + ("," + overrides if overrides else ""))


def recipe(dataset: str):
  """The config file of ``dataset`` (``configs/<dataset>.py``) as a module.

  From the source tree, or from the installed package ``nifzoo._configs``.
  """
  if dataset not in _RECIPES:
    path = _CONFIG_DIR / f"{dataset}.py"
    if not path.exists():
      path = importlib.resources.files("nifzoo._configs") / f"{dataset}.py"
    _RECIPES[dataset] = _module_from_file(path, f"nifzoo._configs.{dataset}")
  return _RECIPES[dataset]


def _module_from_file(path, name: str):
  spec = importlib.util.spec_from_file_location(name, str(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(spec: str) -> ml_collections.ConfigDict:
  """A config from a registry name with overrides (``"celeba-nif128,width=512"``,
  :func:`get_config`) or a config file and its arg (``"configs/celeba.py:nif128"``)."""
  if ".py:" in spec or spec.endswith(".py"):
    path, _, arg = spec.partition(":")
    return _module_from_file(path, "_nifzoo_config_file").get_config(arg or None)
  return get_config(spec)


def set_field(c: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets the dotted field ``key`` (``"model.width"``) of ``c`` to ``value``."""
  *parents, leaf = key.split(".")
  for p in parents:
    c = c[p]
  c[leaf] = value


def parse_value(text: str):
  """A command-line value: int, float, bool, None, else the string."""
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  return None if text.lower() == "none" else text


def parse_arg(dataset: str, arg: str | None) -> tuple[str, list[str]]:
  """``"<model>[,override...]"`` -> (model, overrides); default model: the
  dataset's first."""
  if dataset not in MODELS:
    raise _unknown("dataset", dataset, MODELS)
  models = MODELS[dataset]
  model, *overrides = [p.strip() for p in (arg or models[0]).split(",")
                       if p.strip()]
  if model not in models:
    raise _unknown(f"model for dataset {dataset!r}", model, models)
  return model, overrides


def model_defaults() -> ml_collections.ConfigDict:
  """Every ``config.model`` field at its default, stated once.

  ``prior``, ``latent_dim`` and ``num_scales`` come from the model name and
  the dataset (:func:`base_config`). A field added later must default to what
  the code computed before it existed: a checkpoint that does not record it
  then loads at the default (``models.wiring_differences``).
  """
  m = ml_collections.ConfigDict()
  m.prior = ml_collections.config_dict.placeholder(str)  # "normal" | "nif" | "deepnif".
  m.latent_dim = ml_collections.config_dict.placeholder(int)  # k (0 for the NF).
  m.num_scales = ml_collections.config_dict.placeholder(int)
  m.steps_per_scale = 16
  m.width = 256
  # Invertible 1x1 conv: "lu" is Glow's (the paper builds on Glow); the authors'
  # code used "colnorm" (column-normalised, orthogonal init). Same parameter count.
  m.conv = "lu"
  m.coupling = "affine"
  # The authors' squeeze ordering (channel-major); "glow" is the usual one.
  m.squeeze = "channel_major"
  m.logit_lambda = 0.05
  # Sampling noise: "learned" uses the learned Sigma (the math); the authors'
  # sampler added isotropic noise ("isotropic"), which made the paper's FIDs.
  # Their deep-NIF sampler used the learned Sigma.
  m.sample_noise = "learned"
  # The paper's NIF has a bias b (x = Az + b + eps); the authors' code had none.
  m.nif_bias = True
  # The Glow's step loops (jax.lax.scan's unroll): False keeps one step body in a
  # loop (compile time flat in depth); True unrolls them: the same numbers, a
  # longer compile, a faster or slower step (bench/README.md, "Unrolled stacks").
  # A bool, so that --config.model.unroll=true parses.
  m.unroll = False
  # Precision of the Glow's (and the deep NIF's low-dimensional flow's) matrix
  # products: "default" is the backend's default, as in every JAX codebase
  # (float32 on CPU and GPU without TF32, ONE bfloat16 pass on TPU); "high" or
  # "highest" ask for 3 or 6 bfloat16 passes on TPU (float32 accuracy); the
  # paper's numbers were float32. The NIF prior's closed form is float32 on
  # every backend whatever this says (docs/math.md §8). Not part of
  # the wiring: the parameters define the same function at any precision.
  m.matmul_precision = "default"
  # Deep NIF low-dimensional flow (App. B.4) and its importance-weighted bound.
  # The paper says "4-layer, 1024-unit MLP"; the authors' code has 3 hidden
  # layers of 1024 plus the output layer: lowdim_depth counts hidden layers.
  m.lowdim_layers = 10
  m.lowdim_hidden = 1024
  m.lowdim_depth = 3
  m.num_iw_samples = 16             # N in training (authors: 16).
  # Where the paper is silent, the authors' code: every ActNorm is initialised
  # from one batch (theirs: 1,000 images, and only the first ActNorm of each
  # scale; here every ActNorm, from one training batch); ActNorm's scale is
  # 1 / (std + 1e-5) (flows/actnorm.py, ACTNORM_EPS).
  return m


def base_config(dataset: str, model: str) -> ml_collections.ConfigDict:
  """The paper's recipe for ``<dataset>-<model>``, before the dataset's file
  (``configs/<dataset>.py``) changes what its models need."""
  if dataset not in MODELS:
    raise _unknown("dataset", dataset, MODELS)
  info = data_config.DATASETS[dataset]
  kind, latent = _model_kind(model)

  c = ml_collections.ConfigDict()
  c.name = f"{dataset}-{model}"
  c.dataset = dataset

  # 3-bit data for the paper datasets, 17 grey levels for digits; standard
  # splits ("paper": the authors' 60/20/20 re-split); CelebA preprocessing
  # "authors" (every other pixel + crop) or "center_crop".
  c.data = data_config.default_data_config(info.name)

  m = c.model = model_defaults()
  m.prior = kind
  m.latent_dim = latent
  m.num_scales = info.num_scales
  if kind == "deepnif":
    m.width = 512  # The deep NIF's Glow: 512 channels (App. B.4).

  c.seed = 0
  c.batch_size = 32
  c.total_steps = 200_000
  c.learning_rate = 1e-4
  c.warmup_steps = 10_000
  c.grad_clip = 5.0
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.log_every = 100
  c.sample_every = 5_000
  c.num_sample_images = 64
  c.on_nonfinite = "skip"           # "skip" the step, or "stop" the run.
  # Skipped steps in a row that mean divergence: the run stops (non-zero exit).
  c.max_consecutive_skips = 10
  # The workdir's lease (train/lease.py): a lease whose heartbeat (every tenth
  # of this) is silent this long may be taken over by a new run; until then a
  # second trainer on the workdir refuses to start.
  c.lease_stale_secs = 600.0
  # TensorBoard logs in the workdir (the `tensorboard` extra; imports tensorflow);
  # False: the metrics go to <workdir>/metrics.jsonl and the console only.
  c.tensorboard = True
  # Start a fresh run from another workdir's variables (a converted NF from
  # launch/convert.py, or a trained run) instead of random init + ActNorm init.
  c.init_from = ml_collections.config_dict.placeholder(str)
  # Intermediate checkpoints: test bits/dim on the first eval_batches batches;
  # the last step: every test image once, eval_num_draws dequantisation draws.
  c.eval_batches = 10
  c.eval_num_draws = 1
  return c


def override(c: ml_collections.ConfigDict,
             overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies ``overrides`` (preset names of :data:`PRESETS`, or ``key=value``
  with a key of the shortcuts) in order, then :func:`finalize`. Returns ``c``."""
  for part in overrides:
    _apply_override(c, part)
  return data_config.finalize(c)


def _model_kind(model: str) -> tuple[str, int]:
  match = _MODEL_RE.match(model)
  if match is None:
    raise ValueError(f"Cannot parse model name {model!r}.")
  if model == "nf":
    return "normal", 0
  if match.group(2):
    return "nif", int(match.group(2))
  return "deepnif", int(match.group(3))


def _apply_override(c: ml_collections.ConfigDict, part: str):
  if part in PRESETS:
    for key, value in PRESETS[part].items():
      set_field(c, key, value)
    return
  key, eq, value = part.partition("=")
  if not eq or key not in _SHORTCUTS:
    raise ValueError(
        f"Unknown config override {part!r}; use a preset ({', '.join(PRESETS)}) "
        f"or key=value with key in {sorted(_SHORTCUTS)}.")
  section, field = _SHORTCUTS[key]
  target = c if section is None else c[section]
  target[field] = parse_value(value)
