"""Layers that no paper model, config or launcher uses: kept, tested, not the zoo.

- :class:`UpsampleNIF` (docs/math.md §3): a NIF whose A is nearest-neighbour
  upsampling, every quantity O(D).
- :class:`StochasticCoupling` / :class:`VectorStochasticCoupling` (§4): x₁ is
  a NIF conditioned on x₂.
- :class:`Permute`: a fixed random permutation of the features (the zoo's
  flows reverse them, :class:`nifzoo.flows.Reverse`).
- :class:`Squeeze`: space-to-depth as a bijection module (the Glow calls the
  functions :func:`nifzoo.flows.squeeze` / :func:`nifzoo.flows.unsqueeze`).

The paper's models are the Glow with a normal, NIF-k or deep-NIF prior
(:mod:`nifzoo.models`); these layers are the paper's other constructions,
measured in ``bench/nif_logprob.py``. Their API may change without notice.
"""

from nifzoo.experimental.permute import Permute
from nifzoo.experimental.squeeze import Squeeze
from nifzoo.experimental.stochastic_coupling import StochasticCoupling
from nifzoo.experimental.stochastic_coupling import VectorStochasticCoupling
from nifzoo.experimental.upsample_nif import UpsampleNIF

__all__ = ["Permute", "Squeeze", "StochasticCoupling", "UpsampleNIF",
           "VectorStochasticCoupling"]
