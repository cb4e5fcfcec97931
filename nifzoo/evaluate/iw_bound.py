"""The deep NIF's importance-weighted bound against N, beside NIF-k's exact value.

The deep NIF's likelihood is a bound, log p̂_N (docs/math.md §1.7), whose
expectation is non-decreasing in N: bits/dim falls with N and flattens as it
nears -log p(x) / (D ln 2). ``iw_bound_curve`` measures it at several N with
one key (the same images and dequantisation draws at every N); the ``iw_bound``
evaluation (``run``) adds the exact bits/dim of the NIF-k with the same k
(``<dataset>-nif<k>``) on the same images and draws, when the registry ships it.
"""

from __future__ import annotations

from typing import Sequence

from nifzoo import checks
from nifzoo.evaluate import bpd as bpd_lib
from nifzoo.evaluate import metrics


def iw_bound_curve(model, data_config, split: str = "test", *,
                   num_samples: Sequence[int] = (1, 4, 16, 64, 256),
                   **kwargs) -> dict:
  """``bpd.bits_per_dim`` at each N in ``num_samples`` with the same ``key``.

  ``kwargs`` as in ``bpd.bits_per_dim``. Returns ``{"num_samples": [N...],
  "bits_per_dim": [...], "decrease": [bpd(N_i) - bpd(N_{i+1})...],
  "std_bits_per_dim", "se_bits_per_dim" (each per N), "num_images",
  "num_draws", "noise_scale", "split"}``.
  """
  if model.prior.exact_density:
    raise ValueError(f"iw_bound_curve needs a deep NIF (its likelihood is a "
                     f"bound); this model's prior is {model.prior.name!r}, whose "
                     "log-likelihood is exact: use bits_per_dim.")
  ns = [checks.check_positive_int(n, "num_samples") for n in num_samples]
  if not ns or ns != sorted(set(ns)):
    raise ValueError(f"num_samples must be increasing and non-empty, got {ns}.")
  runs = [bpd_lib.bits_per_dim(model, data_config, split, num_samples=n, **kwargs)
          for n in ns]
  bpd = [r["bits_per_dim"] for r in runs]
  return {"num_samples": ns, "bits_per_dim": bpd,
          "decrease": [a - b for a, b in zip(bpd, bpd[1:])],
          "std_bits_per_dim": [r["std_bits_per_dim"] for r in runs],
          "se_bits_per_dim": [r["se_bits_per_dim"] for r in runs],
          **{k: runs[0][k] for k in ("num_images", "num_draws", "noise_scale",
                                     "split")}}


def closed_form_reference(model, registry=None, **kwargs) -> dict | None:
  """The exact bits/dim of ``<dataset>-nif<k>`` (k = the deep NIF's), with
  ``kwargs`` as in ``bpd.bits_per_dim``; None when the registry lacks it."""
  from nifzoo import registry as registry_lib  # pylint: disable=g-import-not-at-top
  from nifzoo import zoo  # pylint: disable=g-import-not-at-top
  cfg = model.config
  ref_name = f"{cfg.dataset}-nif{cfg.model.latent_dim}"
  if ref_name not in registry_lib.names(registry=registry) or registry_lib.find(
      ref_name, registry).checkpoint is None:
    return None
  ref = zoo.load(ref_name, registry=registry, mesh=kwargs.get("mesh"))
  r = bpd_lib.bits_per_dim(ref, ref.config.data, "test", **kwargs)
  return {"model": ref_name, "bits_per_dim": round(r["bits_per_dim"], 5),
          "what": "exact NIF-k log-likelihood (Eq. 13), same images and "
                  "dequantisation draws"}


def run(model, config, context) -> dict:
  """The ``iw_bound`` evaluation: the test bound at each N of
  ``config.iw_samples`` with ``config.num_draws`` draws; the metric's value is
  the bound at the largest N."""
  common = dict(batch_size=context.batch_size, num_draws=config.num_draws,
                key=context.key, mesh=context.mesh)
  curve = iw_bound_curve(model, model.config.data, "test",
                         num_samples=[int(n) for n in config.iw_samples], **common)
  closed_form = closed_form_reference(model, context.registry, **common)
  bpd = curve["bits_per_dim"]
  metric = metrics.registry_metric(
      bpd[-1], command=context.command, digits=5,
      se=round(curve["se_bits_per_dim"][-1], 5), num_samples=curve["num_samples"],
      bits_per_dim_by_n=[round(b, 5) for b in bpd],
      decrease_by_n=[round(d, 5) for d in curve["decrease"]],
      closed_form=closed_form,
      **{k: curve[k] for k in ("split", "num_images", "num_draws", "noise_scale")})
  return {"results": metric, "metrics": {metrics.IW_BOUND: metric},
          "summary": "test IW bound, bits/dim by N: " + ", ".join(
              f"{n}: {b:.4f}" for n, b in zip(curve["num_samples"], bpd))
          + (f" (closed-form {closed_form['model']}: "
             f"{closed_form['bits_per_dim']:.4f})" if closed_form else "")}
