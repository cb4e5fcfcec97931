r"""Converts a trained normalizing flow into a NIF-k in closed form (no training).

  python launch/convert.py --from=digits-nf --k=16 --out=runs/digits-nif16-from-nf
  python launch/train.py --config=configs/digits.py:nif16 \
      --config.init_from=runs/digits-nif16-from-nf --workdir=runs/digits-nif16-ft

--from is a registry name or a training workdir. --out receives config.json,
variables/ (an Orbax checkpoint of the NIF's variables: the NF's Glow and the
fitted prior) and convert.json (the fit's report); `zoo.load(--out)` loads it
and `--config.init_from` fine-tunes it. --register writes a registry entry.
See nifzoo/convert.py and docs/math.md §7.
"""

import json
import sys

from nifzoo import runtime

# Before jax loads: nifzoo's CPU defaults, as launch/train.py (nifzoo/runtime.py).
runtime.reexec_with_defaults()

from absl import app
from absl import flags

_FROM = flags.DEFINE_string("from", None, "Registry name or workdir of a trained NF.")
_K = flags.DEFINE_integer("k", None, "Latent dimension of the NIF.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_NOISE = flags.DEFINE_enum("noise", "isotropic", ["isotropic", "diagonal"],
                           "Sigma: isotropic (PPCA) or diagonal (factor analysis).")
_SPLIT = flags.DEFINE_string("split", "train", "Split whose latents are fitted.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Dequantisation key of the latents.")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry to look --from up in.")
_REGISTER = flags.DEFINE_string("register", None, "Write an entry into this registry.")
_NAME = flags.DEFINE_string("name", None, "Entry name (default: <dataset>-nif<k>-from-nf).")
flags.mark_flags_as_required(["from", "k", "out"])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from nifzoo import cards, convert, evaluate, registry, zoo  # pylint: disable=g-import-not-at-top
  from nifzoo.evaluate import metrics  # pylint: disable=g-import-not-at-top

  nf = zoo.load(_FROM.value, registry=_REGISTRY.value)
  model, report = convert.nf_to_nif(nf, _K.value, noise=_NOISE.value,
                                    split=_SPLIT.value, batch_size=_BATCH.value,
                                    key=jax.random.key(_SEED.value))
  report["from"] = _FROM.value
  convert.save_workdir(model, report, _OUT.value)  # Local or gs://.
  config = model.config.as_configdict()
  print(json.dumps(report, indent=2))
  if _REGISTER.value:
    command = " ".join(["python"] + sys.argv)
    result = evaluate.bits_per_dim(model, config.data, "test",
                                   num_draws=config.eval_num_draws)
    path = registry.register(
        _OUT.value, _REGISTER.value, name=_NAME.value or config.name,
        metrics=metrics.bits_per_dim_metric(result, command),
        card=converted_card(config, report),
        training={"command": command, "steps": 0,
                  "wall_time_s": report["seconds"],
                  "hardware": cards.hardware_string(),
                  "converted_from": _FROM.value, "fit": report["method"],
                  "noise": report["noise"]})
    print(f"registered {path}")


def converted_card(config, report: dict) -> dict:
  """The registry card of a converted model: what it was converted from, and how."""
  from nifzoo import cards  # pylint: disable=g-import-not-at-top
  card = cards.default_card(config)
  fit = {"isotropic": "probabilistic PCA", "diagonal": "factor analysis (EM)"}
  m = config.model
  card["training"] = (
      f"Converted from {report['from']} without a gradient step: its Glow "
      f"({m.num_scales} scales x {m.steps_per_scale} steps, coupling width "
      f"{m.width}) unchanged, and a Gaussian NIF prior with k = {report['latent_dim']} "
      f"fitted in closed form ({fit[report['noise']]}, {report['method']}) to the "
      f"flow latents of {report['num_latents']} train images (docs/math.md §7).")
  return card


if __name__ == "__main__":
  app.run(main)
