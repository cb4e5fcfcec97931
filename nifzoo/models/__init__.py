"""Image models of the zoo, built from a config by :func:`build`."""

from nifzoo.models.image_flow import ENCODINGS, PRIORS, WIRING_REVISION, DeepNIFEncoding, ImageFlow, build, nif_latent, seeded_rngs, wiring, wiring_differences

__all__ = ["ENCODINGS", "PRIORS", "WIRING_REVISION", "DeepNIFEncoding", "ImageFlow", "build", "nif_latent", "seeded_rngs", "wiring", "wiring_differences"]
