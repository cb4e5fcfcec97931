"""Fashion-MNIST (28x28x1) models, the paper's recipe (`nifzoo.configs.base_config`).

`get_config(arg)`, arg = "<model>[,overrides]" (nifzoo/configs.py).
Models: nf, nif64, nif128, nif256, nif512.
Example: `python launch/train.py --config=configs/fmnist.py:nif64,tiny --workdir=/tmp/run`.
"""

from nifzoo import configs


def get_config(arg=None):
  model, overrides = configs.parse_arg("fmnist", arg)
  return configs.override(configs.base_config("fmnist", model), overrides)
