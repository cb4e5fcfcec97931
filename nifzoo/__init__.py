"""nifzoo: a Flax NNX model zoo for noisy injective flows.

Layout (nothing lower imports anything higher; README.md, "Layout"):
``flows`` (bijections) -> ``nif`` (the Gaussian NIF layer) -> ``models`` ->
``data`` -> ``variables`` -> ``registry`` -> ``zoo`` -> ``evaluate`` -> ``train``.
"""

__version__ = "0.1.0"

# nifzoo.configure(compilation_cache=..., compiled_methods=...): imports no jax
# until called (nifzoo.cache).
from nifzoo.cache import configure  # pylint: disable=g-import-not-at-top,wrong-import-position
