"""Registry metrics: the one builder, and the names the evaluations write.

A registry entry's ``metrics`` maps a name to ``{"value", "command", **protocol}``:
the measured number (rounded), the command that produced it, and the protocol
fields a reader needs to compare it (split, counts, noise scale, ...).
``nifzoo.evaluate.tables`` reads them back by these names.
"""

from __future__ import annotations

BPD = "test_bits_per_dim"
IW_BOUND = "test_iw_bound_bits_per_dim"
FD = "test_fd_{features}"              # at s*, with "s_star", counts
FD_S1 = "test_fd_{features}_s1"
FID = "test_fid_inception"
PROBE = "test_probe_accuracy"


def registry_metric(value, *, command: str, digits: int = 4, **protocol) -> dict:
  """``{"value": round(value, digits), "command": command, **protocol}``.

  Protocol fields that are None (not applicable, e.g. the IW sample count of
  an exact likelihood) are left out.
  """
  return {"value": round(float(value), digits), "command": command,
          **{k: v for k, v in protocol.items() if v is not None}}


def bits_per_dim_metric(result: dict | None, command: str) -> dict:
  """``{name: metric}`` of a ``bpd.bits_per_dim`` result (empty for None):
  ``<split>_bits_per_dim``, with ``_s<s>`` appended away from s = 1; ``se``:
  the standard error of the mean (images the units, ``stats.mean_se``)."""
  if not result:
    return {}
  name = f"{result['split']}_bits_per_dim"
  if result["noise_scale"] != 1.0:
    name += f"_s{result['noise_scale']:g}"
  se = result.get("se_bits_per_dim")
  return {name: registry_metric(
      result["bits_per_dim"], command=command, digits=5,
      se=None if se is None else round(float(se), 5),
      **{k: result.get(k) for k in ("split", "num_images", "num_draws",
                                    "noise_scale", "num_samples")})}


def knob_label(knobs: dict) -> str:
  """"s = 0.9, T = 1.1" / "T = 1.3" for settings {"noise_scale", "temperature"}."""
  sym = {"noise_scale": "s", "temperature": "T"}
  return ", ".join(f"{sym[k]} = {v:g}" for k, v in knobs.items())
