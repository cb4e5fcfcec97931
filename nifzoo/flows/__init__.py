"""Bijective layers: data -> latent ``forward(x) -> (z, log_det)``, ``inverse(z) -> x``.

``log_det = log|det dz/dx|`` per example, shape (B,). Images are NHWC, vectors (B, D).

Typical use::

    glow = flows.Glow((32, 32, 3), num_scales=4, steps_per_scale=16, width=256,
                      rngs=nnx.Rngs(0))
    with flows.data_init(glow):                       # every ActNorm, scanned ones too
      nnx.jit(lambda m, x: m.forward(x))(glow, batch)
    z, log_det = glow.forward(x)                      # z has x's shape
    x_back = glow.inverse(z)
"""

from nifzoo.flows._base import FlowConstant
from nifzoo.flows._base import standard_normal_log_prob
from nifzoo.flows.actnorm import ActNorm
from nifzoo.flows.actnorm import ActNormInitialized
from nifzoo.flows.actnorm import data_init
from nifzoo.flows.actnorm import actnorm_layers
from nifzoo.flows.actnorm import initialized_flags
from nifzoo.flows.actnorm import is_initialized
from nifzoo.flows.conv1x1 import InvConv1x1
from nifzoo.flows.coupling import AdditiveCoupling
from nifzoo.flows.coupling import AffineCoupling
from nifzoo.flows.layers import Conv3x3
from nifzoo.flows.coupling import ConvConditioner
from nifzoo.flows.layers import conv3x3
from nifzoo.flows.layers import Dense
from nifzoo.flows.layers import dense
from nifzoo.flows.coupling import MLPConditioner
from nifzoo.flows.coupling import VectorAffineCoupling
from nifzoo.flows.glow import Glow
from nifzoo.flows.glow import GlowStep
from nifzoo.flows.glow import glow_num_params
from nifzoo.flows.lowdim import LowDimFlow
from nifzoo.flows.lowdim import LowDimStep
from nifzoo.flows.permute import Reverse
from nifzoo.flows.preprocess import Dequantize
from nifzoo.flows.preprocess import Logit
from nifzoo.flows.preprocess import Preprocess
from nifzoo.flows.reshape import squeeze
from nifzoo.flows.reshape import unsqueeze
from nifzoo.flows.stack import ScannedStack

__all__ = [
    "ActNorm", "ActNormInitialized", "AdditiveCoupling", "AffineCoupling",
    "Conv3x3", "ConvConditioner", "Dense", "Dequantize", "FlowConstant", "Glow", "GlowStep",
    "InvConv1x1", "Logit", "LowDimFlow", "LowDimStep", "MLPConditioner",
    "Preprocess", "Reverse", "ScannedStack",
    "VectorAffineCoupling", "actnorm_layers", "conv3x3", "data_init", "dense",
    "glow_num_params", "initialized_flags", "is_initialized",
    "squeeze", "standard_normal_log_prob", "unsqueeze",
]
