"""The ``fid`` evaluation: Inception-v3 FID (TTUR-compatible) of a model's samples.

FD (``fd.frechet_distance``) on ``inception.feature_fn`` features of
``config.num_samples`` continuous samples against the test split, at s = 1
and, for a NIF when the job's ``knob`` ran first, at its tuned knobs (s*,
and T* at s*: the one tuning protocol, docs/math.md §9.5); the registry
metric is the last of these. The weights come from the user
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
  settings = [(1.0, 1.0)]  # (s, T)
  if model.prior.has_manifold and "knob" in context.results:
    star = context.results["knob"]["knobs_star"]
    settings.append((star["noise_scale"], star.get("temperature", 1.0)))
  out = {}
  for s, t in dict.fromkeys(settings):
    out[f"s={s:g},T={t:g}"] = fd_lib.frechet_distance(
        model, features, model.config.data, "test",
        num_samples=config.num_samples, key=context.key, noise_scale=s,
        temperature=t, batch_size=context.batch_size, mesh=context.mesh,
        features="inception", progress=context.progress)
  best = out[f"s={settings[-1][0]:g},T={settings[-1][1]:g}"]
  metric = metrics.registry_metric(
      best["fd"], command=context.command,
      **{k: best[k] for k in ("noise_scale", "temperature", "num_samples",
                              "num_reference")})
  return {"results": out, "metrics": {metrics.FID: metric},
          "summary": f"FID (Inception) {best['fd']:.3f} at "
                     f"s={best['noise_scale']:g}, T={best['temperature']:g}"}
