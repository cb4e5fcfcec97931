"""The paper's two tables for a list of models, from their measured metrics.

Table 1: Fréchet distance of samples at the tuned noise scale s* (chosen on a
train subsample), with s* and the FD at s = 1. Table 2: test bits/dim at s = 1.
The paper's own numbers stand beside ours where the model has them (paper
models: Inception FID, 25,000 samples, 3-bit data; docs/math.md §6).

Inputs are registry-style metric dicts (``{metric: {"value", ...}}``, named
as in ``nifzoo.evaluate.metrics``), so the tables can be made from registry
entries or straight from an evaluation job's output.
"""

from __future__ import annotations

from nifzoo import fileio
from nifzoo.evaluate import metrics as metrics_lib


def _value(metrics: dict, name: str):
  m = metrics.get(name)
  return None if m is None else m["value"]


def table_rows(models: dict, features: str = "classifier") -> list[dict]:
  """``models`` = {name: {"metrics": {...}, "paper": {...} | None}} -> rows."""
  rows = []
  for name, m in models.items():
    metrics, paper = m.get("metrics", {}), m.get("paper") or {}
    fd = metrics.get(metrics_lib.FD.format(features=features), {})
    rows.append({
        "name": name,
        "fd": fd.get("value"), "fd_se": fd.get("se"), "s_star": fd.get("s_star"),
        "temperature_star": fd.get("temperature_star"),
        "fd_s1": _value(metrics, metrics_lib.FD_S1.format(features=features)),
        "fd_s1_se": metrics.get(metrics_lib.FD_S1.format(features=features),
                                {}).get("se"),
        "fd_num_samples": fd.get("num_samples"),
        "fd_num_reference": fd.get("num_reference"),
        "bits_per_dim": _value(metrics, metrics_lib.BPD),
        "bits_per_dim_se": metrics.get(metrics_lib.BPD, {}).get("se"),
        "probe_accuracy": _value(metrics, metrics_lib.PROBE),
        "paper_fid": paper.get("fid"), "paper_bits_per_dim": paper.get("bits_per_dim"),
        "features": features,
    })
  return rows


def _fmt(v, spec: str, se=None) -> str:
  return "—" if v is None else format(v, spec) + (
      "" if se is None else " ± " + format(se, spec))


def _knobs(r: dict) -> str:
  """"s = 0.9, T = 1.1" / "T = 1.3" from a row's tuned knobs ("—": none)."""
  knobs = {k: r.get(key) for k, key in (("noise_scale", "s_star"),
                                        ("temperature", "temperature_star"))}
  return metrics_lib.knob_label({k: v for k, v in knobs.items()
                                 if v is not None}) or "—"


def markdown(rows: list[dict]) -> str:
  """Table 1 and Table 2 as Markdown (± the SE where the metric has one)."""
  feats = rows[0]["features"] if rows else "classifier"
  t1 = [f"**Table 1.** Fréchet distance ({feats} features; lower is better) at "
        "the knobs tuned on a train subsample (s and T for a NIF, T for an NF), "
        "and at s = T = 1.", "",
        "| model | FD at the tuned knobs | tuned knobs | FD at s = T = 1 | "
        "paper FID (Inception, s tuned) |",
        "|---|---|---|---|---|"]
  for r in rows:
    t1.append(f"| `{r['name']}` | {_fmt(r['fd'], '.2f', r.get('fd_se'))} | "
              f"{_knobs(r)} | {_fmt(r['fd_s1'], '.2f', r.get('fd_s1_se'))} | "
              f"{_fmt(r['paper_fid'], '.2f')} |")
  t2 = ["**Table 2.** Test bits/dim at s = 1 (lower is better).", "",
        "| model | bits/dim | paper bits/dim (3-bit data) | linear-probe accuracy |",
        "|---|---|---|---|"]
  for r in rows:
    t2.append(f"| `{r['name']}` | "
              f"{_fmt(r['bits_per_dim'], '.4f', r.get('bits_per_dim_se'))} | "
              f"{_fmt(r['paper_bits_per_dim'], '.3f')} | "
              f"{_fmt(r['probe_accuracy'], '.3f')} |")
  return "\n".join(t1) + "\n\n" + "\n".join(t2) + "\n"


def write(rows: list[dict], outdir: str, stem: str = "tables") -> tuple[str, str]:
  """Writes ``<stem>.md`` and ``<stem>.json`` into ``outdir``; returns the paths."""
  return (fileio.write_text(fileio.join(outdir, stem + ".md"), markdown(rows)),
          fileio.write_json(fileio.join(outdir, stem + ".json"), rows))
