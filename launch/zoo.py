r"""The zoo from the command line: list, show, register and export models.

  python launch/zoo.py                                   # every name, one line each
  python launch/zoo.py --list='digits-*'
  python launch/zoo.py --info=celeba-nif128              # the entry, with paper figures
  python launch/zoo.py --register=runs/my-run --registry=~/nifzoo-registry [--name=...]
  python launch/zoo.py --export=runs/my-run --out=/tmp/my-run-params [--step=...]

--registry (or $NIFZOO_REGISTRY) adds user registry directories in front of
the packaged one.
"""

import os

from absl import app
from absl import flags

_LIST = flags.DEFINE_string("list", "*", "Glob of names to list.")
_INFO = flags.DEFINE_string("info", None, "Print this entry.")
_REGISTER = flags.DEFINE_string("register", None, "Register this training workdir.")
_EXPORT = flags.DEFINE_string("export", None, "Export this workdir's variables.")
_OUT = flags.DEFINE_string("out", None, "Where --export writes the checkpoint.")
_NAME = flags.DEFINE_string("name", None, "Entry name for --register.")
_STEP = flags.DEFINE_integer("step", None, "Step of the workdir (default: newest).")
_REGISTRY = flags.DEFINE_string("registry", None, "User registry directory.")


def main(argv):
  del argv
  from nifzoo import registry, variables, zoo  # pylint: disable=g-import-not-at-top
  reg = os.path.expanduser(_REGISTRY.value) if _REGISTRY.value else None
  if _INFO.value:
    print(zoo.info(_INFO.value, registry=reg))
  elif _REGISTER.value:
    if not reg:
      raise app.UsageError("--register needs --registry=<directory>.")
    print(registry.register(_REGISTER.value, reg, name=_NAME.value, step=_STEP.value))
  elif _EXPORT.value:
    if not _OUT.value:
      raise app.UsageError("--export needs --out=<directory>.")
    print(variables.export(_EXPORT.value, _OUT.value, step=_STEP.value))
  else:
    for e in registry.all_entries(_LIST.value, reg):
      ck = "weights" if e.checkpoint else "no weights"
      bpd = e.metrics.get("test_bits_per_dim", {}).get("value")
      paper = (e.paper or {}).get("bits_per_dim")
      print(f"{e.name:20s} {ck:10s} test bits/dim {bpd if bpd is not None else '-':<8} "
            f"paper {paper if paper is not None else '-'}")


if __name__ == "__main__":
  app.run(main)
