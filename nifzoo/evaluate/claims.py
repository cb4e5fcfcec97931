"""The paper's claims, tested on measured numbers, and their Markdown.

1. NIF-k matches the NF in bits/dim at s = 1: the paired difference on the
   same test images and dequantisation draws, ± its SE.
2. NIF samples at the tuned knobs (s, then T) have a better Fréchet distance
   than the NF's at *its* tuned knob (T): the difference of the means over the test
   sample draws, ± its SE (Welch); also at the default knob (s = T = 1).
3. The NIF embedding is more useful than the NF latent: the difference of
   the linear probes' test accuracies, ± the SE of two binomial proportions
   (every NIF's embedding, the deep NIFs' μ(x) too).

and each deep NIF ``<dataset>-deepnif<k>`` against ``<dataset>-nif<k>`` (paper
App. B.4): its bits/dim is an importance-weighted *bound* (an upper bound on
its true bits/dim), so "better" there is conclusive, "worse" is not.

Every verdict is ``stats.verdict`` ("better", "worse" or "inconclusive") of
the named test (``stats.TEST``), for the first model against the second.
Inputs, by model name: ``bpd`` (``bpd.bits_per_dim`` results with their
per-image ``values``), ``knob`` (``knob.tuned_fd`` results), ``probe``
(``probe.probe_model`` results).
"""

from __future__ import annotations

import math
import re

from nifzoo.evaluate import stats

_DEEP_NIF = re.compile(r"^(.*)-deepnif(\d+)$")


def bpd_comparison(a: dict, b: dict) -> dict:
  """a - b in bits/dim, paired on common images and draws."""
  return stats.compare(stats.paired_difference(a["values"], b["values"]))


def fd_comparison(a: dict, b: dict, which: str) -> dict:
  """a - b in FD at ``which`` ("tuned" or "default") knob, Welch over draws."""
  return stats.compare(stats.independent_difference(a[which]["fds"], b[which]["fds"]))


def probe_comparison(a: dict, b: dict) -> dict:
  """a - b in linear-probe test accuracy (higher is better), binomial SEs."""
  pa, pb, n, m = a["accuracy"], b["accuracy"], a["num_test"], b["num_test"]
  se = math.sqrt(pa * (1 - pa) / n + pb * (1 - pb) / m)
  return {"diff": pa - pb, "se": se, "df": None,
          "verdict": stats.verdict(pa - pb, se, lower_is_better=False)}


def claims(bpd: dict, knob: dict, probe: dict, *, nf: str) -> dict:
  """The three claims for every NIF-k against the NF ``nf``, and the deep
  NIFs against NIF-k of their k."""
  out = {"bpd": {}, "fd": {}, "fd_default": {}, "probe": {}, "deep_nif": {}}
  for name in bpd:
    if name == nf:
      continue
    if name in probe and nf in probe:  # Every embedding, the deep NIFs' too.
      out["probe"][name] = probe_comparison(probe[name], probe[nf])
    m = _DEEP_NIF.match(name)
    if m:
      ref = f"{m.group(1)}-nif{m.group(2)}"
      if ref in bpd:
        out["deep_nif"][name] = {
            "nif": ref, "bpd": bpd_comparison(bpd[name], bpd[ref]),
            "fd": fd_comparison(knob[name], knob[ref], "tuned"),
            "num_samples": bpd[name].get("num_samples")}
      continue
    out["bpd"][name] = bpd_comparison(bpd[name], bpd[nf])
    out["fd"][name] = fd_comparison(knob[name], knob[nf], "tuned")
    out["fd_default"][name] = fd_comparison(knob[name], knob[nf], "default")
  return out


def _d(c: dict, digits: int = 4) -> str:
  return f"{c['diff']:+.{digits}f} ± {c['se']:.{digits}f}: **{c['verdict']}**"


def markdown(verdict: dict, *, dataset: str, nf: str) -> str:
  """The claims section of a results page (and the deep NIF comparison)."""
  lines = [
      f"## The paper's claims on {dataset}", "",
      f"Each line: the difference (model − `{nf}`) ± its SE, and the verdict "
      f"of a {stats.TEST}; lower is better except for the probe.", "",
      "1. *NIF-k matches the NF in bits/dim at s = 1* (paired on the same test "
      "images and draws; \"inconclusive\" is a match within the noise):"]
  lines += [f"   - `{n}`: {_d(c)}" for n, c in verdict["bpd"].items()]
  lines.append("2. *NIF samples at the tuned s have a better Fréchet distance than "
               "the NF's* (each NIF at its tuned s and T, the NF at its own tuned "
               "T; in brackets both at s = T = 1):")
  lines += [f"   - `{n}`: {_d(c, 2)} (default knobs: "
            f"{_d(verdict['fd_default'][n], 2)})" for n, c in verdict["fd"].items()]
  lines.append("3. *The NIF embedding is more useful than the NF latent* "
               "(linear-probe accuracy, higher is better):")
  lines += [f"   - `{n}`: {c['diff']:+.3f} ± {c['se']:.3f}: **{c['verdict']}**"
            for n, c in verdict["probe"].items()]
  deep = verdict.get("deep_nif") or {}
  if deep:
    lines += ["", "The deep NIFs against NIF-k of the same k (bits/dim: the deep "
              "NIF's importance-weighted **bound**, an upper bound on its true "
              "bits/dim, minus NIF-k's exact value; FD at each model's tuned knobs):", ""]
    for n, v in deep.items():
      lines.append(f"   - `{n}` − `{v['nif']}`: bits/dim (bound, N = "
                   f"{v['num_samples']}) {_d(v['bpd'])}; FD {_d(v['fd'], 2)}")
  return "\n".join(lines)
