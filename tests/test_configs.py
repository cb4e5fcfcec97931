"""Every named config builds abstractly with the authors' parameter counts."""

import jax
import numpy as np
import pytest
from flax import nnx

from nifzoo import configs
from nifzoo import models


def glow_param_count(shape, num_scales, steps, width):
  """The authors' Glow, from its architecture (not from our code).

  Per step on c channels: ActNorm 2c; 1x1 conv c^2 (LU: c(c-1)/2 + c(c-1)/2 + c);
  affine coupling 3x3 conv c/2->F (+bias), 1x1 conv F->F (+bias), zero 3x3 conv
  F->c (+bias). Scale i works on c = 4 C 2^i channels (squeeze, then half of the
  channels recurse).
  """
  _, _, channels = shape
  total = 0
  for i in range(num_scales):
    c, f = 4 * channels * 2 ** i, width
    step = 2 * c + c * c + (9 * (c // 2) * f + f) + (f * f + f) + (9 * f * c + c)
    total += steps * step
  return total


def lowdim_param_count(k, layers, hidden, depth):
  """layers x [affine coupling (MLP k/2 -> hidden^depth -> k), ActNorm(k)]."""
  mlp = (k // 2) * hidden + hidden + (depth - 1) * (hidden * hidden + hidden)
  mlp += hidden * k + k
  return layers * (mlp + 2 * k)


def expected_params(config):
  m, d = config.model, config.data
  dim = int(np.prod(d.image_shape))
  total = glow_param_count(d.image_shape, m.num_scales, m.steps_per_scale, m.width)
  if m.prior in ("nif", "deepnif"):
    k = m.latent_dim
    total += dim * k + dim + (dim if m.nif_bias else 0)
  if m.prior == "deepnif":
    total += lowdim_param_count(m.latent_dim, m.lowdim_layers, m.lowdim_hidden,
                                m.lowdim_depth)
  return total


def count_params(model):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_formula_matches_authors_counts():
  # The authors' Glow: CelebA 26.66 M, CIFAR-10 14.38 M, Fashion-MNIST 2.78 M.
  for name, millions in [("celeba-nf", 26.66), ("cifar10-nf", 14.38),
                         ("fmnist-nf", 2.78)]:
    c = configs.get_config(name)
    assert expected_params(c) / 1e6 == pytest.approx(millions, abs=0.005)


@pytest.mark.parametrize("name", configs.names())
def test_named_config_builds_abstractly(name):
  config = configs.get_config(name)
  model = nnx.eval_shape(lambda: models.build(config, rngs=nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(model))
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert count_params(model) == expected_params(config)


def test_paper_values():
  c = configs.get_config("celeba-nif128")
  assert c.data.bits == 3 and c.data.num_levels == 8
  assert tuple(c.data.image_shape) == (64, 64, 3) and c.model.num_scales == 5
  assert (c.model.steps_per_scale, c.model.width) == (16, 256)
  assert (c.learning_rate, c.warmup_steps, c.batch_size, c.grad_clip) == (
      1e-4, 10_000, 32, 5.0)
  assert c.model.squeeze == "channel_major"
  assert configs.get_config("cifar10-nf").model.num_scales == 4
  assert configs.get_config("fmnist-nif64").model.num_scales == 2
  deep = configs.get_config("celeba-deepnif128")
  assert (deep.model.prior, deep.model.latent_dim, deep.model.width) == (
      "deepnif", 128, 512)
  assert (deep.model.lowdim_layers, deep.model.lowdim_hidden,
          deep.model.lowdim_depth, deep.model.num_iw_samples) == (10, 1024, 3, 16)


def test_overrides_and_entry_points():
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "cifar10.py")
  spec = importlib.util.spec_from_file_location("cifar", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("nif64,tiny,bits=5,k=32")
  assert c.data.num_levels == 32 and c.model.latent_dim == 32
  assert c.model.steps_per_scale < 16 and c.model.width < 256
  assert configs.get_config("digits-nif16").data.num_levels == 17
  # unroll (how the Glow's loops compile) is not wiring: checkpoints load either way.
  from nifzoo import models
  rolled, unrolled = (configs.get_config(f"cifar10-nf{u}") for u in ("", ",unroll=true"))
  assert rolled.model.unroll is False and unrolled.model.unroll is True
  assert models.wiring(rolled) == models.wiring(unrolled)


def test_unknown_names_suggest_close_matches():
  with pytest.raises(ValueError, match="celeba-nif128"):
    configs.get_config("celeba-nif182")
  with pytest.raises(ValueError, match="Known"):
    configs.get_config("mnist-nf")
  with pytest.raises(ValueError, match="override"):
    configs.get_config("digits-nif16,huge")
  assert "celeba-deepnif128" in configs.names("celeba-*")
  assert configs.names("digits-*") == [
      "digits-nf", "digits-nif4", "digits-nif8", "digits-nif16", "digits-nif32",
      "digits-deepnif8", "digits-deepnif16"]


def test_importing_configs_does_not_import_jax():
  """Config files import nifzoo.configs: loading one must stay cheap."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = (
      "import importlib.util, sys\n"
      "import nifzoo.configs\n"
      f"spec = importlib.util.spec_from_file_location('c', {os.path.join(root, 'configs', 'celeba.py')!r})\n"
      "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
      "assert mod.get_config('nif128').data.num_levels == 8\n"
      "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
      "{'jax', 'jaxlib', 'flax', 'grain', 'orbax', 'tensorflow', 'tensorflow_datasets'})\n"
      "print(heavy)\n")
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]", out.stdout


def test_dataset_facts_are_in_one_place():
  from nifzoo.data import config as data_config
  assert set(configs.MODELS) == set(data_config.DATASETS)
  for short, info in data_config.DATASETS.items():
    c = configs.get_config(f"{short}-nf")
    assert tuple(c.data.image_shape) == info.image_shape
    assert c.model.num_scales == info.num_scales and c.data.name == info.name


def test_config_files_and_names_agree():
  """``--config=configs/<ds>.py:<arg>`` and ``configs.get_config("<ds>-<arg>")``
  are one recipe (the file), the tiny preset and shortcuts applied in order."""
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "digits.py")
  spec = importlib.util.spec_from_file_location("digits_cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  for arg in ("nif16", "nif16,tiny", "deepnif8,tiny,width=4", "nf,k=3"):
    want = configs.get_config(f"digits-{arg}").to_dict()
    assert mod.get_config(arg).to_dict() == want
    # configs.load (python -m nifzoo.tpu --config=...): a file or a name.
    assert configs.load(f"{path}:{arg}").to_dict() == want
    assert configs.load(f"digits-{arg}").to_dict() == want
  c = configs.load(path)  # No arg: the dataset's first model.
  assert c.name == "digits-nf"
  configs.set_field(c, "model.width", configs.parse_value("48"))
  configs.set_field(c, "tensorboard", configs.parse_value("false"))
  assert (c.model.width, c.tensorboard) == (48, False)
  tiny = configs.get_config("digits-nif16,tiny")
  for key, value in configs.PRESETS["tiny"].items():
    node = tiny
    for part in key.split("."):
      node = node[part]
    assert node == value, key
  c = configs.get_config("digits-deepnif16")
  assert (c.model.width, c.model.lowdim_hidden) == (32, 64)
  assert configs.get_config("digits-nif16").model.lowdim_hidden == 1024
  assert configs.get_config("celeba-deepnif128").model.width == 512
