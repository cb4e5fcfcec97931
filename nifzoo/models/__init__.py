"""Image models of the zoo, built from a config by :func:`build`."""

from nifzoo.models.image_flow import ENCODINGS, PRIORS, ImageFlow, build

__all__ = ["ENCODINGS", "PRIORS", "ImageFlow", "build"]
