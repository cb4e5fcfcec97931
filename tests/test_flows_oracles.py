"""Shared oracles for the flow tests (dense Jacobians, parameter perturbation).

Not tests itself: imported by tests/test_flows_*.py (its name keeps it among the
flow files)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def rngs(seed: int = 0) -> nnx.Rngs:
  """Rngs with "rbg" keys: threefry's random ops take 1-2 s each to compile on this
  CPU, rbg's ~0.15 s, which keeps the suite fast. The layers accept either."""
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def num_params(model) -> int:
  """Number of trainable scalars (works on nnx.eval_shape models too)."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def perturb(model, seed: int, scale: float = 0.1):
  """Adds N(0, scale^2) noise to every nnx.Param so zero-init layers are non-trivial.

  The noise is drawn and added with numpy: no per-shape XLA compiles.
  """
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  leaves = [jnp.asarray(np.asarray(l) + scale * rng.standard_normal(l.shape),
                        l.dtype) for l in leaves]
  nnx.update(model, jax.tree.unflatten(treedef, leaves))
  return model


def normal(shape, seed=0, loc=0.0, scale=1.0):
  """float32 N(loc, scale^2) test input drawn with numpy."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(loc + scale * rng.standard_normal(shape), jnp.float32)


def _slogdet64(jac):
  jac = np.asarray(jac, np.float64)
  sign, logdet = np.linalg.slogdet(jac.reshape(jac.shape[0], jac.shape[1], -1))
  assert np.all(sign != 0), "singular Jacobian"
  return logdet


def dense_log_abs_det(fn, x):
  """log|det d fn(x_i)/d x_i| per example from the dense jacfwd Jacobian (float64)."""
  jac = jax.jit(jax.vmap(jax.jacfwd(lambda xi: fn(xi[None])[0].reshape(-1))))(x)
  return _slogdet64(jac)


def assert_bijection(layer, x, *, atol_inv=1e-4, atol_ld=2e-3):
  """inverse(forward(x)) == x and log_det == log|det J| from jax.jacfwd.

  Everything runs in one jit (op-by-op dispatch is slow on this CPU); the layer
  enters it as (graphdef, state) and is rebuilt inside with ``nnx.merge``.
  """
  graphdef, state = nnx.split(layer)

  @jax.jit
  def run(state, x):
    m = nnx.merge(graphdef, state)
    z, log_det = m.forward(x)
    jac = jax.vmap(jax.jacfwd(lambda xi: m.forward(xi[None])[0].reshape(-1)))(x)
    return z, log_det, m.inverse(z), jac

  z, log_det, x_rec, jac = run(state, x)
  assert log_det.shape == (x.shape[0],)
  assert log_det.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(x_rec), np.asarray(x), atol=atol_inv, rtol=0)
  np.testing.assert_allclose(np.asarray(log_det), _slogdet64(jac), atol=atol_ld,
                             rtol=1e-4)
  return z, log_det
