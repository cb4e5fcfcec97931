"""Evaluation: plain functions of a model and a dataset (one file per concern).

``bpd``: bits/dim on a whole split, every image once (padded, masked batches).
``frechet``: the Fréchet distance between Gaussians fitted to feature sets.
``fd``: FD of a model's continuous samples to a split, on a feature network.
``classifier``: the small classifier whose features give an offline FD.
``inception``: Inception-v3 pool3 features (TTUR-compatible FID), user weights.
``sweep``: FD(s) and bits/dim(s); s chosen on train, reported on test.
``figures``: temperature grids, s strips, samples, reconstructions,
interpolations, embedding maps. ``probe``: embeddings and a linear probe.
``tables``: the paper's Tables 1 and 2 from measured metrics.
"""

from nifzoo.evaluate.bpd import bits_per_dim
from nifzoo.evaluate.bpd import eval_batches
