"""fmnist models: `get_config(arg)` with arg = "<model>[,overrides]" (see nifzoo/configs.py).

Models: nf, nif64, nif128, nif256, nif512.
Example: `python launch/train.py --config=configs/fmnist.py:nif64,tiny --workdir=/tmp/run`.
"""

from nifzoo import configs


def get_config(arg=None):
  return configs.build_config("fmnist", arg)
