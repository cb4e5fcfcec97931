"""Every model of the zoo by name: ``<dataset>-<model>`` -> ``ml_collections`` config.

The files in ``configs/`` are thin big_vision-style entry points
(``get_config(arg)``) over :func:`build_config`; registry names such as
``"celeba-nif128"`` resolve through :func:`get_config`. An ``arg`` is a model
name plus optional comma-separated overrides, e.g. ``"nif128"``,
``"nif64,tiny"``, ``"nf,bits=5"``, ``"nif16,steps=2,width=16"``.

Paper values (docs/math.md §5): 3-bit data, 16 steps per scale,
width 256, Adam lr 1e-4 with 10k warmup, batch 32, global-norm clip 5, the
authors' channel-major squeeze; scales CelebA 5, CIFAR-10 4, Fashion-MNIST 2.
"""

from __future__ import annotations

import difflib
import fnmatch
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
  return build_config(dataset, model + ("," + overrides if overrides else ""))


def _parse_value(text: str):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  return None if text.lower() == "none" else text


def build_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config for ``dataset`` and ``arg`` = ``"<model>[,override...]"``."""
  if dataset not in MODELS:
    raise _unknown("dataset", dataset, MODELS)
  info, models = data_config.DATASETS[dataset], MODELS[dataset]
  parts = [p.strip() for p in (arg or models[0]).split(",") if p.strip()]
  model = parts[0]
  if model not in models:
    raise _unknown(f"model for dataset {dataset!r}", model, models)
  kind, latent = _model_kind(model)

  c = ml_collections.ConfigDict()
  c.name = f"{dataset}-{model}"
  c.dataset = dataset

  # ---------------------------------------------------------------- data
  # 3-bit data for the paper datasets, 17 grey levels for digits; standard
  # splits ("paper": the authors' 60/20/20 re-split); CelebA preprocessing
  # "authors" (every other pixel + crop) or "center_crop".
  c.data = data_config.default_data_config(info.name)

  # ---------------------------------------------------------------- model
  m = c.model = ml_collections.ConfigDict()
  m.prior = kind                    # "normal" (NF) | "nif" | "deepnif".
  m.latent_dim = latent             # k (0 for the NF baseline).
  m.num_scales = info.num_scales
  m.steps_per_scale = 16
  m.width = 512 if kind == "deepnif" else 256  # Deep NIF: 512 channels (App. B.4).
  # Invertible 1x1 conv: "lu" is Glow's (the paper builds on Glow); the authors'
  # code used "colnorm" (column-normalised, orthogonal init). Same parameter count.
  m.conv = "lu"
  m.coupling = "affine"
  # The authors' squeeze ordering (channel-major); "glow" is the usual one.
  m.squeeze = "channel_major"
  m.logit_lambda = 0.05
  # Sampling noise: "learned" uses the learned Sigma (the math); the authors'
  # sampler added isotropic noise ("isotropic"), which made the paper's FIDs.
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
  # Their deep-NIF sampler used the learned Sigma (sample_noise "learned");
  # only their NIF-k sampler was isotropic.
  m.lowdim_layers = 10
  m.lowdim_hidden = 1024
  m.lowdim_depth = 3
  m.num_iw_samples = 16             # N in training (authors: 16).
  # Where the paper is silent, the authors' code: every ActNorm is initialised
  # from one batch (theirs: 1,000 images, and only the first ActNorm of each
  # scale, a bug; here every ActNorm, from one training batch); ActNorm's
  # scale is 1 / (std + 1e-5) (flows/actnorm.py, ACTNORM_EPS).

  # ---------------------------------------------------------------- training
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

  if dataset == "digits":
    # Sized to train in about a minute on 2 CPU cores. 1,497 training images
    # overfit quickly: width 64 or 2e-3 peaked at ~500 steps (test 2.13 bits/dim,
    # 2.26 after 3,000); width 32 at 1e-3 reaches 2.10 at 2,000.
    m.steps_per_scale = 4
    m.width = 32
    c.batch_size = 64
    c.total_steps = 2_000
    c.learning_rate = 1e-3
    c.warmup_steps = 200
    c.checkpoint_every = 500
    c.log_every = 100
    c.sample_every = 500
    c.eval_batches = 4
    c.eval_num_draws = 4
    if kind == "deepnif":
      # The deep NIF on digits: the same Glow as digits-nif<k> (not the
      # paper's 512 channels), and a low-dim flow sized for k = 8 or 16
      # (4 x [coupling with a 2-hidden-layer, 64-unit MLP -> ActNorm ->
      # reverse]), trained with the N = 16 bound as in the paper.
      m.lowdim_layers = 4
      m.lowdim_hidden = 64
      m.lowdim_depth = 2

  for p in parts[1:]:
    _apply_override(c, p)
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
  if part == "tiny":
    # Shrinks the model and the run for tests and smoke runs.
    m = c.model
    m.steps_per_scale = 2
    m.width = 8
    m.lowdim_layers = 2
    m.lowdim_hidden = 16
    m.lowdim_depth = 2
    m.num_iw_samples = 4
    c.batch_size = 8
    c.total_steps = 20
    c.warmup_steps = 5
    c.checkpoint_every = 10
    c.log_every = 5
    c.sample_every = 10
    c.num_sample_images = 16
    c.eval_batches = 2
    c.eval_num_draws = 1
    return
  key, eq, value = part.partition("=")
  if not eq or key not in _SHORTCUTS:
    raise ValueError(
        f"Unknown config override {part!r}; use 'tiny' or key=value with key in "
        f"{sorted(_SHORTCUTS)}.")
  section, field = _SHORTCUTS[key]
  target = c if section is None else c[section]
  target[field] = _parse_value(value)
