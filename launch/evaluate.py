r"""Evaluates a zoo model: bits/dim, Fréchet distances, the s sweep, figures.

  python launch/evaluate.py --model=digits-nif16 --outdir=runs/eval/digits-nif16
  python launch/evaluate.py --model=runs/digits-nif16 --evals=bpd,s_sweep \
      --write_metrics=~/nifzoo-registry
  python launch/evaluate.py --model=celeba-nif64 --registry=~/nifzoo-registry \
      --evals=bpd,fid --inception_weights=pt_inception.npz --num_samples=25000

--model is a registry name or a training workdir (anything ``zoo.load`` takes).
Evaluations (--evals, comma-separated):

  bpd         test bits/dim at s = 1, every test image once, --bpd_draws
              dequantisation draws (deep NIF: IW bound with --iw_samples,
              default the training N)
  iw_bound    deep NIF only: the test bound at N in --iw_curve, beside the
              closed-form log-likelihood of <dataset>-nif<k> when the registry
              ships it (same images and dequantisation draws)
  fd          Fréchet distance on the dataset classifier's features at s = 1
  s_sweep     FD(s) and bits/dim(s) over --scales, s chosen on a train
              subsample, FD reported on test (sweep.png)
  fid         Inception-v3 FID (TTUR-compatible) at s = 1 and at s* when the
              sweep ran; needs --inception_weights
  figures     temperature grid, s strip, samples at s = 0 and 1,
              reconstructions, interpolations (PNG)
  embeddings  supervised UMAP of the test embeddings (embedding.png) and a
              linear probe (train -> test accuracy)

Everything runs data-parallel over all devices (the training mesh). Results go
to <outdir>/metrics.json and PNGs; --write_metrics=<dir> also merges the
metrics into the model's entry in that user registry.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from nifzoo import mesh as mesh_lib

EVALS = ("bpd", "iw_bound", "fd", "s_sweep", "fid", "figures", "embeddings")
DEFAULT_EVALS = "bpd,s_sweep,figures,embeddings"

_MODEL = flags.DEFINE_string("model", None, "Registry name or training workdir.")
_EVALS = flags.DEFINE_list("evals", DEFAULT_EVALS, f"Any of {', '.join(EVALS)}.")
_OUTDIR = flags.DEFINE_string("outdir", None, "Where metrics.json and PNGs go.")
_REGISTRY = flags.DEFINE_list("registry", None, "User registry directories.")
_WRITE = flags.DEFINE_string(
    "write_metrics", None, "Merge the metrics into the model's entry in this "
    "user registry directory.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Samples per FD.")
_TUNE_SIZE = flags.DEFINE_integer(
    "tune_size", None, "Train images for tuning s (default: test split size).")
_SCALES = flags.DEFINE_list("scales", None,
                            "Noise scales of the sweep (default linspace(0, 1.2, 15)).")
_BPD_DRAWS = flags.DEFINE_integer("bpd_draws", 4, "Dequantisation draws per image.")
_IW = flags.DEFINE_integer("iw_samples", None, "Deep NIF: N of the IW bound.")
_IW_CURVE = flags.DEFINE_list("iw_curve", ["1", "4", "16", "64", "256"],
                              "Deep NIF: the N of --evals=iw_bound.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global evaluation batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Fixes every random draw.")
_CLASSIFIER = flags.DEFINE_string(
    "classifier", None, "Classifier directory for FD (default: the registry's "
    "checkpoints/<dataset>-classifier).")
_EMBEDDING = flags.DEFINE_enum(
    "embedding_method", "umap", ["umap", "pca"],
    "2-D map of the embeddings (umap falls back to PCA without umap-learn).")
_INCEPTION = flags.DEFINE_string("inception_weights", None,
                                 "Inception-v3 FID weights (.npz), for --evals=fid.")
_INITIALIZE_DISTRIBUTED = mesh_lib.define_distributed_flags()


def default_classifier_dir(dataset: str) -> str:
  from nifzoo import registry  # pylint: disable=g-import-not-at-top
  return os.path.join(registry.packaged_dir(), registry.CHECKPOINTS,
                      f"{dataset}-classifier")


def load_feature_fn(model, classifier_dir: str | None):
  """(feature_fn, info) of the dataset classifier, hash-checked."""
  from nifzoo import registry  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import classifier  # pylint: disable=g-import-not-at-top
  d = classifier_dir or default_classifier_dir(model.config.data.name)
  clf, info = classifier.load_classifier(d)
  if "sha256" in info:
    got = registry.hash_directory(os.path.join(d, classifier.STATE_DIR))
    if got != info["sha256"]:
      raise ValueError(f"The classifier at {d} does not match its hash "
                       f"({got} != {info['sha256']}): the files changed.")
  if tuple(info["image_shape"]) != tuple(model.config.data.image_shape):
    raise ValueError(f"The classifier at {d} is for images {info['image_shape']}, "
                     f"the model's are {list(model.config.data.image_shape)}.")
  return classifier.feature_fn(clf), info


def evaluate(model_name: str, evals, outdir: str, *, registry=None,
             num_samples: int = 1000, tune_size: int | None = None,
             scales=None, bpd_draws: int = 4, iw_samples: int | None = None,
             iw_curve=(1, 4, 16, 64, 256), batch_size: int = 256, seed: int = 0,
             classifier_dir: str | None = None,
             inception_weights: str | None = None,
             write_metrics: str | None = None, command: str = "",
             embedding_method: str = "umap",
             mesh=None, progress: bool = True) -> dict:
  """Runs ``evals`` on a model; writes <outdir>/metrics.json and PNGs.

  Returns ``{"model", "evals", "results": {eval: ...}, "metrics": {registry
  metrics}, "files": [...]}``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from nifzoo import zoo  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import bpd as bpd_lib  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import fd as fd_lib  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import figures, probe, sweep, tables  # pylint: disable=g-import-not-at-top

  unknown = sorted(set(evals) - set(EVALS))
  if unknown:
    raise ValueError(f"Unknown evals {unknown}; choose from {', '.join(EVALS)}.")
  if "fid" in evals and not inception_weights:
    raise ValueError("--evals=fid needs --inception_weights=<file.npz> (see "
                     "nifzoo/evaluate/inception.py for how to make it).")
  command = command or f"python launch/evaluate.py --model={model_name}"
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  model = zoo.load(model_name, mesh=mesh, registry=registry)
  cfg = model.config
  if write_metrics and model.entry is None:
    raise ValueError(
        f"--write_metrics needs a registry entry, but {model_name} is a workdir: "
        "register it first (launch/train.py --register=<dir>, or zoo.register) "
        "and evaluate it by name.")
  name = model.entry.name if model.entry is not None else cfg.name
  nif = model.prior != "normal"
  key = jax.random.key(seed)
  from nifzoo import fileio  # pylint: disable=g-import-not-at-top
  outdir = str(fileio.as_path(outdir))  # Local or gs://.
  fileio.as_path(outdir).mkdir(parents=True, exist_ok=True)
  results, metrics, files = {}, {}, []
  t0 = time.time()

  def log(msg):
    if progress:
      print(f"[{name} {time.time() - t0:.0f}s] {msg}", flush=True)

  if "bpd" in evals:
    r = bpd_lib.bits_per_dim(model, cfg.data, "test", batch_size=batch_size,
                        num_draws=bpd_draws, key=jax.random.fold_in(key, 1),
                        num_samples=iw_samples, mesh=mesh, progress=progress)
    results["bpd"] = r
    metrics.update(zoo.eval_metrics(r, command))
    log(f"test bits/dim {r['bits_per_dim']:.4f} ({r['num_images']} images"
        + (f", IW bound N = {r['num_samples']})" if r["num_samples"] else ")"))
  if "iw_bound" in evals:
    r = iw_bound_metrics(model, name, iw_curve, command, registry=registry,
                         batch_size=batch_size, num_draws=bpd_draws,
                         key=jax.random.fold_in(key, 1), mesh=mesh)
    results["iw_bound"] = r
    metrics[IW_METRIC] = r
    log("test IW bound, bits/dim by N: " + ", ".join(
        f"{n}: {b:.4f}" for n, b in zip(r["num_samples"], r["bits_per_dim_by_n"]))
        + (f" (closed-form {r['closed_form']['model']}: "
           f"{r['closed_form']['bits_per_dim']:.4f})" if r["closed_form"] else ""))

  feature_fn = None
  if {"fd", "s_sweep"} & set(evals):
    feature_fn, clf_info = load_feature_fn(model, classifier_dir)
    results["classifier"] = clf_info
  if "fd" in evals:
    r = fd_lib.frechet_distance(model, feature_fn, cfg.data, "test",
                               num_samples=num_samples, key=jax.random.fold_in(key, 2),
                               noise_scale=1.0, batch_size=batch_size, mesh=mesh)
    results["fd"] = r
    metrics[tables.FD_S1.format(features="classifier")] = {
        "value": round(r["fd"], 4), "command": command,
        **{k: r[k] for k in ("num_samples", "num_reference", "noise_scale")}}
    log(f"FD (classifier) at s=1: {r['fd']:.3f}")
  if "s_sweep" in evals:
    r = sweep.noise_scale_sweep(
        model, feature_fn, cfg.data,
        scales=sweep.DEFAULT_SCALES if scales is None else scales,
        num_samples=num_samples, tune_size=tune_size,
        key=jax.random.fold_in(key, 3), batch_size=batch_size,
        bpd_draws=bpd_draws, mesh=mesh, seed=seed, progress=progress)
    results["s_sweep"] = r
    files.append(sweep.plot_sweep({name: r}, os.path.join(outdir, "sweep.png"),
                                  title=name))
    common = {"command": command, "num_samples": r["num_samples"],
              "num_reference": r["num_eval_images"], "tune_split": r["tune_split"],
              "tune_size": r["tune_size"], "features": "classifier"}
    metrics[tables.FD.format(features="classifier")] = {
        "value": round(r["fd_eval_at_s_star"], 4), "s_star": r["s_star"], **common}
    if r["fd_eval_at_s1"] is not None:
      metrics[tables.FD_S1.format(features="classifier")] = {
          "value": round(r["fd_eval_at_s1"], 4), "noise_scale": 1.0, **common}
    log(f"s* = {r['s_star']:.3f} (on train), test FD {r['fd_eval_at_s_star']:.3f}")
  if "fid" in evals:
    from nifzoo.evaluate import inception  # pylint: disable=g-import-not-at-top
    net = inception.load_inception(inception_weights)
    s_list = [1.0] + ([results["s_sweep"]["s_star"]] if "s_sweep" in results
                      and nif else [])
    out = {}
    for s in dict.fromkeys(s_list):
      out[str(s)] = fd_lib.frechet_distance(
          model, inception.feature_fn(net), cfg.data, "test",
          num_samples=num_samples, key=jax.random.fold_in(key, 4),
          noise_scale=s, batch_size=batch_size, mesh=mesh, features="inception",
          progress=progress)
    results["fid"] = out
    best = out[str(s_list[-1])]
    metrics["test_fid_inception"] = {
        "value": round(best["fd"], 4), "noise_scale": best["noise_scale"],
        "num_samples": best["num_samples"], "num_reference": best["num_reference"],
        "command": command}
    log(f"FID (Inception) {best['fd']:.3f} at s={best['noise_scale']:g}")
  if "figures" in evals:
    k = jax.random.fold_in(key, 5)
    x, _ = classifier_lib.load_split(cfg.data, "test", max_images=16)
    grids = {"temperature.png": (figures.temperature_grid(model, key=k),
                                 "T = 0.5 … 1.5 (rows)"),
             "reconstructions.png": (figures.reconstructions(model, x[:8]), ""),
             "interpolations.png": (figures.interpolations(model, x[:4], x[4:8]), "")}
    if nif:
      grids["s_strip.png"] = (figures.noise_strip(model, key=k), "")
    for s, imgs in figures.samples_at(model, key=k).items():
      if nif or s == 1.0:
        grids[f"samples_s{s:g}.png"] = (imgs.reshape(8, 8, *imgs.shape[1:]), "")
    for fname, (rows, _) in grids.items():
      files.append(figures.save_rows(rows, os.path.join(outdir, fname)))
    log(f"figures: {', '.join(grids)}")
  if "embeddings" in evals:
    r = probe.probe_model(model, cfg.data, batch_size=batch_size, mesh=mesh)
    emb = probe.embeddings(model, cfg.data, "test", batch_size=batch_size, mesh=mesh)
    fig = figures.save_embeddings({name: emb}, os.path.join(outdir, "embedding.png"),
                                  seed=seed, method=embedding_method,
                                  probe={name: r["accuracy"]})
    r["figure_method"] = fig["method"]
    results["embeddings"] = r
    files.append(fig["path"])
    metrics[tables.PROBE] = {"value": round(r["accuracy"], 4), "command": command,
                             **{k: r[k] for k in ("dim", "num_train", "num_test",
                                                  "embedding")}}
    log(f"linear probe accuracy {r['accuracy']:.3f} ({r['dim']}-d)")

  out = {"model": name, "source": model_name, "evals": list(evals),
         "results": results, "metrics": metrics, "files": files,
         "wall_time_s": round(time.time() - t0, 1)}
  if jax.process_index() == 0:
    fileio.write_json(fileio.join(outdir, "metrics.json"), out, default=_jsonable)
  if write_metrics and metrics and jax.process_index() == 0:
    from nifzoo import registry as registry_lib  # pylint: disable=g-import-not-at-top
    path = registry_lib.update_metrics(name, metrics, write_metrics,
                                       registry=registry)
    log(f"metrics written into {path}")
  return out


IW_METRIC = "test_iw_bound_bits_per_dim"


def iw_bound_metrics(model, name: str, num_samples, command: str, *,
                     registry=None, **kwargs) -> dict:
  """The registry metric of a deep NIF's bound against N (``bpd.iw_bound_curve``,
  ``kwargs`` as there): value = bits/dim at the largest N, the curve, and the
  exact bits/dim of the NIF-k with the same k (``<dataset>-nif<k>``) on the
  same images and dequantisation draws, when the registry ships that model."""
  from nifzoo import registry as registry_lib  # pylint: disable=g-import-not-at-top
  from nifzoo import zoo  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import bpd as bpd_lib  # pylint: disable=g-import-not-at-top
  cfg = model.config
  curve = bpd_lib.iw_bound_curve(model, cfg.data, "test",
                                 num_samples=[int(n) for n in num_samples], **kwargs)
  ref_name = f"{cfg.dataset}-nif{cfg.model.latent_dim}"
  closed_form = None
  if ref_name in registry_lib.names(registry=registry) and registry_lib.find(
      ref_name, registry).checkpoint is not None:
    ref = zoo.load(ref_name, registry=registry,
                   mesh=kwargs.get("mesh"))
    r = bpd_lib.bits_per_dim(ref, ref.config.data, "test", **kwargs)
    closed_form = {"model": ref_name, "bits_per_dim": round(r["bits_per_dim"], 5),
                   "what": "exact NIF-k log-likelihood (Eq. 13), same images "
                           "and dequantisation draws"}
  bpd = curve["bits_per_dim"]
  return {"value": round(bpd[-1], 5), "command": command,
          "num_samples": curve["num_samples"],
          "bits_per_dim_by_n": [round(b, 5) for b in bpd],
          "decrease_by_n": [round(d, 5) for d in curve["decrease"]],
          "closed_form": closed_form,
          **{k: curve[k] for k in ("split", "num_images", "num_draws",
                                   "noise_scale")}}


def _jsonable(v):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  if isinstance(v, np.ndarray):
    return v.tolist()
  return str(v)


def main(argv):
  del argv
  if not _MODEL.value or not _OUTDIR.value:
    raise app.UsageError("--model and --outdir are required.")
  # Library INFO chatter (Orbax, XLA backends) off; --verbosity=0 brings it back.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  _INITIALIZE_DISTRIBUTED()
  scales = None if _SCALES.value is None else [float(s) for s in _SCALES.value]
  out = evaluate(
      _MODEL.value, _EVALS.value, _OUTDIR.value, registry=_REGISTRY.value,
      num_samples=_NUM_SAMPLES.value, tune_size=_TUNE_SIZE.value, scales=scales,
      bpd_draws=_BPD_DRAWS.value, iw_samples=_IW.value,
      iw_curve=[int(n) for n in _IW_CURVE.value], batch_size=_BATCH.value,
      seed=_SEED.value, classifier_dir=_CLASSIFIER.value,
      inception_weights=_INCEPTION.value, write_metrics=_WRITE.value,
      embedding_method=_EMBEDDING.value,
      command=" ".join(["python"] + sys.argv))
  print(json.dumps(out["metrics"], indent=2))


if __name__ == "__main__":
  app.run(main)
