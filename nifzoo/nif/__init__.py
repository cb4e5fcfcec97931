"""Dimension-changing (noisy injective) layers, ``docs/math.md`` §1–§4.

- :class:`GaussianNIF`: dense A (D, k), closed-form densities in O(Dk² + k³).
- :class:`UpsampleNIF`: nearest-neighbour upsampling A, every quantity O(D).
- :class:`StochasticCoupling` / :class:`VectorStochasticCoupling`: x₁ is a NIF
  conditioned on x₂.

The math is in pure functions of :mod:`nifzoo.nif.gaussian` over the operators of
:mod:`nifzoo.nif.linalg`.
"""

from nifzoo.nif.coupling import StochasticCoupling
from nifzoo.nif.coupling import VectorStochasticCoupling
from nifzoo.nif.gaussian import GaussianNIF
from nifzoo.nif.gaussian import LinearGaussianNIF
from nifzoo.nif.gaussian import standard_normal_log_prob
from nifzoo.nif.upsample import UpsampleNIF

__all__ = [
    "GaussianNIF",
    "LinearGaussianNIF",
    "StochasticCoupling",
    "UpsampleNIF",
    "VectorStochasticCoupling",
    "standard_normal_log_prob",
]
