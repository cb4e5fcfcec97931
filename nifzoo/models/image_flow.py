"""Whole image models: preprocess -> Glow -> flatten -> prior.

``ImageFlow`` is the NF baseline (prior N(0, I_D)), NIF-k (closed-form
``GaussianNIF`` prior, the paper's tables) or the deep NIF (``GaussianNIF``
followed by a low-dimensional flow, scored with the importance-weighted bound,
paper App. B.4): its ``prior`` object (:mod:`nifzoo.models.priors`), chosen
once at build. Every public method is batched, takes integer images
``(B, H, W, C)`` in ``[0, num_levels)`` and is jit-friendly. Inputs are
validated once, by the public method, as :mod:`nifzoo.checks` describes:
values only eagerly, or under jit through ``checks.checked``; using a model
whose ActNorms were never initialised warns (eagerly). Called eagerly, each
public method runs its checks and then its computation as one compiled program
(``_``-prefixed, :func:`nifzoo.compiled.method`); inside a user's
``jit``/``vmap``/``grad`` the same code traces through.

Densities are of the *discrete* data: ``log_prob`` includes the dequantisation
log-det ``-D log L`` and the logit log-det, so ``bits_per_dim`` is the usual
``-log p(x_int) / (D ln 2)`` (docs/math.md §5.3).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo import checks
from nifzoo import compiled
from nifzoo import configs
from nifzoo import flows
from nifzoo.models import priors
from nifzoo.models.priors import nif_latent

# ``matmul_precision`` values: "default" leaves jax's default matmul precision
# (the backend's, or the user's jax_default_matmul_precision) alone; the others
# are set with ``jax.default_matmul_precision`` around the model's computations.
MATMUL_PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32",
                     "float32")
# What decode/sample return: "levels" = integer images in [0, L) (floor of the
# flow's output), "continuous" = the flow's sigmoid output y in [0, 1] before
# flooring (float32; the authors scored FID on these).
OUTPUTS = ("levels", "continuous")


def check_output(output: str) -> str:
  return checks.check_choice(output, "output", OUTPUTS)


def _precision_context(precision: str):
  if precision == "default":
    return contextlib.nullcontext()
  return jax.default_matmul_precision(precision)


def _at_matmul_precision(method):
  """Runs an ``ImageFlow`` method with its ``matmul_precision`` (traced products
  without an explicit precision take it; the NIF prior's are HIGHEST anyway)."""

  @functools.wraps(method)
  def wrapped(self, *args, **kwargs):
    with _precision_context(self.matmul_precision):
      return method(self, *args, **kwargs)

  return wrapped


class ImageFlow(nnx.Module):
  """Glow with a terminal prior on its flattened latent (:mod:`.priors`).

  Build one from a config with :func:`build` (``config.model`` states every
  field's default); the constructor takes every field.

  Args:
    image_shape: (H, W, C) of the integer images.
    num_levels: number of grey levels L; inputs lie in [0, L).
    prior: a :class:`~nifzoo.models.priors.Prior`: the NF's N(0, I), NIF-k or
      the deep NIF. Its modules become attributes of the model (``nif``,
      ``lowdim``).
    num_scales, steps_per_scale, width, conv, coupling, squeeze: the Glow.
    logit_lambda: lambda of the logit transform.
    unroll: the Glow's step loops, as ``jax.lax.scan``'s ``unroll`` (False:
      rolled, compile time flat in depth; True: unrolled, a longer compile, a
      faster or slower step by config: ``bench/README.md``, "Unrolled
      stacks"). The same parameters and numbers either way.
    matmul_precision: precision of the products that do not set their own
      (the Glow's coupling networks and 1x1 convs, the deep NIF's low-dim
      flow), one of :data:`MATMUL_PRECISIONS`; "default" is the backend's
      (one bfloat16 pass on TPU). The NIF prior's products are always
      ``HIGHEST`` (docs/math.md §8).
  """

  def __init__(self, image_shape, num_levels: int, *, prior: priors.Prior,
               num_scales: int, steps_per_scale: int, width: int, conv: str,
               coupling: str, squeeze: str, logit_lambda: float,
               unroll: int | bool, matmul_precision: str, rngs: nnx.Rngs):
    # The layers validate their own arguments (shape, levels, enums).
    if not isinstance(prior, priors.Prior):
      raise TypeError(f"prior must be a nifzoo.models.priors.Prior, got {prior!r}.")
    self.prior = prior
    self.matmul_precision = checks.check_choice(
        matmul_precision, "matmul_precision", MATMUL_PRECISIONS)
    self.preprocess = flows.Preprocess(num_levels, logit_lambda)
    self.glow = flows.Glow(image_shape, num_scales, steps_per_scale, width,
                           conv=conv, coupling=coupling, squeeze=squeeze,
                           unroll=unroll, rngs=rngs)
    self.image_shape = self.glow.input_shape
    self.num_levels = self.preprocess.dequantize.num_levels
    self.dim = math.prod(self.image_shape)
    self.latent_dim = prior.latent_size(self.dim)
    for name, module in prior.modules(self.dim, rngs).items():
      setattr(self, name, module)

  # ------------------------------------------------------------------ checks
  def _check_images(self, x, name="x"):
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(
          f"{name} must be an integer image array with values in "
          f"[0, {self.num_levels}), got dtype {dtype}.")
    checks.check_shape(x, name, (None, *self.image_shape))
    checks.check_nonempty(x, name, "image")
    msg = (f"{name} values must lie in [0, {self.num_levels}) for this model "
           f"({self.num_levels} levels), got range [{{lo}}, {{hi}}].")
    if checks.is_concrete(x):  # Through numpy: jnp.min would be staged under a jit.
      values = np.asarray(x)
      lo, hi = int(values.min()), int(values.max())
      if lo < 0 or hi >= self.num_levels:
        raise ValueError(msg.format(lo=lo, hi=hi))
    elif checks.functionalized():
      lo, hi = jnp.min(x), jnp.max(x)
      checks.value_check((lo >= 0) & (hi < self.num_levels), msg, lo=lo, hi=hi)
    return x

  def _check_latent(self, z):
    z = checks.check_float(z, "z")
    z = checks.check_shape(z, "z", (None, self.latent_dim))
    return checks.check_finite(z, "z")

  def _warn_if_uninitialized(self, method: str):
    """Warns (eagerly; never while traced) when ActNorms are not data-initialised."""
    flags = flows.initialized_flags(self)
    if not all(checks.is_concrete(f) for f in flags):
      return
    if not all(bool(np.all(np.asarray(f))) for f in flags):
      warnings.warn(
          f"ImageFlow.{method}: the ActNorms are not initialised (identity "
          "scale and shift), so the result is not that of a trained model. "
          "Call model.initialize(batch) on a batch of data first, or load "
          "trained weights (nifzoo.zoo.load).", UserWarning, stacklevel=3)

  # ------------------------------------------------------------------ pieces
  @_at_matmul_precision
  def flow_latent(self, x, key=None):
    """Integer images (B,H,W,C) -> (flow latent v (B, D), log-det (B,)).

    The log-det includes dequantisation (-D log L), logit and Glow. With
    ``key=None`` the dequantisation noise is u = 1/2 (deterministic).
    """
    self._check_images(x)
    return self._flow_latent(x, key)

  @compiled.method()
  def _flow_latent(self, x, key):
    v, ld_pre = self.preprocess.forward(x, key)
    v, ld_glow = self.glow.forward(v)
    return v.reshape(v.shape[0], self.dim), ld_pre + ld_glow

  @_at_matmul_precision
  def flow_inverse(self, v, output: str = "levels"):
    """Flow latent (B, D) -> images (B, H, W, C).

    ``output="levels"``: integers in [0, L), floor(y L); ``"continuous"``: the
    dequantised value y = (sigmoid(v') - lam) / (1 - 2 lam) clipped to [0, 1],
    float32 (docs/math.md §5.2, inverted), so that floor(y L) is the level.
    """
    check_output(output)
    return self._flow_inverse(v, output)

  @compiled.method(static=("output",))
  def _flow_inverse(self, v, output):
    u = self.glow.inverse(v.reshape(v.shape[0], *self.image_shape))
    if output == "levels":
      return self.preprocess.inverse(u)
    return jnp.clip(self.preprocess.logit.inverse(u), 0.0, 1.0)

  @_at_matmul_precision
  def initialize(self, batch, key=None):
    """Data-dependent init of every ActNorm from one batch of integer images.

    ``key`` draws the dequantisation noise, so the statistics are those of the
    training inputs (None: u = 1/2). Idempotent: an ActNorm that is already
    initialised (e.g. restored from a checkpoint) keeps its parameters. A
    channel constant on the batch keeps scale 1 (``flows.ActNorm``). Under jit
    out-of-range images are not refused (they write NaN into the ActNorms):
    wrap the jitted function in ``checks.checked``.
    """
    self._check_images(batch, "batch")
    self._initialize(batch, key)

  @compiled.method(mutates=True)
  def _initialize(self, batch, key):
    with flows.data_init(self):
      v, _ = self._flow_latent(batch, key)
      self.prior.initialize(self, v)

  # ------------------------------------------------------------------ densities
  @_at_matmul_precision
  def log_prob(self, x, *, key=None, noise_scale=1.0, num_samples=None):
    """log p(x) in nats per example, (B,), of integer images x (B,H,W,C).

    NF: exact; NIF-k: exact closed form (Eq. 13) with Sigma -> s^2 Sigma (s > 0);
    deep NIF: the importance-weighted bound with ``num_samples`` samples
    (default: the model's training N), which needs ``key``. With ``key`` the
    dequantisation noise is random, otherwise it is 1/2.
    """
    self._check_images(x)
    num_samples = self.prior.check_log_prob(key, noise_scale, num_samples)
    self._warn_if_uninitialized("log_prob")
    return self._log_prob(x, key, noise_scale, num_samples)

  # noise_scale static when concrete: the NIF's densities convert a concrete s in
  # float64 (exact at tiny s, nif/gaussian.py _scale_terms).
  @compiled.method(static=("num_samples",), concrete=("noise_scale",))
  def _log_prob(self, x, key, noise_scale, num_samples):
    deq_key, prior_key = (None, None) if key is None else jax.random.split(key)
    v, log_det = self._flow_latent(x, deq_key)
    return self.prior.log_prob(self, v, prior_key, noise_scale,
                               num_samples) + log_det

  def bits_per_dim(self, x, **kwargs):
    """-log p(x) / (D ln 2), (B,); keyword arguments as in ``log_prob``."""
    return -self.log_prob(x, **kwargs) / (self.dim * math.log(2.0))

  # ------------------------------------------------------------------ latents
  @_at_matmul_precision
  def encode(self, x, *, kind: str = "stochastic_inverse", noise_scale=1.0):
    """Integer images -> latent means, (B, k) (NF: the (B, D) flow latent).

    ``kind="stochastic_inverse"`` is the paper's embedding mu(x) (independent
    of s); ``"posterior"`` the posterior mean under N(0, I) with Sigma -> s^2
    Sigma (the authors' code, s = 1).

    Deep NIF: a :class:`DeepNIFEncoding` ``(mu, eps)``, the NIF latent mu(x)
    (B, k) and the low-dim flow's base latent eps = f(mu(x)) (B, k);
    ``decode`` accepts it as it is (``nif_latent`` picks ``mu``). Only
    ``kind="stochastic_inverse"``: under the flow prior the posterior has no
    closed form.
    """
    self.prior.check_encode(kind)
    self._check_images(x)
    if kind == "posterior":
      checks.check_noise_scale(noise_scale)
    self._warn_if_uninitialized("encode")
    return self._encode(x, kind, noise_scale)

  # noise_scale static when concrete: the posterior's s-terms, as eagerly.
  @compiled.method(static=("kind",), concrete=("noise_scale",))
  def _encode(self, x, kind, noise_scale):
    v, _ = self._flow_latent(x, None)
    return self.prior.encode(self, v, kind, noise_scale)

  @_at_matmul_precision
  def decode(self, z, *, key=None, noise_scale=0.0, noise=None,
             output: str = "levels"):
    """Latents (B, k) -> images; s = 0 (or no key) lands on the manifold.

    ``z``: the NIF latent (B, k) (NF: the (B, D) flow latent), or what
    ``encode`` returned (a deep NIF's :class:`DeepNIFEncoding` decodes its
    ``mu``). ``noise``: "learned" or "isotropic" (default: the prior's
    ``sample_noise``). ``output``: "levels" (integers in [0, L)) or
    "continuous" (floats in [0, 1]). The NF has no noise: ``key``,
    ``noise_scale`` and ``noise`` are unused.
    """
    z = self._check_latent(nif_latent(z))
    self.prior.check_decode(key, noise_scale, noise)
    check_output(output)
    self._warn_if_uninitialized("decode")
    return self._decode(z, key, noise_scale, noise, output)

  @compiled.method(static=("noise", "output"))
  def _decode(self, z, key, noise_scale, noise, output):
    v = self.prior.decode(self, z, key, noise_scale, noise)
    return self._flow_inverse(v, output)

  @_at_matmul_precision
  def reconstruct(self, x, *, kind: str = "stochastic_inverse", key=None,
                  noise_scale=0.0, noise=None, output: str = "levels"):
    """decode(encode(x)): the projection of x onto the learned manifold at s = 0."""
    self.prior.check_encode(kind)
    self._check_images(x)
    self.prior.check_decode(key, noise_scale, noise)
    check_output(output)
    self._warn_if_uninitialized("reconstruct")
    return self._reconstruct(x, kind, key, noise_scale, noise, output)

  @compiled.method(static=("kind", "noise", "output"))
  def _reconstruct(self, x, kind, key, noise_scale, noise, output):
    z = nif_latent(self._encode(x, kind, 1.0))
    return self._decode(z, key, noise_scale, noise, output)

  @_at_matmul_precision
  def sample_latent(self, key, n: int, *, temperature=1.0):
    """n latents (n, k) from the prior at temperature T, what ``decode`` takes.

    NF and NIF-k: z = T eps (NF: k = D). Deep NIF: z = f^{-1}(T eps), the
    temperature scales the low-dim flow's base latent eps ~ N(0, I_k), as the
    authors' temperature figure did (docs/math.md §2, §4.2).
    """
    n = checks.check_positive_int(n, "n")
    checks.check_temperature(temperature)
    return self._sample_latent(key, n, temperature)

  @compiled.method(static=("n",))
  def _sample_latent(self, key, n, temperature):
    return self.prior.sample_latent(self, key, n, temperature)

  @_at_matmul_precision
  def sample(self, key, n: int, *, temperature=1.0, noise_scale=1.0,
             noise=None, output: str = "levels"):
    """n images (n, H, W, C): z = ``sample_latent`` (z ~ N(0, T^2 I) for NIF-k;
    deep NIF: T on the low-dim flow's base latent), x = A z + b + s noise.

    ``noise`` is "learned" (s Sigma^1/2 eps) or "isotropic" (s eps, the
    authors' sampler); default: the prior's ``sample_noise``. ``output``:
    "levels" (integers in [0, L)) or "continuous" (floats in [0, 1], the
    flow's output before flooring; FID scores these).
    """
    n = checks.check_positive_int(n, "n")
    checks.check_temperature(temperature)
    checks.check_noise_scale(noise_scale)
    # A key is always given: the decoder's key check cannot fail here.
    self.prior.check_decode(key, noise_scale, noise)
    check_output(output)
    self._warn_if_uninitialized("sample")
    return self._sample(key, n, temperature, noise_scale, noise, output)

  @compiled.method(static=("n", "noise", "output"))
  def _sample(self, key, n, temperature, noise_scale, noise, output):
    v = self.prior.sample(self, key, n, temperature, noise_scale, noise)
    return self._flow_inverse(v, output)

  def to_float_images(self, x):
    """Integer levels in [0, L) -> float32 bin centres (x + 1/2) / L in (0, 1).

    The same scale as the "continuous" output, whose floor(y L) is the level.
    """
    return (jnp.asarray(x, jnp.float32) + 0.5) / self.num_levels


def build(config, *, rngs: nnx.Rngs) -> ImageFlow:
  """The model for any zoo config (NF, NIF-k, deep NIF, any dataset).

  ``config.model`` holds the prior's name and fields (:func:`priors.from_config`)
  and :class:`ImageFlow`'s other arguments; the image shape and the number of
  grey levels come from ``config.data``.
  """
  flow_args = {k: v for k, v in config.model.items()
               if k != "prior" and k not in priors.FIELDS}
  return ImageFlow(tuple(config.data.image_shape), config.data.num_levels,
                   prior=priors.from_config(config.model), **flow_args,
                   rngs=rngs)


def seeded_rngs(seed: int) -> nnx.Rngs:
  """The initialisers' keys for ``build`` (training and ``zoo.load(init="random")``).

  "rbg" keys: threefry keys make XLA:CPU compile each eager draw.
  """
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


# Bumped whenever the code changes what a given config computes with given
# parameters (parameter shapes alone do not show it). A checkpoint records the
# revision it was trained with; nifzoo.zoo refuses to load it into another.
#   1: the first Glow (first half of the channels factored out, colnorm W^T).
#   2: the authors' wiring: second half factored out, colnorm x @ Wn with
#      1e-5, ActNorm eps 1e-5.
WIRING_REVISION = 2
# Config fields of `model` that only set defaults of methods, how the program is
# laid out (`unroll`) or how precisely the backend computes its products
# (`matmul_precision`), not the function the parameters define.
_NOT_WIRING = ("num_iw_samples", "sample_noise", "unroll", "matmul_precision")


def wiring(config) -> dict:
  """The config fields that change what the model computes, plus the code's
  ``WIRING_REVISION``: equal wirings mean a checkpoint of one is valid in the
  other. JSON-ready (lists, not tuples)."""
  out = {f"model.{k}": v for k, v in config.model.items() if k not in _NOT_WIRING}
  out["data.image_shape"] = [int(v) for v in config.data.image_shape]
  out["data.num_levels"] = int(config.data.num_levels)
  out["revision"] = WIRING_REVISION
  return out


def wiring_differences(saved: dict, config) -> list[str]:
  """``"field: checkpoint X, code Y"`` for every wiring field where a
  checkpoint's recorded ``wiring(...)`` and ``config``'s differ (empty:
  compatible).

  A ``model`` field the checkpoint does not record was added to the code
  after it was written; at its default (``configs.model_defaults()``) the
  model computes what it computed before the field existed, so only a
  non-default value is a difference.
  """
  now = json.loads(json.dumps(wiring(config)))
  saved = json.loads(json.dumps(saved))
  defaults = json.loads(json.dumps(configs.model_defaults().to_dict()))
  out = []
  for k in sorted(set(now) | set(saved)):
    field = k.removeprefix("model.")
    if k not in saved and field != k and field in defaults and (
        now[k] == defaults[field]):
      continue
    if now.get(k) != saved.get(k):
      out.append(f"{k}: checkpoint {saved.get(k)!r}, code {now.get(k)!r}")
  return out
