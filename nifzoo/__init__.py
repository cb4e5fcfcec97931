"""nifzoo: a Flax NNX model zoo for noisy injective flows.

Layout (data flows one way, nothing lower imports anything higher):
``flows`` (bijections) and ``nif`` (dimension-changing layers) -> ``models`` ->
``data`` -> ``train`` -> ``zoo``.
"""

__version__ = "0.1.0"

# nifzoo.configure(compilation_cache=..., compiled_methods=...): imports no jax
# until called (nifzoo.cache).
from nifzoo.cache import configure  # pylint: disable=g-import-not-at-top,wrong-import-position
