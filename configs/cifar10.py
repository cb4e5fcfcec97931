"""CIFAR-10 (32x32x3) models, the paper's recipe (`nifzoo.configs.base_config`).

`get_config(arg)`, arg = "<model>[,overrides]" (nifzoo/configs.py).
Models: nf, nif64, nif128, nif256, nif512.
Example: `python launch/train.py --config=configs/cifar10.py:nif64,tiny --workdir=/tmp/run`.
"""

from nifzoo import configs


def get_config(arg=None):
  model, overrides = configs.parse_arg("cifar10", arg)
  return configs.override(configs.base_config("cifar10", model), overrides)
