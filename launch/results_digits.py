r"""The digits version of the paper's results, from the shipped checkpoints.

  python launch/results_digits.py

Evaluates digits-nf, digits-nif{4,8,16,32} and the shipped deep NIFs
(digits-deepnif{8,16}, compared with NIF-k of the same k) with an evaluation
job (``nifzoo.evaluate.run``: bits/dim at s = 1 with per-image values, the
``knob`` protocol: FD at the default and the tuned knobs, T for the NF, s
and then T for the NIFs, mean ± SE over sample draws) and linear probes; the
same job on the other training seeds of the headline models (--seeds_root;
the missing ones are trained first, by ``seed_command``, and every seed is
compared with the NF's seeds); the floor (FD of real train subsets);
tests every claim (``nifzoo.evaluate.claims``); draws the figures; writes
docs/results-digits.md, docs/results-digits.json and docs/figures/digits-*.png.
Every number in the page comes from this one run. The shortcut flags of
launch/evaluate.py (--num_samples, --bpd_draws, --seed, --registry,
--write_metrics, ...; nifzoo/evaluate/config.py) apply.
"""

from __future__ import annotations

import json
import os
import sys
import time

from nifzoo import runtime

# Before jax loads: nifzoo's CPU defaults, as launch/train.py (nifzoo/runtime.py).
runtime.reexec_with_defaults()

from absl import app
from absl import flags
from absl import logging

from nifzoo.evaluate import claims as claims_lib
from nifzoo.evaluate import config as config_lib
from nifzoo.evaluate import knob
from nifzoo.evaluate import metrics
from nifzoo.evaluate import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
_SHORTCUTS = config_lib.define_flags()

_SEEDS_ROOT = flags.DEFINE_string(
    "seeds_root", os.path.join(ROOT, "runs", "seeds"),
    "Workdirs <name>-s<seed> of the other training seeds (seed 0 is shipped).")
# The headline models trained with several seeds, and their extra seeds.
SEEDS = {"digits-nf": "digits-nf", "digits-nif16": "digits-nif16",
         "digits-nif8": "digits-nif8", "digits-deepnif8": "digits-deepnif8",
         "digits-deepnif16": "digits-deepnif16",
         "digits-nif16-from-nf": "digits-nif16-from-nf"}
EXTRA_SEEDS = (1, 2)
FLOOR_DRAWS = 20
_TRAIN_SEEDS = flags.DEFINE_bool(
    "train_seeds", True, "Train the other seeds missing under --seeds_root "
    "(by seed_command; about a minute each on 2 CPU cores).")


def seed_command(name: str, seed: int, seeds_root: str) -> str:
  """The command that trains seed ``seed`` of ``name`` into its workdir under
  ``seeds_root``: the shipped model's own recipe with ``--config.seed``
  changed, or for the converted NIF-16 the conversion of the NF of that seed."""
  wd = lambda n: os.path.relpath(os.path.join(seeds_root, f"{n}-s{seed}"), ROOT)
  if name == "digits-nif16-from-nf":
    return (f"python launch/convert.py --from={wd('digits-nf')} --k=16 "
            f"--out={wd(name)}")
  return (f"python launch/train.py --config=configs/digits.py:"
          f"{name.removeprefix('digits-')} --config.seed={seed} --workdir={wd(name)}")


def train_seed(name: str, seed: int, seeds_root: str) -> None:
  """Runs :func:`seed_command` (from the repository root) and records the
  command and its wall time in the workdir (files ``command``, ``wall_s``)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  command = seed_command(name, seed, seeds_root)
  wd = os.path.join(seeds_root, f"{name}-s{seed}")
  print(f"[seeds] {command}", flush=True)
  t0 = time.time()
  subprocess.run([sys.executable, *command.split()[1:]], cwd=ROOT, check=True)
  with open(os.path.join(wd, "wall_s"), "w") as f:
    f.write(f"{time.time() - t0:.0f}\n")
  with open(os.path.join(wd, "command"), "w") as f:
    f.write(command + "\n")

FLAGS = flags.FLAGS


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


def _pm(d: dict, digits: int = 2) -> str:
  return stats.fmt(d["mean"], d["se"], digits)


def write_page(path: str, rows: dict, verdict: dict, seeds: dict, extra: dict,
               figs: dict, command: str):
  rel = lambda p: os.path.relpath(p, os.path.dirname(path))
  k = extra["knob"]
  lines = [
      "# Results on digits",
      "",
      "<!-- Generated by launch/results_digits.py; do not edit by hand. -->",
      "",
      f"Generated by `{command}` in {extra['wall_time_s']:.0f} s on "
      f"{extra['hardware']}, from the shipped checkpoints "
      f"(`{'`, `'.join(rows)}`) and the other training seeds below. The numbers "
      "are in [results-digits.json](results-digits.json).",
      "",
      "## Protocol",
      "",
      "- **bits/dim**: every one of the 300 test images once, at s = 1, "
      f"{extra['bpd_draws']} uniform-dequantisation draws per image; draw d of "
      "test image i uses the key fold_in(fold_in(key, i), d), so the figure does "
      "not depend on batching and every model sees the same noise (common draws). "
      "Reported as mean ± SE, the images the independent units "
      "(docs/math.md §5.3). The deep NIFs' figure is the importance-weighted "
      "**bound** at their training N (an upper bound on bits/dim).",
      "- **Fréchet distance (FD)**: on the 32-d penultimate features of the digits "
      f"classifier in `registry/checkpoints/digits-classifier/` (test accuracy "
      f"{extra['classifier_accuracy']:.1%}; not Inception: 8×8 images). Samples are "
      "the flows' continuous outputs; real images are dequantised, (x + u)/17. "
      f"Each FD: {k['num_samples']} samples against a fixed reference.",
      "- **Knobs, the same protocol for every model**: T (temperature) for the "
      "NF; s (noise scale) for the NIFs, then their T at the tuned s (kept at 1 "
      "unless another value scores better). Tuned on a fixed subsample of "
      f"{k['tune_size']} *train* images: {k['tune_draws']} sample draws per value "
      f"(the same keys at every value) over the grid "
      f"{', '.join(f'{v:g}' for v in extra['grid'])}, extended by {k['step']:g} "
      f"while the best value is at an edge, within [{k['limits'][0]:g}, "
      f"{k['limits'][1]:g}]. Reported on the test split (all 300 images the "
      f"reference): {k['test_draws']} independent seeded sample draws (the same "
      "draws at every setting) at the default knobs (1), at the tuned ones and, "
      "for the NIFs, at the tuned s with T = 1; mean ± SE over the draws.",
      f"- **Floor**: FD of {FLOOR_DRAWS} random subsets of {k['num_samples']} real "
      "train digits to the same test reference: "
      f"{stats.fmt(extra['floor']['mean'], extra['floor']['sd'], 2)} (mean ± SD "
      "over subsets); no model can be expected below it.",
      "- **Linear probe**: multinomial logistic regression on standardised "
      "embeddings, fitted on the 1,497 train images, accuracy on the 300 test "
      "images (SE: binomial). NF: the flow latent (64-d); NIF-k: μ(x) (k-d).",
      f"- **Tests**: every comparison is a difference ± SE with the verdict of a "
      f"{stats.TEST}: \"better\", \"worse\" or \"inconclusive\". bits/dim: paired "
      "on the same images and draws; FD: Welch over the sample draws.",
      "",
      "**Table 1.** Fréchet distance (classifier features; lower is better), mean "
      "± SE over the test sample draws.",
      "",
      "| model | FD at knobs = 1 | tuned knobs | tuning | FD at s* (T = 1) | "
      "FD at the tuned knobs |",
      "|---|---|---|---|---|---|"]
  for name, r in rows.items():
    kr = r["knob"]
    tuning = kr["tune"]["tuning"]
    if kr.get("tune_temperature"):
      tuning = f"s: {tuning}; T: {kr['tune_temperature']['tuning']}"
    at_s = _pm(kr["tuned_s"]) if "tuned_s" in kr else "—"
    lines.append(f"| `{name}` | {_pm(kr['default'])} | "
                 f"{metrics.knob_label(kr['knobs_star'])} | {tuning} | {at_s} | "
                 f"{_pm(kr['tuned'])} |")
  lines += [
      "", f"Which way the knobs move FD on digits: {extra['s_direction']}", "",
      "**Table 2.** Test bits/dim at s = 1 (lower is better), mean ± SE; linear "
      "probe accuracy ± SE.", "",
      "| model | parameters | bits/dim | linear-probe accuracy |", "|---|---|---|---|"]
  for name, r in rows.items():
    b = r["bpd"]
    bound = (f" (IW **bound**, N = {b['num_samples']})" if b.get("num_samples") else "")
    p = r["probe"]
    lines.append(f"| `{name}` | {r['num_params']:,} | "
                 f"{stats.fmt(b['bits_per_dim'], b['se_bits_per_dim'], 4)}{bound} | "
                 f"{stats.fmt(p['accuracy'], p['se'], 3)} |")
  lines += ["", f"The same probe on raw pixels: {extra['pixel_probe']:.1%}.", "",
            claims_lib.markdown(verdict, dataset="digits", nf=NF), "",
            "## Training seeds", "",
            f"Seed 0 is the shipped checkpoint; seeds {', '.join(map(str, EXTRA_SEEDS))} "
            "were trained by the same command with `--config.seed` changed (the "
            "commands are in the JSON; their checkpoints are not shipped). Spread "
            "across seeds (SD) beside the typical within-model SE:", "",
            "| model | seeds | bits/dim per seed | across seeds: mean ± SD | "
            "within-model SE | FD (tuned) per seed | across seeds: mean ± SD | "
            "within-model SE |", "|---|---|---|---|---|---|---|---|"]
  for name, s in seeds.items():
    lines.append(
        f"| `{name}` | {len(s['bpd'])} | {', '.join(f'{v:.4f}' for v in s['bpd'])} | "
        f"{stats.fmt(*s['bpd_mean_sd'], 4)} | {s['bpd_se']:.4f} | "
        f"{', '.join(f'{v:.2f}' for v in s['fd'])} | {stats.fmt(*s['fd_mean_sd'], 2)} | "
        f"{s['fd_se']:.2f} |")
  vs = {n: s["vs_nf"] for n, s in seeds.items() if "vs_nf" in s}
  if vs:
    lines += [
        "", f"The claims across training seeds: each model − `{NF}` over the "
        "per-seed values (Welch, the seed the unit: it carries both the "
        "training and the evaluation noise; bits/dim at s = 1 — the deep NIFs' "
        "a bound — and FD at each seed's own tuned knobs). With "
        f"{1 + len(EXTRA_SEEDS)} seeds a side the test has little power; a "
        "verdict above that this row does not repeat rests on one training "
        "seed.", "",
        "| model − NF | bits/dim | verdict | FD (tuned) | verdict |",
        "|---|---|---|---|---|"]
    for n, v in vs.items():
      b, f = v["bpd"], v["fd"]
      lines.append(f"| `{n}` | {b['diff']:+.4f} ± {b['se']:.4f} | {b['verdict']} | "
                   f"{f['diff']:+.2f} ± {f['se']:.2f} | {f['verdict']} |")
  lines += ["", "## Figures", ""]
  captions = {
      "sweep": "Left and middle: the tuning curves (FD to the train subsample, "
               "mean ± SE band over the draws) of s (the NIFs, at T = 1) and of "
               "T (the NF, and each NIF at its s*); ★ the tuned values. Right: "
               "test FD (mean ± SE) at knobs = 1 (o) and tuned (★), the grey "
               "band the real-data floor (mean ± SD over subsets).",
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


def s_direction(rows: dict) -> str:
  """Which way s (and then T) moves FD for the NIFs, by verdicts: the s tuning
  curve's lowest s against s = 1; on test, s* (T = 1) against s = 1, and the
  tuned T at s* against T = 1."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  nifs = {n: r["knob"] for n, r in rows.items() if r["knob"]["knob"] == "noise_scale"}
  test = lambda kr, a, b: stats.compare(stats.independent_difference(
      kr[a]["fds"], kr[b]["fds"]))
  s_eff, t_eff, low = [], [], []
  for name, kr in nifs.items():
    c = test(kr, "tuned_s", "default")
    s_eff.append(f"`{name}` s* = {kr['knob_star']:g}: {c['diff']:+.2f} ± "
                 f"{c['se']:.2f} ({c['verdict']})")
    t_star = kr["knobs_star"]["temperature"]
    if t_star != 1.0:
      c = test(kr, "tuned", "tuned_s")
      t_eff.append(f"`{name}` T* = {t_star:g}: {c['diff']:+.2f} ± {c['se']:.2f} "
                   f"({c['verdict']})")
    t = kr["tune"]  # The tuning curve: FD at the grid's lowest s against s = 1.
    if 1.0 in t["grid"]:
      j = t["grid"].index(1.0)
      c = stats.compare({"diff": t["fd_mean"][0] - t["fd_mean"][j],
                         "se": float(np.hypot(t["fd_se"][0], t["fd_se"][j])),
                         "df": None})
      low.append(c["verdict"] == "worse")
  lower = [kr["knob_star"] < 1 for kr in nifs.values()]
  lowest = next(iter(nifs.values()))["tune"]["grid"][0]
  out = (f"lowering s from 1 to {lowest:g} makes the tuning FD significantly "
         f"worse for {sum(low)} of {len(low)} NIFs (normal test on the tuning "
         f"curves); the tuned s lies below 1 for {sum(lower)} of {len(lower)} NIFs "
         f"and at or above 1 for {len(lower) - sum(lower)}. On test, FD(s*, T = 1) "
         "− FD(s = 1, T = 1): " + "; ".join(s_eff) + ". ")
  if t_eff:
    rest = len(nifs) - len(t_eff)
    out += ("Then T at s* moves it by FD(s*, T*) − FD(s*, T = 1): "
            + "; ".join(t_eff) + (f"; T* = 1 for the other {rest}." if rest else "."))
  else:
    out += "T at s* stays 1 for every NIF."
  return out


def _job(model, config, mesh):
  from nifzoo import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.run(model, config, mesh=mesh)


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nifzoo import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from nifzoo import cards, registry, zoo  # pylint: disable=g-import-not-at-top
  from nifzoo import evaluate  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import figures, job, probe  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  command = "python launch/results_digits.py " + " ".join(sys.argv[1:])
  # The job's config, with the embeddings' settings for the probes done here.
  config = _SHORTCUTS(config_lib.get_config("bpd,knob,embeddings"))
  embedding_method = config.evals.embeddings.method
  del config.evals["embeddings"]
  config.command = command
  figdir = os.path.join(_DOCS.value, "figures")
  os.makedirs(figdir, exist_ok=True)
  mesh = mesh_lib.make_mesh()
  names = list(_MODELS.value)
  if not FLAGS["models"].present:
    shipped = registry.names(registry=config.registry)
    names += [n for n in DEEP_NIFS if n in shipped]
  if names[0] != NF or _FIGURE_NIF.value not in names:
    raise app.UsageError(f"--models must start with {NF} and include --figure_nif.")
  results, loaded = {}, {}
  for name in names:
    loaded[name] = zoo.load(name, mesh=mesh, registry=config.registry)
    config.outdir = os.path.join(_WORKDIR.value, name)
    results[name] = _job(loaded[name], config, mesh)
  batch_size, seed = config.batch_size, config.seed

  # Linear probes and the embedding figure.
  embs, probes = {}, {}
  for name, model in loaded.items():
    p = probe.probe_model(model, model.config.data, batch_size=batch_size,
                          mesh=mesh)
    p["se"] = float(np.sqrt(p["accuracy"] * (1 - p["accuracy"]) / p["num_test"]))
    probes[name] = p
    results[name]["metrics"][metrics.PROBE] = probe.probe_metric(p, command)
    embs[name] = probe.embeddings(model, model.config.data, "test",
                                  batch_size=batch_size, mesh=mesh)
    print(f"[{name}] linear probe {p['accuracy']:.3f} ({p['dim']}-d)", flush=True)
  x_tr, y_tr = classifier_lib.load_split(loaded[NF].config.data, "train")
  x_te, y_te = classifier_lib.load_split(loaded[NF].config.data, "test")
  pixel_probe = probe.linear_probe(x_tr.reshape(len(x_tr), -1), y_tr,
                                   x_te.reshape(len(x_te), -1), y_te)
  if config.write_metrics:
    for name in names:
      registry.update_metrics(
          name, {metrics.PROBE: results[name]["metrics"][metrics.PROBE]},
          os.path.expanduser(config.write_metrics), registry=config.registry)
  emb_fig = figures.save_embeddings(
      embs, os.path.join(figdir, "digits-embeddings.png"), seed=seed,
      method=embedding_method,
      probe={n: p["accuracy"] for n, p in probes.items()})
  figs = make_figures(loaded, figdir, _FIGURE_NIF.value, seed)
  figs["embeddings"] = emb_fig["path"]

  # The floor: real train subsets of the protocol's size, same test reference.
  data = loaded[NF].config.data
  feature_fn, clf_info = classifier_lib.load_features(config.classifier_dir, data, mesh)
  knob_key = jax.random.fold_in(jax.random.key(seed), job.EVALUATORS["knob"][1])
  kr0 = results[NF]["results"]["knob"]
  floor = knob.real_fd_draws(
      feature_fn, data, knob.test_reference(feature_fn, data, knob_key, batch_size),
      kr0["num_samples"], draws=FLOOR_DRAWS, seed=seed, batch_size=batch_size)
  floor_mean, floor_sd = stats.mean_sd(floor)
  figs["sweep"] = knob.plot_tuning(
      {n: r["results"]["knob"] for n, r in results.items()},
      os.path.join(figdir, "digits-sweep.png"),
      title="digits: FD (classifier features), each model at its own knobs",
      floor=(floor_mean, floor_sd))

  # The other training seeds of the headline models: the same job, no registry.
  seed_config = config.copy_and_resolve_references()
  seed_config.write_metrics = None
  seeds, seed_runs = {}, {}
  for name, stem in SEEDS.items():
    base = results.get(name)
    if base is None:  # Seed 0 not evaluated above (the converted NIF-16).
      seed_config.outdir = os.path.join(_WORKDIR.value, name)
      base = _job(zoo.load(name, mesh=mesh, registry=config.registry),
                  seed_config, mesh)
    per_seed = [base]
    seed_runs[name] = [{"seed": 0, "source": name}]
    for s in EXTRA_SEEDS:
      wd = os.path.join(_SEEDS_ROOT.value, f"{stem}-s{s}")
      if not os.path.exists(os.path.join(wd, "command")) and _TRAIN_SEEDS.value:
        train_seed(stem, s, _SEEDS_ROOT.value)
      if not os.path.exists(os.path.join(wd, "command")):
        logging.warning("No seed %d of %s at %s: left out.", s, name, wd)
        continue
      seed_config.outdir = os.path.join(_WORKDIR.value, "seeds", f"{stem}-s{s}")
      per_seed.append(_job(zoo.load(wd, mesh=mesh), seed_config, mesh))
      run = {"seed": s, "workdir": os.path.relpath(wd, ROOT),
             "command": open(os.path.join(wd, "command")).read().strip()}
      if os.path.exists(os.path.join(wd, "wall_s")):
        run["wall_time_s"] = float(open(os.path.join(wd, "wall_s")).read())
      seed_runs[name].append(run)
    bpd_v = [r["results"]["bpd"]["bits_per_dim"] for r in per_seed]
    fd_v = [r["results"]["knob"]["tuned"]["mean"] for r in per_seed]
    for run, r in zip(seed_runs[name], per_seed):
      run.update(bits_per_dim=r["results"]["bpd"]["bits_per_dim"],
                 se_bits_per_dim=r["results"]["bpd"]["se_bits_per_dim"],
                 fd_tuned=r["results"]["knob"]["tuned"]["mean"],
                 fd_tuned_se=r["results"]["knob"]["tuned"]["se"],
                 knobs_star=r["results"]["knob"]["knobs_star"])
    if len(per_seed) >= 2:
      seeds[name] = {
          "bpd": bpd_v, "bpd_mean_sd": stats.mean_sd(bpd_v),
          "bpd_se": float(np.mean([r["results"]["bpd"]["se_bits_per_dim"]
                                   for r in per_seed])),
          "fd": fd_v, "fd_mean_sd": stats.mean_sd(fd_v),
          "fd_se": float(np.mean([r["results"]["knob"]["tuned"]["se"]
                                  for r in per_seed]))}
    print(f"[seeds {name}] bits/dim {bpd_v}, FD {fd_v}", flush=True)
  # Across seeds, each model against the NF: Welch over the per-seed values
  # (the training seed the unit; each value's own within-model noise included).
  for name, sd in seeds.items():
    if name != NF and NF in seeds:
      sd["vs_nf"] = {m: stats.compare(stats.independent_difference(
          sd[m], seeds[NF][m])) for m in ("bpd", "fd")}

  bpd = {n: r["results"]["bpd"] for n, r in results.items()}
  knobs = {n: r["results"]["knob"] for n, r in results.items()}
  verdict = claims_lib.claims(bpd, knobs, probes, nf=NF)
  rows = {n: {"bpd": bpd[n], "knob": knobs[n], "probe": probes[n],
              "num_params": loaded[n].entry.data["checkpoint"]["num_params"]}
          for n in names}
  extra = {"wall_time_s": time.time() - t0, "hardware": cards.hardware_string(),
           "bpd_draws": config.evals.bpd.num_draws, "knob": kr0,
           "grid": list(config.evals.knob.grid),
           "floor": {"mean": floor_mean, "sd": floor_sd, "values": floor.tolist(),
                     "size": kr0["num_samples"]},
           "classifier_accuracy": clf_info["test_accuracy"],
           "embedding_method": emb_fig["method"],
           "pixel_probe": pixel_probe["accuracy"], "s_direction": s_direction(rows)}
  page = os.path.join(_DOCS.value, "results-digits.md")
  write_page(page, rows, verdict, seeds, extra, figs, command)
  extra["knob"] = {k: v for k, v in kr0.items()
                   if k not in ("tune", "tune_temperature", "default", "tuned",
                                "tuned_s", "knob", "knob_star", "knobs_star")}
  with open(os.path.join(_DOCS.value, "results-digits.json"), "w") as f:
    json.dump({"command": command, "claims": verdict, "protocol": extra,
               "probes": probes, "seeds": seeds, "seed_runs": seed_runs,
               "knob": knobs,
               "bits_per_dim": {n: {k: v for k, v in b.items()
                                    if k not in ("values", "indices")}
                                for n, b in bpd.items()}},
              f, indent=2, default=evaluate.job.jsonable)
    f.write("\n")
  if config.write_metrics:
    cards.update_readme_table(os.path.join(ROOT, "README.md"),
                              registry.all_entries(registry=config.registry))
  print(f"Wrote {page} and {len(figs)} figures in {time.time() - t0:.0f} s.")


if __name__ == "__main__":
  app.run(main)
