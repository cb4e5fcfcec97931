"""Digits (scikit-learn's 8x8x1, 17 grey levels): models that train on 2 CPU cores.

`get_config(arg)`, arg = "<model>[,overrides]" (nifzoo/configs.py): the
paper's recipe (`nifzoo.configs.base_config`) with the changes below.
Models: nf, nif4, nif8, nif16, nif32, deepnif8, deepnif16.
Example: `python launch/train.py --config=configs/digits.py:nif4,tiny --workdir=/tmp/run`.
"""

from nifzoo import configs


def get_config(arg=None):
  model, overrides = configs.parse_arg("digits", arg)
  c = configs.base_config("digits", model)
  # 1,497 training images overfit quickly: a narrow, short Glow at a high
  # learning rate, trained for 2,000 steps (bench/README.md has the sizes tried).
  c.model.steps_per_scale = 4
  c.model.width = 32  # The deep NIF too (not the paper's 512 channels).
  c.batch_size = 64
  c.total_steps = 2_000
  c.learning_rate = 1e-3
  c.warmup_steps = 200
  c.checkpoint_every = 500
  c.log_every = 100
  c.sample_every = 500
  c.eval_batches = 4
  c.eval_num_draws = 4
  if c.model.prior == "deepnif":
    # Its low-dim flow sized for k = 8 or 16: 4 x [coupling with a
    # 2-hidden-layer, 64-unit MLP -> ActNorm -> reverse], trained with the
    # N = 16 bound as in the paper.
    c.model.lowdim_layers = 4
    c.model.lowdim_hidden = 64
    c.model.lowdim_depth = 2
  return configs.override(c, overrides)
