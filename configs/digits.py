"""digits models: `get_config(arg)` with arg = "<model>[,overrides]" (see nifzoo/configs.py).

Models: nf, nif4, nif8, nif16, nif32, deepnif8, deepnif16.
Example: `python launch/train.py --config=configs/digits.py:nif4,tiny --workdir=/tmp/run`.
"""

from nifzoo import configs


def get_config(arg=None):
  return configs.build_config("digits", arg)
