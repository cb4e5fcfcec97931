"""Evaluation: plain functions of a model and a dataset, and jobs of them by config.

A job (``run(model, config)``, ``job.py``) runs the evaluations that
``config.evals`` names (``config.py``: the settings and their defaults), each a
module with one entry point ``run(model, settings, context)``:

``bpd``: bits/dim on a whole split, every image once (padded, masked batches).
``iw_bound``: the deep NIF's importance-weighted bound against N.
``knob``: each model's knobs (T for an NF; s, then T at s*, for a NIF) tuned
alike on train, test FD at the default and the tuned knobs, mean ± SE over
sample draws; the one
evaluation that writes the registry's FD metrics.
``fd``: FD of one draw of a model's samples to a split, on a feature network.
``sweep`` (``s_sweep``): the curves FD(s) and bits/dim(s), one draw each.
``fid``: Inception-v3 FID at s = T = 1 and at the knob's (s*, T*).
``figures``: temperature grids, s strips, samples, reconstructions,
interpolations, embedding maps. ``probe`` (``embeddings``): embeddings and a
linear probe.

Beside them: ``frechet`` (the Fréchet distance between Gaussians fitted to
feature sets), ``classifier`` (the small classifier whose features give an
offline FD), ``inception`` (Inception-v3 pool3 features, user weights),
``metrics`` (the one builder of registry metrics, and their names),
``stats`` (means ± SE, paired differences and the verdicts of their tests),
``tables`` (the paper's Tables 1 and 2 from measured metrics), ``programs``
(a module's computation compiled over the mesh), ``progress`` (the progress
line), ``claims`` (the digits results page's verdicts).
"""

from nifzoo.evaluate.bpd import bits_per_dim
from nifzoo.evaluate.bpd import eval_batches
from nifzoo.evaluate.config import get_config
from nifzoo.evaluate.job import run
