"""The terminal priors of an :class:`~nifzoo.models.ImageFlow`, one class each.

A prior is a density on the Glow's flattened latent v (B, D) with a latent
space of its own: the NF's N(0, I_D) (:class:`NormalPrior`), the closed-form
Gaussian NIF-k (:class:`NIFPrior`, docs/math.md §1–§2) and the deep NIF, a
Gaussian NIF whose latent has a low-dimensional flow prior scored with the
importance-weighted bound (:class:`DeepNIFPrior`, §4.2, paper App. B.4).

A prior object is static (a frozen dataclass of its config fields, hashable:
part of a compiled program's cache key). Its parameters live in the modules
:meth:`Prior.modules` builds, which the model holds as attributes under the
names given there; those names are the checkpoints' state paths (``nif``,
``lowdim``). Every method that computes takes the model ``m`` to reach them.

The ``check_*`` methods validate a public method's arguments once, eagerly;
the computing methods assume valid arguments. A new prior is one subclass
added to :data:`PRIORS`, with its config fields' defaults in
:func:`nifzoo.configs.base_config`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
from flax import nnx

from nifzoo import checks
from nifzoo import flows
from nifzoo import nif
from nifzoo.nif import gaussian

ENCODINGS = ("stochastic_inverse", "posterior")


class DeepNIFEncoding(NamedTuple):
  """What the deep NIF's ``encode`` returns (docs/math.md §4.2), a pytree.

  Attributes:
    mu: (B, k) the NIF latent, the stochastic inverse's mean μ(x) (§1.2):
      the paper's embedding, and what ``decode`` maps back to images.
    eps: (B, k) the low-dimensional flow's base latent, ``eps = f(μ(x))``
      (``lowdim.forward``): N(0, I) under the prior, the space where
      ``sample``'s temperature acts; ``lowdim.inverse(eps)`` gives ``mu`` back.
  """
  mu: jax.Array
  eps: jax.Array


def nif_latent(code):
  """The (B, k) latent ``decode`` takes, from what any model's ``encode`` returned:
  the array itself (NF, NIF-k), ``code.mu`` for a :class:`DeepNIFEncoding`."""
  return code.mu if isinstance(code, DeepNIFEncoding) else code


@dataclasses.dataclass(frozen=True)
class Prior:
  """The interface. Class attributes state what the prior can do.

  Attributes:
    name: the config's ``model.prior``.
    has_manifold: a NIF layer maps a k < D dimensional latent into the flow
      latent: ``noise_scale`` s sets its noise, densities need s > 0, and
      decoding at s = 0 lands on the k-dimensional manifold.
    exact_density: ``log_prob`` is exact (False: a stochastic bound that needs
      a key and a number of samples).
  """
  name: ClassVar[str]
  has_manifold: ClassVar[bool] = False
  exact_density: ClassVar[bool] = True

  def modules(self, dim: int, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
    """The parameterised modules, by the model attribute that holds each."""
    del dim, rngs
    return {}

  def latent_size(self, dim: int) -> int:
    """k, the size of the latents ``encode`` returns and ``decode`` takes."""
    return dim

  def model_name(self) -> str:
    """The model part of a registry name (``nf``, ``nif16``, ``deepnif16``)."""
    return "nf"

  def description(self) -> str:
    """What the model is, for its card."""
    return "normalizing flow (Glow, N(0, I) prior)"

  # ---------------------------------------------------------------- checks
  def check_log_prob(self, key, noise_scale, num_samples):
    """Validates ``log_prob``'s arguments; returns ``num_samples`` to use."""
    del key
    checks.check_noise_scale(noise_scale)  # Unused by the NF, still a number.
    return num_samples

  def check_encode(self, kind: str):
    checks.check_choice(kind, "kind", ENCODINGS)

  def check_decode(self, key, noise_scale, noise):
    """Validates the noise arguments of ``decode``/``sample``/``reconstruct``."""
    del key, noise_scale, noise  # The NF's decoder has no noise.

  # ---------------------------------------------------------------- math
  def initialize(self, m, v):
    """Data-dependent initialisation from flow latents v (B, D)."""
    del m, v

  def log_prob(self, m, v, key, noise_scale, num_samples):
    """log p(v), (B,)."""
    del m, key, noise_scale, num_samples
    return flows.standard_normal_log_prob(v)

  def encode(self, m, v, kind, noise_scale):
    """Flow latents v (B, D) -> latents (B, k)."""
    del m, kind, noise_scale
    return v

  def decode(self, m, z, key, noise_scale, noise):
    """Latents (B, k) -> flow latents (B, D)."""
    del m, key, noise_scale, noise
    return z

  def sample_latent(self, m, key, n: int, temperature):
    """n latents (n, k) at temperature T: T eps, eps ~ N(0, I_k)."""
    return temperature * jax.random.normal(key, (n, m.latent_dim))

  def sample(self, m, key, n: int, temperature, noise_scale, noise):
    """n flow latents (n, D) from the prior."""
    del noise_scale, noise
    return self.sample_latent(m, key, n, temperature)


@dataclasses.dataclass(frozen=True)
class NormalPrior(Prior):
  """The NF baseline: v ~ N(0, I_D); its latent is v itself."""
  name: ClassVar[str] = "normal"


@dataclasses.dataclass(frozen=True)
class NIFPrior(Prior):
  """NIF-k: v = A z + b + s ε, z ~ N(0, I_k), ε ~ N(0, Σ) (the held
  :class:`nifzoo.nif.GaussianNIF` ``m.nif``); closed-form densities (Eq. 13).

  Attributes:
    latent_dim: k.
    nif_bias: whether the NIF layer has the bias b (paper) or not (authors).
    sample_noise: default noise of ``decode``/``sample``, "learned"
      (s Σ^1/2 ε) or "isotropic" (s ε, the authors' sampler).
  """
  name: ClassVar[str] = "nif"
  has_manifold: ClassVar[bool] = True
  latent_dim: int
  nif_bias: bool
  sample_noise: str

  def __post_init__(self):
    gaussian.check_noise_kind(self.sample_noise)

  def modules(self, dim, rngs):
    return {"nif": nif.GaussianNIF(dim, self.latent_dim, use_bias=self.nif_bias,
                                   rngs=rngs)}

  def latent_size(self, dim):
    return int(self.latent_dim)

  def model_name(self):
    return f"nif{self.latent_dim}"

  def description(self):
    return f"noisy injective flow, Gaussian NIF prior with k = {self.latent_dim}"

  def check_log_prob(self, key, noise_scale, num_samples):
    gaussian.check_density_scale(noise_scale)
    return num_samples

  def check_decode(self, key, noise_scale, noise):
    s = checks.check_noise_scale(noise_scale)
    gaussian.check_decode_key(key, s)
    if noise is not None:
      gaussian.check_noise_kind(noise)

  def log_prob(self, m, v, key, noise_scale, num_samples):
    return gaussian.density_at(
        lambda s: gaussian.log_prob(*m.nif.terms(), v, s), noise_scale)

  def encode(self, m, v, kind, noise_scale):
    if kind == "posterior":
      return gaussian.posterior(*m.nif.terms(), v, noise_scale)[0]
    return gaussian.stochastic_inverse(*m.nif.terms(), v)[0]

  def decode(self, m, z, key, noise_scale, noise):
    return gaussian.decode(*m.nif.terms(), z, noise_scale, key,
                           noise or self.sample_noise)

  def sample(self, m, key, n, temperature, noise_scale, noise):
    z_key, x_key = jax.random.split(key)
    z = self.sample_latent(m, z_key, n, temperature)
    return self.decode(m, z, x_key, noise_scale, noise)


@dataclasses.dataclass(frozen=True)
class DeepNIFPrior(NIFPrior):
  """The deep NIF: NIF-k whose latent z has a flow prior (``m.lowdim``, a
  :class:`nifzoo.flows.LowDimFlow` on R^k) instead of N(0, I_k); ``log_prob``
  is the importance-weighted bound with the stochastic inverse as proposal.

  Attributes:
    lowdim_layers, lowdim_hidden, lowdim_depth: the low-dimensional flow
      (depth: hidden layers of each coupling's MLP).
    num_iw_samples: default N of the bound.
  """
  name: ClassVar[str] = "deepnif"
  exact_density: ClassVar[bool] = False
  lowdim_layers: int
  lowdim_hidden: int
  lowdim_depth: int
  num_iw_samples: int

  def modules(self, dim, rngs):
    return {**super().modules(dim, rngs),
            "lowdim": flows.LowDimFlow(self.latent_dim, self.lowdim_layers,
                                       self.lowdim_hidden, self.lowdim_depth,
                                       rngs=rngs)}

  def model_name(self):
    return f"deepnif{self.latent_dim}"

  def description(self):
    return (f"deep noisy injective flow (Gaussian NIF, k = {self.latent_dim}, "
            "+ low-dimensional flow, importance-weighted bound)")

  def check_log_prob(self, key, noise_scale, num_samples):
    super().check_log_prob(key, noise_scale, num_samples)
    if key is None:
      raise ValueError("The deep NIF's log_prob is an importance-weighted bound "
                       "and needs a `key`.")
    return checks.check_positive_int(
        self.num_iw_samples if num_samples is None else num_samples,
        "num_samples")

  def check_encode(self, kind):
    super().check_encode(kind)
    if kind != "stochastic_inverse":
      raise ValueError(
          f"kind={kind!r}: the deep NIF's prior is its low-dimensional flow, "
          "whose posterior has no closed form; use kind='stochastic_inverse' "
          "(returns mu(x) and the flow's base latent).")

  def initialize(self, m, v):
    m.lowdim.forward(gaussian.stochastic_inverse(*m.nif.terms(), v)[0])

  def log_prob(self, m, v, key, noise_scale, num_samples):
    return gaussian.density_at(
        lambda s: gaussian.iw_bound(*m.nif.terms(), v, key, num_samples, s,
                                    m.lowdim.log_prob), noise_scale)

  def encode(self, m, v, kind, noise_scale):
    mu = gaussian.stochastic_inverse(*m.nif.terms(), v)[0]
    return DeepNIFEncoding(mu, m.lowdim.forward(mu)[0])

  def sample_latent(self, m, key, n, temperature):
    return m.lowdim.sample(key, n, temperature=temperature)


PRIORS = {p.name: p for p in (NormalPrior, NIFPrior, DeepNIFPrior)}
# Every prior's config fields: `build` gives each prior its own, the rest of
# `config.model` to the image flow.
FIELDS = frozenset(f.name for p in PRIORS.values() for f in dataclasses.fields(p))


def from_config(model_config) -> Prior:
  """The prior ``model_config.prior`` names, with its fields from ``model_config``."""
  cls = PRIORS[checks.check_choice(model_config.prior, "prior", tuple(PRIORS))]
  return cls(**{f.name: model_config[f.name] for f in dataclasses.fields(cls)})
