r"""NF -> NIF conversion on digits, end to end: one command.

  python launch/convert_digits.py            # after launch/build_registry.py

For k in 4, 8, 16, 32:
  1. converts the shipped `digits-nf` into a NIF-k (closed form, no training)
     and registers it as `digits-nif{k}-from-nf`;
  2. fine-tunes that with the project's launcher for --steps steps
     (`--config.init_from`), scoring the whole test split at every
     --every steps, and registers the result as `digits-nif{k}-from-nf-ft`;
  3. scores every model of the table by one protocol (the evaluation job's
     ``bpd`` and ``knob``: bits/dim on common images and draws, mean ± SE;
     FD at the default and the tuned knobs, mean ± SE over sample draws),
     reusing docs/results-digits.json's FD draws for the NF and the
     from-scratch models, and writes the metrics into the registry entries;
then writes docs/results-convert-digits.md and docs/results-convert-digits.json:
test bits/dim ± SE of the NF, the converted NIF-k, the fine-tuned one and the
from-scratch `digits-nif{k}`, every comparison a paired difference ± SE with
its verdict (``nifzoo.evaluate.stats``), the fine-tuning curve ± SE, the
steps to reach from-scratch, and the FD table with verdicts. The registered
checkpoints are not rewritten unless --register is given (steps 1 and 2 then
register their results, as the first run did).
"""

import json
import os
import shutil
import subprocess
import sys
import time

from nifzoo import runtime

# Before jax loads: nifzoo's CPU defaults, as launch/train.py (nifzoo/runtime.py).
runtime.reexec_with_defaults()

from absl import app
from absl import flags

_KS = flags.DEFINE_list("ks", ["4", "8", "16", "32"], "Latent dimensions.")
_STEPS = flags.DEFINE_integer("steps", 500, "Fine-tuning steps.")
_EVERY = flags.DEFINE_integer("every", 100, "Score the test split every this many steps.")
_LR = flags.DEFINE_float("lr", 3e-4, "Fine-tuning learning rate.")
_RUNS = flags.DEFINE_string("runs", "runs/convert", "Workdir root.")
_REGISTRY = flags.DEFINE_string("registry", "registry", "Registry to write.")
_OUT = flags.DEFINE_string("out", "docs/results-convert-digits", "Results files (.md, .json).")
_REGISTER = flags.DEFINE_bool(
    "register", False, "Register the conversions and fine-tuned runs again "
    "(new checkpoints); default: score the registered ones, the runs give the curve.")
_DIGITS = flags.DEFINE_string("digits_results", "docs/results-digits.json",
                              "launch/results_digits.py's JSON (FD draws reused).")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd):
  print(" ".join(cmd), flush=True)
  subprocess.run([sys.executable] + cmd, check=True, cwd=_ROOT)


def _pm(mean, se, digits=4):
  from nifzoo.evaluate import stats  # pylint: disable=g-import-not-at-top
  return stats.fmt(mean, se, digits)


def _cmp(c, digits=4):
  return f"{c['diff']:+.{digits}f} ± {c['se']:.{digits}f} ({c['verdict']})"


def main(argv):
  del argv
  from nifzoo import cards, evaluate, registry, zoo  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import claims, metrics, stats  # pylint: disable=g-import-not-at-top
  os.chdir(_ROOT)
  t0 = time.time()
  command = " ".join(["python", "launch/convert_digits.py"] + sys.argv[1:])
  reg = ["--register=" + _REGISTRY.value] if _REGISTER.value else []
  digits = json.load(open(_DIGITS.value)) if os.path.exists(_DIGITS.value) else {}
  config = evaluate.get_config("bpd,knob")
  config.command, config.write_metrics = command, _REGISTRY.value
  config.progress = False
  scored = {}

  def score(name):
    """The job on a registered model; FD draws reused from results-digits."""
    if name not in scored:
      config.outdir = f"{_RUNS.value}/eval/{name}"
      if name in digits.get("knob", {}):  # results_digits.py's models: its
        # FD draws, and its metrics in their entries (not written again here).
        config.evals = {"bpd": config.evals.bpd}
        config.write_metrics = None
        out = evaluate.run(name, config)["results"]
        out["knob"] = digits["knob"][name]
        config.evals = evaluate.get_config("bpd,knob").evals
        config.write_metrics = _REGISTRY.value
      else:
        out = evaluate.run(name, config)["results"]
      scored[name] = out
      print(f"[{name}] bits/dim {out['bpd']['bits_per_dim']:.4f}, FD tuned "
            f"{out['knob']['tuned']['mean']:.2f}", flush=True)
    return scored[name]

  rows = []
  for k in map(int, _KS.value):
    conv_dir = os.path.join(_RUNS.value, f"digits-nif{k}-from-nf")
    ft_dir = conv_dir + "-ft"
    for d in (conv_dir, ft_dir):
      if os.path.exists(d):
        shutil.rmtree(d)
    _run(["launch/convert.py", "--from=digits-nf", f"--k={k}", f"--out={conv_dir}"]
         + reg)
    _run(["launch/train.py", f"--config=configs/digits.py:nif{k}",
          f"--config.init_from={conv_dir}", f"--workdir={ft_dir}",
          f"--config.total_steps={_STEPS.value}", f"--config.learning_rate={_LR.value}",
          "--config.warmup_steps=50", f"--config.checkpoint_every={_EVERY.value}",
          f"--config.keep_checkpoints={_STEPS.value // _EVERY.value + 1}",
          f"--config.sample_every={_STEPS.value}"]
         + reg + ([f"--name=digits-nif{k}-from-nf-ft"] if reg else []))
    conv, ft, scratch = (f"digits-nif{k}-from-nf", f"digits-nif{k}-from-nf-ft",
                         f"digits-nif{k}")
    s_nf, s_conv, s_ft, s_scr = (score(n) for n in ("digits-nf", conv, ft, scratch))
    bpd = lambda r: r["bpd"]
    curve = []
    for step in range(0, _STEPS.value + 1, _EVERY.value):
      m = zoo.load(conv_dir) if step == 0 else zoo.load(ft_dir, step=step)
      r = evaluate.bits_per_dim(m, m.config.data, "test",
                                num_draws=config.evals.bpd.num_draws)
      vs = claims.bpd_comparison(r, bpd(s_scr))
      curve.append({"step": step, "bits_per_dim": r["bits_per_dim"],
                    "se": r["se_bits_per_dim"], "minus_scratch": vs})
    report = json.load(open(os.path.join(conv_dir, "convert.json")))
    steps_to = lambda ok: next((c["step"] for c in curve if ok(c)), None)
    rows.append({
        "k": k, "fine_tune_steps": _STEPS.value, "curve": curve,
        "convert_seconds": report["seconds"],
        "train_log_prior_gain_nats": report["train_log_prior_nif"]
                                     - report["train_log_prior_nf"],
        "sigma2": report["sigma2_min"],
        "bits_per_dim": {n: {"mean": bpd(r)["bits_per_dim"],
                             "se": bpd(r)["se_bits_per_dim"]}
                         for n, r in (("nf", s_nf), ("converted", s_conv),
                                      ("fine_tuned", s_ft), ("from_scratch", s_scr))},
        "converted_minus_nf": claims.bpd_comparison(bpd(s_conv), bpd(s_nf)),
        "fine_tuned_minus_scratch": claims.bpd_comparison(bpd(s_ft), bpd(s_scr)),
        "steps_to_mean_below_scratch": steps_to(
            lambda c: c["minus_scratch"]["diff"] <= 0),
        "steps_to_not_worse_than_scratch": steps_to(
            lambda c: c["minus_scratch"]["verdict"] != "worse"),
        "fd": {n: {"knobs_star": r["knob"]["knobs_star"],
                   "at_limit": [t["tuning"] for t in (r["knob"]["tune"],
                                                      r["knob"].get("tune_temperature"))
                                if t and t["tuning"] != "interior"],
                   "tuned": {x: r["knob"]["tuned"][x] for x in ("mean", "se")},
                   "default": {x: r["knob"]["default"][x] for x in ("mean", "se")}}
               for n, r in (("nf", s_nf), ("converted", s_conv),
                            ("fine_tuned", s_ft), ("from_scratch", s_scr))},
        "fd_vs_nf": {n: claims.fd_comparison(r["knob"], s_nf["knob"], "tuned")
                     for n, r in (("converted", s_conv), ("fine_tuned", s_ft),
                                  ("from_scratch", s_scr))}})
  wall = time.time() - t0
  with open(_OUT.value + ".json", "w") as f:
    json.dump({"rows": rows, "command": command, "wall_time_s": wall,
               "fine_tune_lr": _LR.value, "test": stats.TEST}, f, indent=2,
              default=evaluate.job.jsonable)
  k0 = scored["digits-nf"]["knob"]
  lines = [
      "# NF -> NIF conversion on digits",
      "",
      "<!-- Generated by launch/convert_digits.py; do not edit by hand. -->",
      "",
      f"Generated by `{command}` in {wall:.0f} s. *Converted*: `digits-nf`'s Glow "
      "with a Gaussian NIF prior fitted in closed form (PPCA, docs/math.md §7), no "
      f"training. *Fine-tuned*: that, trained {_STEPS.value} more steps at lr "
      f"{_LR.value:g}. *From scratch*: the shipped `digits-nif{{k}}` (2,000 steps).",
      "",
      "Protocol (the one of [results-digits.md](results-digits.md)): test bits/dim "
      f"at s = 1 on all 300 test images × {config.evals.bpd.num_draws} "
      "dequantisation draws, every model on the same images and draws (the noise "
      "of image i, draw d is keyed by (i, d), not by the batch), mean ± SE; every "
      "bits/dim comparison is the paired difference ± SE with the verdict of a "
      f"{stats.TEST} (\"better\"/\"worse\" for the first named, or "
      "\"inconclusive\"). FD on the digits classifier's features: "
      f"{k0['num_samples']} samples per draw against the 300 test images, mean ± SE "
      f"over {k0['test_draws']} draws, each model at its own knobs tuned on "
      f"{k0['tune_size']} train images (T for the NF; s, then T at s*, for the "
      "NIFs).",
      "",
      "Test bits/dim (s = 1), mean ± SE:",
      "",
      "| k | NF | converted | fine-tuned | from scratch | converted − NF | "
      "fine-tuned − scratch | conversion time | train log-prior gain (nats/image) |",
      "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    b = r["bits_per_dim"]
    lines.append(
        f"| {r['k']} | " + " | ".join(_pm(b[n]["mean"], b[n]["se"]) for n in
                                       ("nf", "converted", "fine_tuned", "from_scratch"))
        + f" | {_cmp(r['converted_minus_nf'])} | {_cmp(r['fine_tuned_minus_scratch'])} "
        f"| {r['convert_seconds']:.1f} s | {r['train_log_prior_gain_nats']:.3f} |")
  lines += ["", "Fine-tuning curve (test bits/dim ± SE; in brackets the paired "
            "difference to from-scratch and its verdict), and the steps to reach "
            "from-scratch: the first step whose mean is at or below it / the first "
            "step not significantly worse:", ""]
  for r in rows:
    lines.append(f"- k = {r['k']}: " + ", ".join(
        f"{c['step']}: {_pm(c['bits_per_dim'], c['se'])} "
        f"[{_cmp(c['minus_scratch'])}]" for c in r["curve"]))
    na = f"not within {r['fine_tune_steps']}"
    lines.append(
        f"  steps to reach scratch: mean at or below "
        f"{r['steps_to_mean_below_scratch'] if r['steps_to_mean_below_scratch'] is not None else na}; "
        f"not worse {r['steps_to_not_worse_than_scratch'] if r['steps_to_not_worse_than_scratch'] is not None else na}.")
  lines += ["", "Fréchet distance at each model's tuned knobs, mean ± SE (the knobs "
            "in brackets; † a knob stopped at the grid's stated limit, "
            f"{k0['limits'][1]:g}, not at an interior optimum), and each NIF − NF with its verdict (Welch):", "",
            "| k | NF | converted | fine-tuned | from scratch | converted − NF | "
            "fine-tuned − NF | scratch − NF |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    cells = [f"{_pm(v['tuned']['mean'], v['tuned']['se'], 2)} "
             f"({metrics.knob_label(v['knobs_star'])}{'†' if v['at_limit'] else ''})"
             for v in r["fd"].values()]
    lines.append(f"| {r['k']} | " + " | ".join(cells) + " | "
                 + " | ".join(_cmp(c, 2) for c in r["fd_vs_nf"].values()) + " |")
  with open(_OUT.value + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  cards.update_readme_table("README.md", registry.all_entries(registry=_REGISTRY.value))


if __name__ == "__main__":
  app.run(main)
