"""The ``fid`` evaluation: Inception-v3 FID (TTUR-compatible) of a model's samples.

FD (``fd.frechet_distance``) on ``inception.feature_fn`` features of
``config.num_samples`` continuous samples against the test split, at s = 1
and, for a NIF when the job's ``knob`` (else ``s_sweep``) ran first, at its
tuned s*; the registry metric is the last of these. The weights come from the user
(``config.weights``, see ``nifzoo/evaluate/inception.py``).
"""

from __future__ import annotations

from nifzoo.evaluate import fd as fd_lib
from nifzoo.evaluate import inception
from nifzoo.evaluate import metrics


def run(model, config, context) -> dict:
  """The ``fid`` evaluation (module docstring)."""
  features = inception.feature_fn(inception.load_inception(config.weights),
                                  context.mesh)
  scales = [1.0]
  if model.prior.has_manifold:
    if "knob" in context.results:
      scales.append(context.results["knob"]["knob_star"])
    elif "s_sweep" in context.results:
      scales.append(context.results["s_sweep"]["s_star"])
  out = {}
  for s in dict.fromkeys(scales):
    out[str(s)] = fd_lib.frechet_distance(
        model, features, model.config.data, "test",
        num_samples=config.num_samples, key=context.key, noise_scale=s,
        batch_size=context.batch_size, mesh=context.mesh, features="inception",
        progress=context.progress)
  best = out[str(scales[-1])]
  metric = metrics.registry_metric(
      best["fd"], command=context.command,
      **{k: best[k] for k in ("noise_scale", "num_samples", "num_reference")})
  return {"results": out, "metrics": {metrics.FID: metric},
          "summary": f"FID (Inception) {best['fd']:.3f} at "
                     f"s={best['noise_scale']:g}"}
