"""The deep NIF's IW-bound curve (nifzoo/evaluate/iw_bound.py): every N on the
same images and draws, each value the model's own bound at that image's key."""

import jax
import numpy as np
import pytest
from flax import nnx

from nifzoo import configs
from nifzoo import data
from nifzoo import models
from nifzoo.evaluate import iw_bound

_INDICES = np.arange(3, 19, 2)  # 8 test images
_NS = (1, 4)


@pytest.fixture(scope="module")
def deep_nif():
  c = configs.get_config("digits-nif4,tiny")
  c.model.prior = "deepnif"
  m = models.build(c, rngs=nnx.Rngs(2))
  src = data.get_source(c.data, "train")
  m.initialize(np.stack([src[i]["image"] for i in range(64)]).astype(np.int32))
  return m, c


def test_curve_is_the_bound_at_each_n_on_common_draws(deep_nif):
  m, c = deep_nif
  key = jax.random.key(4)
  r = iw_bound.iw_bound_curve(m, c.data, "test", num_samples=_NS, num_draws=2,
                              indices=_INDICES, batch_size=8, key=key)
  src = data.get_source(c.data, "test")
  f = jax.jit(lambda x, k, n: m.bits_per_dim(x, key=k, num_samples=n),
              static_argnums=2)
  for j, n in enumerate(_NS):  # Oracle: one image, one draw, its own key.
    want = np.array([[float(f(src[int(i)]["image"][None].astype(np.int32),
                              jax.random.fold_in(jax.random.fold_in(key, int(i)), d),
                              n)[0]) for d in range(2)] for i in _INDICES])
    assert r["bits_per_dim"][j] == pytest.approx(want.mean(), rel=1e-5)
    per_image = want.mean(axis=1)
    assert r["se_bits_per_dim"][j] == pytest.approx(
        per_image.std(ddof=1) / np.sqrt(len(per_image)), rel=1e-4)
  assert r["num_samples"] == list(_NS) and r["num_images"] == len(_INDICES)
  assert r["decrease"] == pytest.approx([r["bits_per_dim"][0] - r["bits_per_dim"][1]])


def test_curve_refuses_an_exact_density_and_unordered_n(deep_nif):
  m, c = deep_nif
  with pytest.raises(ValueError, match="increasing"):
    iw_bound.iw_bound_curve(m, c.data, num_samples=(4, 1), indices=_INDICES)
  nif = models.build(configs.get_config("digits-nif4,tiny"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="log-likelihood is exact"):
    iw_bound.iw_bound_curve(nif, c.data, num_samples=(1,), indices=_INDICES)
