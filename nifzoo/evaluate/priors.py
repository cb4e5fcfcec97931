"""What the evaluations ask of a model's prior, asked in this one place.

NF ("normal"): exact likelihood, no noise scale, embedding = flow latent v(x).
NIF-k ("nif"): exact likelihood (Eq. 13), noise scale s, embedding = μ(x).
Deep NIF ("deepnif"): the likelihood is an importance-weighted bound (its N a
setting), noise scale s, embedding = μ(x) of its NIF layer.
"""

from __future__ import annotations


def has_noise_scale(model) -> bool:
  """True for the NIFs (Σ -> s²Σ); the NF's samples and densities have no s."""
  return model.prior != "normal"


def likelihood_is_bound(model) -> bool:
  """True for the deep NIF, whose log-likelihood is the IW bound log p̂_N."""
  return model.prior == "deepnif"


def embedding_name(model, kind: str) -> str:
  """What ``model.encode(x, kind=kind)`` embeds an image as."""
  if not has_noise_scale(model):
    return "flow latent v(x)"
  return ("stochastic inverse mu(x)" if kind == "stochastic_inverse"
          else "posterior mean")
