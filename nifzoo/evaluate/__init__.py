"""Evaluation: plain functions of a model and a dataset (one file per concern).

``bpd``: bits/dim on a whole split, every image once (padded, masked batches).
"""

from nifzoo.evaluate.bpd import bits_per_dim
from nifzoo.evaluate.bpd import eval_batches
