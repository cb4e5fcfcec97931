"""Whole-split bits/dim: every image once, the last batch padded and masked."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nifzoo import configs
from nifzoo import data
from nifzoo import evaluate
from nifzoo import models


class _Source:
  """301 digits: the train split's first 301 images, in order."""

  def __init__(self, n=301):
    c = configs.get_config("digits-nf")
    self.src = data.get_source(c.data, "train")
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.src[i]


@pytest.fixture
def split_301(monkeypatch):
  src = _Source()
  real = data.get_source
  monkeypatch.setattr(data, "get_source",
                      lambda cfg, split: src if split == "odd" else real(cfg, split))
  return src


@pytest.fixture(scope="module")
def model():
  c = configs.get_config("digits-nif4,tiny")
  m = models.build(c, rngs=nnx.Rngs(0))
  src = data.get_source(c.data, "train")
  m.initialize(np.stack([src[i]["image"] for i in range(64)]).astype(np.int32))
  return m, c


@pytest.mark.parametrize("batch_size", [64, 301, 512])
def test_eval_batches_cover_the_split_once_in_order(split_301, batch_size):
  c = configs.get_config("digits-nf")
  got, n = [], 0
  for images, labels, mask in evaluate.eval_batches(c.data, "odd", batch_size):
    assert images.shape == (batch_size, 8, 8, 1) and images.dtype == np.int32
    assert mask.shape == (batch_size,)
    got.append(images[mask])
    n += int(mask.sum())
  want = np.stack([split_301[i]["image"] for i in range(301)])
  assert n == 301
  np.testing.assert_array_equal(np.concatenate(got), want)


def test_two_processes_read_disjoint_halves_of_each_batch(split_301):
  c = configs.get_config("digits-nf")
  parts = [list(evaluate.eval_batches(c.data, "odd", 64, process_index=p,
                                      process_count=2)) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == math.ceil(301 / 64)
  rebuilt = np.concatenate([np.concatenate([a[0][a[2]], b[0][b[2]]])
                            for a, b in zip(*parts)])
  want = np.stack([split_301[i]["image"] for i in range(301)])
  np.testing.assert_array_equal(rebuilt, want)


def test_bits_per_dim_counts_301_and_matches_a_direct_average(split_301, model):
  """Oracle: one unpadded call on all 301 images, averaged over many draws.

  The first image is made the split's outlier (highest bits/dim), so counting
  the padding copies of it would move the mean far beyond the Monte Carlo error.
  """
  m, c = model
  images = np.stack([split_301[i]["image"] for i in range(301)]).astype(np.int32)
  f = jax.jit(lambda x, k: m.bits_per_dim(x, key=k))
  direct = np.mean([np.asarray(f(images, jax.random.key(100 + j)))
                    for j in range(16)], axis=0)
  order = np.argsort(-direct)               # outlier first
  r = evaluate.bits_per_dim(m, c.data, "odd", batch_size=64, num_draws=16,
                            indices=order)
  assert r["num_images"] == 301 and r["num_draws"] == 16
  assert r["bits_per_dim"] == pytest.approx(float(direct.mean()), abs=2e-3)
  with_padding = (direct.sum() + (64 * 5 - 301) * direct[order[0]]) / 320
  assert abs(with_padding - direct.mean()) > 5 * 2e-3  # the test can tell
  # Fixed key: the same call gives the same number.
  r2 = evaluate.bits_per_dim(m, c.data, "odd", batch_size=64, num_draws=16,
                             indices=order)
  assert r2["bits_per_dim"] == r["bits_per_dim"]


def test_bits_per_dim_refuses_bad_input(model):
  m, c = model
  with pytest.raises(ValueError, match="noise_scale must be > 0"):
    evaluate.bits_per_dim(m, c.data, "test", noise_scale=0.0)
  with pytest.raises(ValueError, match="num_draws"):
    evaluate.bits_per_dim(m, c.data, "test", num_draws=0)
  with pytest.raises(ValueError, match="indices must lie"):
    evaluate.bits_per_dim(m, c.data, "test", indices=[0, 300])


def test_evaluating_again_reuses_the_program_and_uses_the_new_parameters(
    split_301, model, monkeypatch):
  """A second evaluation (another s, key, and a model of the same structure with
  other parameters, as at a later checkpoint) traces the model once in all, and
  each result is that model's own (oracle: a direct jitted average)."""
  m, c = model
  graphdef, state = nnx.split(m)
  other = nnx.merge(graphdef, jax.tree.map(
      lambda x: x * 1.05 if jnp.issubdtype(x.dtype, jnp.floating) else x, state))
  traces = []
  real = type(m).bits_per_dim

  def counted(self, *args, **kwargs):
    traces.append(1)
    return real(self, *args, **kwargs)

  monkeypatch.setattr(type(m), "bits_per_dim", counted)
  images = np.stack([split_301[i]["image"] for i in range(301)]).astype(np.int32)
  results = []
  for model_, s in ((m, 1.0), (other, 0.9), (other, 0.9)):
    r = evaluate.bits_per_dim(model_, c.data, "odd", batch_size=128, num_draws=4,
                              noise_scale=s, key=jax.random.key(7))
    results.append(r["bits_per_dim"])
  assert len(traces) == 1
  direct_fn = jax.jit(lambda st, x, s: real(nnx.merge(graphdef, st), x,
                                            key=jax.random.key(1), noise_scale=s))
  direct = [direct_fn(nnx.state(mm), images, s) for mm, s in ((m, 1.0), (other, 0.9))]
  assert results[1] == results[2]
  assert abs(results[0] - results[1]) > 10 * 2e-2     # the test can tell them apart
  for got, d in zip(results, direct):
    assert got == pytest.approx(float(jnp.mean(d)), abs=2e-2)
