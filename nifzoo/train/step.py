"""The optimiser and the jit-compiled train step, as pure functions of state.

The model is split once into ``graphdef`` (static), ``params`` (``nnx.Param``,
trained) and ``rest`` (ActNorm init flags, the LU conv's fixed permutation and
signs, ...). A ``TrainState`` holds arrays only, so it jit-compiles, shards and
checkpoints as a plain pytree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class TrainState(NamedTuple):
  step: jax.Array          # int32 scalar: number of updates applied.
  params: Any              # nnx.State of nnx.Param.
  rest: Any                # nnx.State of every other Variable.
  opt_state: Any           # optax state.
  rng: jax.Array           # uint32 key data (raw, so Orbax can save it).


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then flat."""
  return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1)),
       optax.constant_schedule(config.learning_rate)],
      [max(config.warmup_steps, 1)])


def make_optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping followed by Adam on the warmup schedule."""
  return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.adam(learning_rate_schedule(config)))


def split_model(model: nnx.Module):
  """model -> (graphdef, params, rest)."""
  return nnx.split(model, nnx.Param, ...)


def init_state(model: nnx.Module, tx, seed: int) -> tuple[Any, TrainState]:
  graphdef, params, rest = split_model(model)
  rng = jax.random.key_data(jax.random.key(seed))
  return graphdef, TrainState(jnp.zeros((), jnp.int32), params, rest,
                              tx.init(params), rng)


def _applied_updates(opt_state):
  """The schedule's own step count (skipped non-finite steps do not advance it)."""
  states = jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
  return next(s.count for s in states if isinstance(s, optax.ScaleByScheduleState))


def make_train_step(graphdef, tx, config):
  """Returns ``step_fn(state, images) -> (state, metrics)`` (not yet jitted).

  The loss is the mean bits/dim of the batch (for the deep NIF, the
  importance-weighted bound with the config's N). The step's randomness is
  ``fold_in(rng, step)``, so a resumed run draws the same numbers. A step whose
  loss or gradient norm is not finite leaves params and optimiser state as
  they were and reports ``finite = False``.
  """
  schedule = learning_rate_schedule(config)

  def loss_fn(params, rest, images, key):
    model = nnx.merge(graphdef, params, rest)
    bpd = model.bits_per_dim(images, key=key)
    return jnp.mean(bpd)

  def step_fn(state: TrainState, images):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, state.rest, images,
                                              key)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state._replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state))
    metrics = dict(bits_per_dim=loss, grad_norm=grad_norm, finite=finite,
                   learning_rate=schedule(_applied_updates(state.opt_state)))
    return new_state, metrics

  return step_fn
