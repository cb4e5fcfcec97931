"""Image models of the zoo, built from a config by :func:`build`."""

from nifzoo.models.image_flow import ImageFlow, MATMUL_PRECISIONS, OUTPUTS, WIRING_REVISION, build, seeded_rngs, wiring, wiring_differences
from nifzoo.models.priors import ENCODINGS, PRIORS, DeepNIFEncoding, DeepNIFPrior, NIFPrior, NormalPrior, Prior, nif_latent

__all__ = ["ENCODINGS", "MATMUL_PRECISIONS", "OUTPUTS", "PRIORS", "WIRING_REVISION", "DeepNIFEncoding", "DeepNIFPrior", "ImageFlow", "NIFPrior", "NormalPrior", "Prior", "build", "nif_latent", "seeded_rngs", "wiring", "wiring_differences"]
