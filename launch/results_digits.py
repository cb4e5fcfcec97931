r"""The digits version of the paper's results, from the shipped checkpoints.

  python launch/results_digits.py      # ~15 min on 2 CPU cores

Evaluates digits-nf, digits-nif{4,8,16,32} and the shipped deep NIFs
(digits-deepnif{8,16}, compared with NIF-k of the same k) with launch/evaluate.py's
``evaluate`` (bits/dim at s = 1, the noise-scale sweep on the digits
classifier's features, linear probes), draws the NF-vs-NIF figures, and writes
docs/results-digits.md, docs/results-digits.json and docs/figures/digits-*.png.
Every number in the page comes from this one run. Flags of launch/evaluate.py
(--num_samples, --bpd_draws, --seed, --registry, --write_metrics, ...) apply.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = "nifzoo_launch_evaluate"  # launch/evaluate.py, imported once (its flags).


def _evaluate_launcher():
  if LAUNCHER not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        LAUNCHER, os.path.join(ROOT, "launch", "evaluate.py"))
    sys.modules[LAUNCHER] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[LAUNCHER])
  return sys.modules[LAUNCHER]


evaluate_launcher = _evaluate_launcher()

NF = "digits-nf"
NIFS = ("digits-nif4", "digits-nif8", "digits-nif16", "digits-nif32")
# Evaluated too (bits/dim from the IW bound at its training N) when the
# registry ships them and --models is not given.
DEEP_NIFS = ("digits-deepnif8", "digits-deepnif16")

_DOCS = flags.DEFINE_string("docs", os.path.join(ROOT, "docs"),
                            "Where results-digits.md and figures/ go.")
_WORKDIR = flags.DEFINE_string("workdir", os.path.join(ROOT, "runs", "results-digits"),
                               "Per-model evaluation outputs (metrics.json, PNGs).")
_FIGURE_NIF = flags.DEFINE_string("figure_nif", "digits-nif16",
                                  "The NIF shown beside the NF in the figures.")
_MODELS = flags.DEFINE_list("models", [NF, *NIFS], "Models to evaluate (NF first).")

FLAGS = flags.FLAGS
BPD_TOLERANCE = 0.02  # Claim 1: NIF within 2 % of the NF's bits/dim.
REPEATS = 5  # Independent sample draws for the FD's spread.


def make_figures(models: dict, figdir: str, nif_name: str, seed: int) -> dict:
  """The NF-vs-NIF figures; returns {figure: relative path}."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import classifier, figures  # pylint: disable=g-import-not-at-top
  nf, nif = models[NF], models[nif_name]
  data = nf.config.data
  key = jax.random.key(seed)
  out = {}
  temps = (0.5, 0.75, 1.0, 1.25, 1.5)
  grids = {"NF": figures.temperature_grid(nf, temps, key=key),
           f"{nif_name} (s = 0)": figures.temperature_grid(nif, temps, key=key)}
  for name in DEEP_NIFS:  # T scales the low-dim flow's base (docs/math.md §4.2).
    if name in models:
      grids[f"{name} (T on the flow's base, s = 0)"] = figures.temperature_grid(
          models[name], temps, key=key)
  out["temperature"] = figures.save_labelled_grids(
      grids,
      os.path.join(figdir, "digits-temperature.png"),
      row_labels=[f"T={t:g}" for t in temps],
      title="Samples at temperature T (same base draws in each row)")
  scales = tuple(float(s) for s in np.linspace(0, 1.2, 7))
  strip = figures.noise_strip(nif, scales, n=6, key=key)
  out["s_strip"] = figures.save_labelled_grids(
      {f"{nif_name}: one latent per row, s = " + ", ".join(f"{s:g}" for s in scales):
       strip}, os.path.join(figdir, "digits-s-strip.png"))
  s_nf = figures.samples_at(nf, (1.0,), n=36, key=key)[1.0]
  s_nif = figures.samples_at(nif, (0.0, 1.0), n=36, key=key)
  out["samples"] = figures.save_labelled_grids(
      {"NF": s_nf.reshape(6, 6, *s_nf.shape[1:]),
       f"{nif_name}, s = 0": s_nif[0.0].reshape(6, 6, *s_nf.shape[1:]),
       f"{nif_name}, s = 1": s_nif[1.0].reshape(6, 6, *s_nf.shape[1:])},
      os.path.join(figdir, "digits-samples.png"), title="Samples (T = 1)")
  x, _ = classifier.load_split(data, "test", max_images=16)
  rec_nf, rec_nif = figures.reconstructions(nf, x[:8]), figures.reconstructions(nif, x[:8])
  out["reconstructions"] = figures.save_labelled_grids(
      {f"test images / {nif_name} decode(encode(x)) at s = 0": rec_nif,
       "test images / NF inverse(forward(x))": rec_nf},
      os.path.join(figdir, "digits-reconstructions.png"))
  out["interpolations"] = figures.save_labelled_grids(
      {"NF (flow latent)": figures.interpolations(nf, x[:4], x[8:12], steps=8),
       f"{nif_name} (stochastic inverse, s = 0)":
           figures.interpolations(nif, x[:4], x[8:12], steps=8)},
      os.path.join(figdir, "digits-interpolations.png"),
      title="Latent interpolations, every step decoded")
  return out


def claims(rows: dict, spread: dict | None = None,
           iw_bounds: dict | None = None) -> dict:
  """The paper's three claims, checked on the measured numbers.

  With ``spread`` ({name: {"s_star"/"s1": {"mean", "std"}}}, FDs over several
  sample draws), claim 2 compares the means and says whether the gap exceeds
  twice the larger standard deviation.
  """
  nf = rows[NF]
  out = {"bpd": {}, "fd": {}, "probe": {}}
  for name, r in rows.items():
    if name == NF or name.startswith("digits-deepnif"):
      continue  # The deep NIFs are compared with NIF-k (deep_nif_claims).
    rel = (r["bits_per_dim"] - nf["bits_per_dim"]) / nf["bits_per_dim"]
    out["bpd"][name] = {"nif": r["bits_per_dim"], "nf": nf["bits_per_dim"],
                        "relative_difference": rel,
                        "within_2_percent": abs(rel) <= BPD_TOLERANCE}
    out["fd"][name] = {"nif_at_s_star": r["fd"], "s_star": r["s_star"],
                       "nif_at_s1": r["fd_s1"], "nf": nf["fd"],
                       "nif_better": r["fd"] < nf["fd"]}
    if spread:
      a, b = spread[name]["s_star"], spread[NF]["s_star"]
      out["fd"][name].update(
          nif_mean=a["mean"], nif_std=a["std"], nf_mean=b["mean"], nf_std=b["std"],
          nif_better=a["mean"] < b["mean"],
          beyond_2_std=abs(a["mean"] - b["mean"]) > 2 * max(a["std"], b["std"]))
    out["probe"][name] = {"nif": r["probe_accuracy"], "nf": nf["probe_accuracy"],
                          "nif_better": r["probe_accuracy"] > nf["probe_accuracy"]}
  out["deep_nif"] = deep_nif_claims(rows, spread or {}, iw_bounds or {})
  return out


def deep_nif_claims(rows: dict, spread: dict, iw_bounds: dict) -> dict:
  """Each shipped deep NIF against the NIF-k of the same k (paper App. B.4):
  bits/dim (the deep NIF's IW bound, at the training N and at N = 256 from
  ``iw_bounds`` {name: registry metric}) and the FD at each model's s*."""
  out = {}
  for name in rows:
    if not name.startswith("digits-deepnif"):
      continue
    ref = "digits-nif" + name[len("digits-deepnif"):]
    if ref not in rows or name not in spread or ref not in spread:
      continue
    a, b = spread[name]["s_star"], spread[ref]["s_star"]
    curve = iw_bounds.get(name) or {}
    n256 = (curve["bits_per_dim_by_n"][curve["num_samples"].index(256)]
            if 256 in curve.get("num_samples", []) else None)
    out[name] = {
        "nif": ref, "bpd": rows[name]["bits_per_dim"], "bpd_n256": n256,
        "nif_bpd": rows[ref]["bits_per_dim"],
        "bpd_better": rows[name]["bits_per_dim"] < rows[ref]["bits_per_dim"],
        "s_star": rows[name]["s_star"], "fd_mean": a["mean"], "fd_std": a["std"],
        "nif_fd_mean": b["mean"], "nif_fd_std": b["std"],
        "fd_better": a["mean"] < b["mean"],
        "fd_beyond_2_std": abs(a["mean"] - b["mean"]) > 2 * max(a["std"], b["std"])}
  return out


def _yes(flag: bool) -> str:
  return "**yes**" if flag else "**no**"


def write_page(path: str, rows: dict, table_md: str, verdict: dict, extra: dict,
               figs: dict, command: str):
  rel = lambda p: os.path.relpath(p, os.path.dirname(path))
  nf = rows[NF]
  lines = [
      "# Results on digits",
      "",
      "<!-- Generated by launch/results_digits.py; do not edit by hand. -->",
      "",
      f"Generated by `{command}` in {extra['wall_time_s']:.0f} s on "
      f"{extra['hardware']}, from the shipped checkpoints "
      f"(`{'`, `'.join(rows)}`). The numbers are in "
      "[results-digits.json](results-digits.json).",
      "",
      "## Protocol",
      "",
      "- **bits/dim**: every one of the 300 test images once, at s = 1, "
      f"{extra['bpd_draws']} uniform-dequantisation draws per image from a fixed key "
      "(docs/math.md §5.3).",
      "- **Fréchet distance (FD)**: on the 32-d penultimate features of the digits "
      f"classifier shipped in `registry/checkpoints/digits-classifier/` (test accuracy "
      f"{extra['classifier_accuracy']:.1%}), not Inception (8×8 images; Inception FID "
      "needs weights this project cannot download). Samples are the flows' continuous "
      "outputs (before flooring to levels); real images are dequantised, (x + u)/17. "
      f"{extra['num_samples']} samples per FD against the 300 test images; s is chosen "
      f"on a random subsample of {extra['tune_size']} *train* images over s ∈ "
      "linspace(0, 1.2, 15) with independent sample draws, and the FD is reported on "
      "the test split. With 300 reference images the estimate is biased upwards "
      f"(O(1/n)): two disjoint sets of real digits (300 train vs the 300 test) are at FD "
      f"{extra['fd_real']:.2f}, the floor of this protocol.",
      "- **Linear probe**: multinomial logistic regression on standardised embeddings, "
      "fitted on the 1,497 train images, accuracy on the 300 test images. NF: the flow "
      "latent (64-d); NIF-k: the stochastic inverse μ(x) (k-d).",
      "",
      f"Table 1's FDs are single sample draws (the sweep's); the claims below use "
      f"{extra.get('repeats', '?')} independent draws of {extra['num_samples']} "
      "samples each at every model's s*.",
      "",
      table_md,
      "## The paper's claims on digits",
      "",
      "1. *NIF-k matches the NF in bits/dim at s = 1* (within 2 %):",
  ]
  for name, v in verdict["bpd"].items():
    lines.append(f"   - `{name}`: {v['nif']:.4f} vs NF {v['nf']:.4f} "
                 f"({v['relative_difference']:+.2%}): {_yes(v['within_2_percent'])}")
  lines.append("2. *NIF samples at the tuned s have a better Fréchet distance than "
               "the NF's*:")
  for name, v in verdict["fd"].items():
    if "nif_mean" in v:
      lines.append(
          f"   - `{name}`: FD {v['nif_mean']:.2f} ± {v['nif_std']:.2f} at s* = "
          f"{v['s_star']:.2f} vs NF {v['nf_mean']:.2f} ± {v['nf_std']:.2f} (mean ± sd "
          f"over {extra.get('repeats', '?')} sample draws): {_yes(v['nif_better'])}"
          + ("" if v["beyond_2_std"] else
             " (the gap is within two standard deviations: not significant)"))
    else:
      lines.append(f"   - `{name}`: FD {v['nif_at_s_star']:.2f} at s* = {v['s_star']:.2f} "
                   f"(s = 1: {v['nif_at_s1']:.2f}) vs NF {v['nf']:.2f}: "
                   f"{_yes(v['nif_better'])}")
  gains = {n: v["nif_at_s1"] - v["nif_at_s_star"] for n, v in verdict["fd"].items()}
  near_one = all(abs(v["s_star"] - 1.0) <= 0.25 for v in verdict["fd"].values())
  lines.append(
      "   FD(s = 1) − FD(s*), single draws: " + ", ".join(
          f"{g:+.2f} (`{n}`)" for n, g in gains.items()) + "."
      + (" Every s* lies within 0.25 of 1: tuning s gains little on digits, and "
         "whatever lead the NIF models have over the NF is there at s = 1 already."
         if near_one else ""))
  lines.append("3. *The NIF embedding is more useful than the NF latent* (linear-probe "
               f"accuracy; the same probe on raw pixels: {extra['pixel_probe']:.1%}):")
  for name, v in verdict["probe"].items():
    lines.append(f"   - `{name}`: {v['nif']:.1%} vs NF {v['nf']:.1%}: "
                 f"{_yes(v['nif_better'])}")
  deep = verdict.get("deep_nif") or {}
  if deep:
    lines += [
        "", "## The deep NIF against NIF-k", "",
        "The deep NIF's bits/dim is the importance-weighted bound (docs/math.md §1.7, "
        "§4.2), an upper bound on its true bits/dim; NIF-k's is exact. The N = 256 "
        "bound and the NIF-k beside it come from the registry entry "
        "(`launch/evaluate.py --evals=iw_bound`, same images and dequantisation "
        "draws). FDs are mean ± sd over the sample draws above, each model at its "
        "own s*.", "",
        "| deep NIF | bits/dim (N = 16) | bits/dim (N = 256) | NIF-k | NIF-k bits/dim "
        "| FD at s* | NIF-k FD at s* | fewer bits/dim | better FD |",
        "|---|---|---|---|---|---|---|---|---|"]
    for name, v in deep.items():
      n256 = "—" if v["bpd_n256"] is None else f"{v['bpd_n256']:.4f}"
      lines.append(
          f"| `{name}` | {v['bpd']:.4f} | {n256} | `{v['nif']}` | {v['nif_bpd']:.4f} "
          f"| {v['fd_mean']:.2f} ± {v['fd_std']:.2f} (s* = {v['s_star']:.2f}) "
          f"| {v['nif_fd_mean']:.2f} ± {v['nif_fd_std']:.2f} | {_yes(v['bpd_better'])} "
          f"| {_yes(v['fd_better'])}"
          + ("" if v["fd_beyond_2_std"] else " (within 2 sd)") + " |")
  lines += ["", "## Figures", ""]
  captions = {
      "sweep": "FD(s) on the test split (solid; dotted: the train subsample that "
               "chooses s*, marked ★) and test bits/dim(s) (paper Fig. 7/11). The NF "
               "has no s: dashed lines.",
      "temperature": "Samples at temperatures T = 0.5 … 1.5, NF vs NIF on its "
                     "manifold (paper Fig. 3); for the deep NIFs T scales the "
                     "low-dimensional flow's base latent.",
      "s_strip": "One latent per row decoded at s = 0 … 1.2 with one noise draw "
                 "(paper Fig. 6).",
      "samples": "Samples of the NF, and of the NIF at s = 0 and s = 1 (paper Fig. 5).",
      "reconstructions": "Test images and their reconstructions.",
      "interpolations": "Interpolations between test images; every step is decoded.",
      "embeddings": f"{extra['embedding_method']} of the test-set embeddings with "
                    "the linear-probe accuracy (paper Fig. 4).",
  }
  for key, caption in captions.items():
    if key in figs:
      lines += [f"![{key}]({rel(figs[key])})", "", caption, ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nifzoo import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from nifzoo import zoo  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import fd as fd_lib, figures, frechet, probe, sweep, tables  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  command = "python launch/results_digits.py " + " ".join(sys.argv[1:])
  figdir = os.path.join(_DOCS.value, "figures")
  os.makedirs(figdir, exist_ok=True)
  mesh = mesh_lib.make_mesh()
  names = list(_MODELS.value)
  if not FLAGS["models"].present:
    from nifzoo import registry as registry_lib  # pylint: disable=g-import-not-at-top
    shipped = registry_lib.names(registry=FLAGS.registry)
    names += [n for n in DEEP_NIFS if n in shipped]
  if names[0] != NF or _FIGURE_NIF.value not in names:
    raise app.UsageError(f"--models must start with {NF} and include --figure_nif.")
  results, loaded = {}, {}
  for name in names:
    results[name] = evaluate_launcher.evaluate(
        name, ["bpd", "s_sweep"], os.path.join(_WORKDIR.value, name),
        registry=FLAGS.registry, num_samples=FLAGS.num_samples,
        tune_size=FLAGS.tune_size, bpd_draws=FLAGS.bpd_draws,
        batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        classifier_dir=FLAGS.classifier, write_metrics=FLAGS.write_metrics,
        command=command, mesh=mesh)
    loaded[name] = zoo.load(name, mesh=mesh, registry=FLAGS.registry)

  # Linear probes and the embedding figure.
  embs, probes = {}, {}
  for name, model in loaded.items():
    p = probe.probe_model(model, model.config.data, batch_size=FLAGS.batch_size,
                          mesh=mesh)
    probes[name] = p
    results[name]["metrics"][tables.PROBE] = {
        "value": round(p["accuracy"], 4), "command": command,
        **{k: p[k] for k in ("dim", "num_train", "num_test", "embedding")}}
    embs[name] = probe.embeddings(model, model.config.data, "test",
                                  batch_size=FLAGS.batch_size, mesh=mesh)
    print(f"[{name}] linear probe {p['accuracy']:.3f} ({p['dim']}-d)", flush=True)
  # Context for the probe: the same probe on the raw pixels (levels, 64-d).
  x_tr, y_tr = classifier_lib.load_split(loaded[NF].config.data, "train")
  x_te, y_te = classifier_lib.load_split(loaded[NF].config.data, "test")
  pixel_probe = probe.linear_probe(x_tr.reshape(len(x_tr), -1), y_tr,
                                   x_te.reshape(len(x_te), -1), y_te)
  print(f"[pixels] linear probe {pixel_probe['accuracy']:.3f}", flush=True)
  if FLAGS.write_metrics:
    from nifzoo import registry as registry_lib  # pylint: disable=g-import-not-at-top
    for name in names:
      registry_lib.update_metrics(
          name, {tables.PROBE: results[name]["metrics"][tables.PROBE]},
          os.path.expanduser(FLAGS.write_metrics), registry=FLAGS.registry)
  emb_fig = figures.save_embeddings(
      embs, os.path.join(figdir, "digits-embeddings.png"), seed=FLAGS.seed,
      method=FLAGS.embedding_method,
      probe={n: p["accuracy"] for n, p in probes.items()})

  figs = make_figures(loaded, figdir, _FIGURE_NIF.value, FLAGS.seed)
  figs["embeddings"] = emb_fig["path"]
  figs["sweep"] = sweep.plot_sweep(
      {n: r["results"]["s_sweep"] for n, r in results.items()},
      os.path.join(figdir, "digits-sweep.png"),
      title="digits: Fréchet distance (classifier features) and bits/dim vs s")

  # The protocol's floor: FD between two disjoint sets of real digits.
  feature_fn, clf_info = evaluate_launcher.load_feature_fn(loaded[NF], FLAGS.classifier)
  data = loaded[NF].config.data
  sw = results[NF]["results"]["s_sweep"]
  idx = sweep.tune_indices(data, "train", sw["tune_size"], FLAGS.seed)
  fd_real = frechet.frechet_distance_features(
      fd_lib.split_features(feature_fn, data, "train", indices=idx,
                            key=jax.random.key(FLAGS.seed)),
      fd_lib.split_features(feature_fn, data, "test",
                            key=jax.random.key(FLAGS.seed + 1)))

  # The FD's spread over sample draws: REPEATS independent sets of samples at
  # each model's s* (and at s = 1), against the same test features.
  test_stats = frechet.gaussian_stats(fd_lib.split_features(
      feature_fn, data, "test", key=jax.random.key(FLAGS.seed + 1)))
  spread = {}
  for name, model in loaded.items():
    sampler = fd_lib.make_sampler(model, mesh)
    s_star = results[name]["results"]["s_sweep"]["s_star"]
    spread[name] = {}
    for label, s in (("s_star", s_star), ("s1", 1.0)):
      vals = [fd_lib.frechet_to_reference(
          sampler, feature_fn, test_stats, FLAGS.num_samples,
          key=jax.random.fold_in(jax.random.key(FLAGS.seed + 100), r),
          noise_scale=s, batch_size=FLAGS.batch_size) for r in range(REPEATS)]
      spread[name][label] = {"noise_scale": s, "mean": float(np.mean(vals)),
                             "std": float(np.std(vals, ddof=1)), "values": vals}
    print(f"[{name}] FD at s*={s_star:.3f}: {spread[name]['s_star']['mean']:.3f} "
          f"± {spread[name]['s_star']['std']:.3f} over {REPEATS} sample draws",
          flush=True)

  entries = {n: {"metrics": r["metrics"],
                 "paper": loaded[n].entry.paper if loaded[n].entry else None}
             for n, r in results.items()}
  rows = tables.table_rows(entries)
  by_name = {r["name"]: r for r in rows}
  iw_bounds = {n: m.entry.metrics.get(evaluate_launcher.IW_METRIC)
               for n, m in loaded.items() if m.entry is not None}
  verdict = claims(by_name, spread, iw_bounds)
  extra = {"wall_time_s": time.time() - t0, "hardware": zoo.hardware_string(),
           "bpd_draws": FLAGS.bpd_draws, "num_samples": FLAGS.num_samples,
           "tune_size": sw["tune_size"], "fd_real": fd_real,
           "classifier_accuracy": clf_info["test_accuracy"],
           "embedding_method": emb_fig["method"], "repeats": REPEATS,
           "pixel_probe": pixel_probe["accuracy"]}
  page = os.path.join(_DOCS.value, "results-digits.md")
  write_page(page, by_name, tables.markdown(rows), verdict, extra, figs, command)
  with open(os.path.join(_DOCS.value, "results-digits.json"), "w") as f:
    json.dump({"command": command, "rows": rows, "claims": verdict,
               "protocol": extra, "probes": probes, "fd_spread": spread,
               "sweeps": {n: r["results"]["s_sweep"] for n, r in results.items()},
               "bits_per_dim": {n: r["results"]["bpd"] for n, r in results.items()}},
              f, indent=2, default=evaluate_launcher._jsonable)  # pylint: disable=protected-access
    f.write("\n")
  print(f"Wrote {page} and {len(figs)} figures in {time.time() - t0:.0f} s.")


if __name__ == "__main__":
  app.run(main)
