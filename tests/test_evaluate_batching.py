"""bits/dim does not depend on how the evaluation is batched.

Draw d of the image with index i in its split is dequantised with the key
fold_in(fold_in(key, i), d), whatever the batch size, the subset scored or the
number of devices: the oracle is one direct call per image with that key.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from nifzoo import configs
from nifzoo import data
from nifzoo import evaluate

import helpers

_N = 40  # Test images scored (indices below), 3 draws each.
_INDICES = np.arange(7, 7 + 2 * _N, 2)

_BUILD = """
import numpy as np
from flax import nnx
from nifzoo import configs, data, models
c = configs.get_config("digits-nif4,tiny")
m = models.build(c, rngs=nnx.Rngs(3))
src = data.get_source(c.data, "train")
m.initialize(np.stack([src[i]["image"] for i in range(64)]).astype(np.int32))
"""


def _tiny():
  scope = {}
  exec(_BUILD, scope)  # pylint: disable=exec-used
  return scope["m"], scope["c"]


@pytest.fixture(scope="module")
def tiny():
  return _tiny()


@pytest.fixture(scope="module")
def by_batch(tiny):
  m, c = tiny
  return {b: evaluate.bits_per_dim(m, c.data, "test", batch_size=b, num_draws=3,
                                   indices=_INDICES, key=jax.random.key(11))
          for b in (16, 64, 256)}


def test_each_value_is_one_image_at_its_own_key(tiny, by_batch):
  m, c = tiny
  src = data.get_source(c.data, "test")
  f = jax.jit(lambda x, k: m.bits_per_dim(x, key=k))
  r = by_batch[16]
  np.testing.assert_array_equal(r["indices"], _INDICES)
  want = np.array([[float(f(src[int(i)]["image"][None].astype(np.int32),
                            jax.random.fold_in(jax.random.fold_in(
                                jax.random.key(11), int(i)), d))[0])
                    for d in range(3)] for i in _INDICES])
  np.testing.assert_allclose(r["values"], want, rtol=1e-5)
  assert r["bits_per_dim"] == pytest.approx(want.mean(), rel=1e-6)
  per_image = want.mean(axis=1)
  assert r["se_bits_per_dim"] == pytest.approx(
      np.sqrt(np.sum((per_image - per_image.mean())**2) / (_N - 1) / _N), rel=1e-5)


def test_the_same_at_batch_16_64_256_and_on_a_subset(tiny, by_batch):
  ref = by_batch[16]
  for b in (64, 256):
    np.testing.assert_allclose(by_batch[b]["values"], ref["values"], rtol=1e-6)
    assert by_batch[b]["bits_per_dim"] == pytest.approx(ref["bits_per_dim"], rel=1e-6)
  m, c = tiny  # Another subset, other batch boundaries: the same rows.
  sub = evaluate.bits_per_dim(m, c.data, "test", batch_size=16, num_draws=3,
                              indices=_INDICES[5::3], key=jax.random.key(11))
  np.testing.assert_allclose(sub["values"], ref["values"][5::3], rtol=1e-6)


_DEVICES = _BUILD + """
import json, sys, jax
from nifzoo import evaluate, mesh as mesh_lib
idx = json.loads(sys.argv[1])
mesh = mesh_lib.make_mesh(jax.devices()[:2])
r = evaluate.bits_per_dim(m, c.data, "test", batch_size=64, num_draws=3,
                          indices=idx, key=jax.random.key(11), mesh=mesh)
print(json.dumps(r["values"].tolist()))
"""


@pytest.mark.slow
def test_the_same_on_1_and_2_devices(by_batch):
  env = helpers.env_with_devices(2)
  out = subprocess.run([sys.executable, "-c", _DEVICES, json.dumps(_INDICES.tolist())],
                       capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  # Built in another process, scored on 2 devices: as here on one.
  got = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(np.asarray(got), by_batch[64]["values"], rtol=1e-6)
