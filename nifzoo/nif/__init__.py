"""Dimension-changing (noisy injective) layers, ``docs/math.md`` §1–§4.

- :class:`GaussianNIF`: dense A (D, k), closed-form densities in O(Dk² + k³).

The upsampling NIF and the stochastic couplings (§3, §4), which no paper model
uses, are in :mod:`nifzoo.experimental`.

The math is in pure functions of :mod:`nifzoo.nif.gaussian` over the operators of
:mod:`nifzoo.nif.linalg`.
"""

from nifzoo.nif.gaussian import GaussianNIF
from nifzoo.nif.gaussian import LinearGaussianNIF
from nifzoo.nif.gaussian import standard_normal_log_prob

__all__ = [
    "GaussianNIF",
    "LinearGaussianNIF",
    "standard_normal_log_prob",
]
