r"""NF -> NIF conversion on digits, end to end: one command.

  python launch/convert_digits.py            # after launch/build_registry.py

For k in 4, 8, 16, 32:
  1. converts the shipped `digits-nf` into a NIF-k (closed form, no training)
     and registers it as `digits-nif{k}-from-nf`;
  2. fine-tunes that with the project's launcher for --steps steps
     (`--config.init_from`), scoring the whole test split at every
     --every steps, and registers the result as `digits-nif{k}-from-nf-ft`;
  3. runs the noise-scale sweep (the `s_sweep` evaluation of
     `nifzoo.evaluate.run`, as `launch/evaluate.py --evals=s_sweep`: s chosen
     on a train subsample, Fréchet distance on the digits classifier's
     features reported on test) for every model of the table that lacks it,
     writing the metrics into its entry;
then writes docs/results-convert-digits.md and docs/results-convert-digits.json:
test bits/dim and FD at the tuned s of the NF, the converted NIF-k, the
fine-tuned one (and its bits/dim curve) and the from-scratch `digits-nif{k}`,
with the conversion times.
"""

import json
import os
import shutil
import subprocess
import sys

from absl import app
from absl import flags

_KS = flags.DEFINE_list("ks", ["4", "8", "16", "32"], "Latent dimensions.")
_STEPS = flags.DEFINE_integer("steps", 500, "Fine-tuning steps.")
_EVERY = flags.DEFINE_integer("every", 100, "Score the test split every this many steps.")
_LR = flags.DEFINE_float("lr", 3e-4, "Fine-tuning learning rate.")
_RUNS = flags.DEFINE_string("runs", "runs/convert", "Workdir root.")
_REGISTRY = flags.DEFINE_string("registry", "registry", "Registry to write.")
_OUT = flags.DEFINE_string("out", "docs/results-convert-digits", "Results files (.md, .json).")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd):
  print(" ".join(cmd), flush=True)
  subprocess.run([sys.executable] + cmd, check=True, cwd=_ROOT)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from nifzoo import cards, evaluate, registry, zoo  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import metrics  # pylint: disable=g-import-not-at-top
  os.chdir(_ROOT)
  command = " ".join(["python", "launch/convert_digits.py"] + sys.argv[1:])
  rows = []
  for k in map(int, _KS.value):
    conv_dir = os.path.join(_RUNS.value, f"digits-nif{k}-from-nf")
    ft_dir = conv_dir + "-ft"
    for d in (conv_dir, ft_dir):
      if os.path.exists(d):
        shutil.rmtree(d)
    _run(["launch/convert.py", "--from=digits-nf", f"--k={k}", f"--out={conv_dir}",
          f"--register={_REGISTRY.value}"])
    _run(["launch/train.py", f"--config=configs/digits.py:nif{k}",
          f"--config.init_from={conv_dir}", f"--workdir={ft_dir}",
          f"--config.total_steps={_STEPS.value}", f"--config.learning_rate={_LR.value}",
          "--config.warmup_steps=50", f"--config.checkpoint_every={_EVERY.value}",
          f"--config.keep_checkpoints={_STEPS.value // _EVERY.value + 1}",
          f"--config.sample_every={_STEPS.value}",
          f"--register={_REGISTRY.value}", f"--name=digits-nif{k}-from-nf-ft"])
    curve = []
    for step in range(_EVERY.value, _STEPS.value + 1, _EVERY.value):
      m = zoo.load(ft_dir, step=step)
      # As the training loop's final evaluation (same batches, key and draws).
      r = evaluate.bits_per_dim(m, m.config.data, "test",
                                batch_size=m.config.batch_size,
                                num_draws=m.config.eval_num_draws,
                                key=jax.random.key(m.config.seed + 3))
      curve.append({"step": step, "test_bits_per_dim": r["bits_per_dim"]})
    report = json.load(open(os.path.join(conv_dir, "convert.json")))
    rows.append({"k": k, "fine_tune_steps": _STEPS.value, "curve": curve,
                 "convert_seconds": report["seconds"],
                 "train_log_prior_gain_nats": report["train_log_prior_nif"]
                                              - report["train_log_prior_nf"],
                 "sigma2": report["sigma2_min"]})
  fd_name = metrics.FD.format(features="classifier")
  names = ["digits-nf"] + [f"digits-nif{r['k']}{suffix}" for r in rows
                           for suffix in ("-from-nf", "-from-nf-ft", "")]
  for name in names:
    if fd_name not in registry.find(name, _REGISTRY.value).metrics:
      evaluate.run(name, {"evals": {"s_sweep": {}}, "registry": _REGISTRY.value,
                          "outdir": f"{_RUNS.value}/eval/{name}",
                          "write_metrics": _REGISTRY.value, "command": command})
  entry = lambda name: registry.find(name, _REGISTRY.value)
  bpd = lambda name: entry(name).metrics[metrics.BPD]["value"]
  fd = lambda name: entry(name).metrics[fd_name]
  nf_bpd = bpd("digits-nf")
  for r in rows:
    k = r["k"]
    conv, ft, scratch = (f"digits-nif{k}-from-nf", f"digits-nif{k}-from-nf-ft",
                         f"digits-nif{k}")
    curve_bpd = [(0, bpd(conv))] + [(c["step"], c["test_bits_per_dim"])
                                    for c in r["curve"]]
    r.update({
        "nf": nf_bpd, "converted": bpd(conv), "fine_tuned": bpd(ft),
        "from_scratch": bpd(scratch),
        "steps_to_match_scratch": next(
            (step for step, v in curve_bpd if v <= bpd(scratch)), None),
        "fd": {n: {"value": fd(n)["value"], "s_star": fd(n).get("s_star")}
               for n in ("digits-nf", conv, ft, scratch)}})
  with open(_OUT.value + ".json", "w") as f:
    json.dump({"rows": rows, "command": "python launch/convert_digits.py",
               "fine_tune_lr": _LR.value, "fd_metric": fd_name}, f, indent=2)
  lines = [
      "# NF -> NIF conversion on digits",
      "",
      "Generated by `python launch/convert_digits.py` from the registry entries "
      "it writes (test bits/dim on all 300 test digits, 4 dequantisation draws, "
      "s = 1). *Converted*: `digits-nf`'s Glow with a Gaussian NIF prior fitted "
      "in closed form (PPCA, docs/math.md §7), no training. *Fine-tuned*: that, "
      f"trained {_STEPS.value} more steps at lr {_LR.value:g}. *From scratch*: "
      "the shipped `digits-nif{k}` (2,000 steps). FD: Fréchet distance of "
      "samples to the test split on the digits classifier's features, at the "
      "noise scale s* chosen on a train subsample (`launch/evaluate.py "
      "--evals=s_sweep`; the NF has no s).",
      "",
      "Test bits/dim (s = 1):",
      "",
      "| k | NF | converted | fine-tuned | from scratch | fine-tuning steps to reach scratch | conversion time | train log-prior gain (nats/image) |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    match = (f"{r['steps_to_match_scratch']}"
             if r["steps_to_match_scratch"] is not None
             else f"not within {r['fine_tune_steps']}")
    lines.append(
        f"| {r['k']} | {r['nf']:.4f} | {r['converted']:.4f} | {r['fine_tuned']:.4f} | "
        f"{r['from_scratch']:.4f} | {match} | {r['convert_seconds']:.1f} s | "
        f"{r['train_log_prior_gain_nats']:.3f} |")
  lines += ["", "Fréchet distance at the tuned s (s* in brackets):", "",
            "| k | NF | converted | fine-tuned | from scratch |", "|---|---|---|---|---|"]
  for r in rows:
    cells = [f"{v['value']:.3f}" + (f" ({v['s_star']:.2f})"
                                    if v.get("s_star") is not None else "")
             for v in r["fd"].values()]
    lines.append(f"| {r['k']} | " + " | ".join(cells) + " |")
  lines += ["", "Fine-tuning curves (test bits/dim every "
            f"{_EVERY.value} steps):", ""]
  for r in rows:
    lines.append(f"- k = {r['k']}: " + ", ".join(
        f"{c['step']}: {c['test_bits_per_dim']:.4f}" for c in r["curve"]))
  with open(_OUT.value + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  cards.update_readme_table("README.md", registry.all_entries(registry=_REGISTRY.value))


if __name__ == "__main__":
  app.run(main)
