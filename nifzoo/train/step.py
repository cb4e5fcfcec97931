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

from nifzoo import mesh as mesh_lib


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
  """Global-norm clipping then Adam on the warmup schedule, skipping non-finite steps.

  ``apply_if_finite`` leaves parameters and optimiser state as they were when a
  gradient is not finite (it never gives up) and counts the skipped steps
  (:func:`count_skip`); ``inject_hyperparams`` keeps the learning rate of the
  last applied update in the state, for logging.
  """
  adam = optax.inject_hyperparams(optax.adam)(
      learning_rate=learning_rate_schedule(config))
  return optax.apply_if_finite(
      optax.chain(optax.clip_by_global_norm(config.grad_clip), adam),
      max_consecutive_errors=_NEVER)


_NEVER = int(jnp.iinfo(jnp.int32).max)  # optax's error count saturates there.


def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of ``tree`` is finite (no NaN, no inf)."""
  ok = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(ok)) if ok else jnp.array(True)


def split_model(model: nnx.Module):
  """model -> (graphdef, params, rest)."""
  return nnx.split(model, nnx.Param, ...)


def _rng_data(seed: int):
  return jax.random.key_data(jax.random.key(seed))


def init_state(model: nnx.Module, tx, seed: int) -> tuple[Any, TrainState]:
  graphdef, params, rest = split_model(model)
  return graphdef, TrainState(jnp.zeros((), jnp.int32), params, rest,
                              tx.init(params), _rng_data(seed))


def new_train_state(config, *, abstract: bool = False):
  """The fresh run of ``config``: ``(graphdef, tx, TrainState)``.

  The model is built from ``config.seed`` (``models.seeded_rngs``), so every
  process builds the same one. ``abstract=True`` allocates nothing: the same
  tree with ``jax.ShapeDtypeStruct`` leaves (same shapes and dtypes), from
  ``nnx.eval_shape`` and ``jax.eval_shape(tx.init, ...)``, which is what
  compiling for devices that cannot hold arrays (``nifzoo.tpu``) or an Orbax
  restore target needs. ``setup.create_state`` is the concrete call.
  """
  from nifzoo import models  # pylint: disable=g-import-not-at-top
  tx = make_optimizer(config)
  build = lambda: models.build(config, rngs=models.seeded_rngs(config.seed))
  if not abstract:
    graphdef, state = init_state(build(), tx, config.seed)
    return graphdef, tx, state
  graphdef, params, rest = split_model(nnx.eval_shape(build))
  state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, rest,
                     jax.eval_shape(tx.init, params),
                     jax.eval_shape(lambda: _rng_data(config.seed)))
  return graphdef, tx, state


def count_skip(opt_state, finite):
  """``opt_state`` (``make_optimizer``'s, as it was before a step that ``finite``
  says was skipped, or after one that was applied) with ``apply_if_finite``'s
  counters for that step: ``notfinite_count`` (skipped steps in a row),
  ``total_notfinite`` (skipped steps of the run) and ``last_finite``. The train
  step skips more than the non-finite gradients ``apply_if_finite`` sees."""
  return opt_state._replace(
      notfinite_count=jnp.where(finite, 0, opt_state.notfinite_count + 1),
      last_finite=finite,
      total_notfinite=opt_state.total_notfinite + (~finite).astype(jnp.int32))


def learning_rate(opt_state):
  """The learning rate of the last applied update (``make_optimizer``'s state)."""
  clip_state, adam_state = opt_state.inner_state
  del clip_state
  return adam_state.hyperparams["learning_rate"]


def make_train_step(graphdef, tx, config):
  """Returns ``step_fn(state, images) -> (state, metrics)`` (not yet jitted).

  The loss is the mean bits/dim of the batch (for the deep NIF, the
  importance-weighted bound with the config's N). The step's randomness is
  ``fold_in(rng, step)``, so a resumed run draws the same numbers. A step whose
  loss, gradient, new parameters or new optimiser state are not finite leaves
  params and optimiser state as they were and reports ``finite = False``
  (``make_optimizer`` skips a non-finite gradient; a finite gradient can still
  overflow Adam's moments or the parameters). ``skipped_steps`` and
  ``skips_in_a_row`` are the optimiser state's counters (:func:`count_skip`).
  """

  def loss_fn(params, rest, images, key):
    model = nnx.merge(graphdef, params, rest)
    bpd = model.bits_per_dim(images, key=key)
    return jnp.mean(bpd)

  def step_fn(state: TrainState, images):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, state.rest, images,
                                              key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = (opt_state.last_finite & jnp.isfinite(loss) & all_finite(params)
              & all_finite(opt_state))
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state), (state.params, state.opt_state))
    opt_state = count_skip(opt_state, finite)
    new_state = state._replace(step=state.step + 1, params=params,
                               opt_state=opt_state)
    metrics = dict(bits_per_dim=loss, grad_norm=optax.global_norm(grads),
                   finite=finite, learning_rate=learning_rate(opt_state),
                   skipped_steps=opt_state.total_notfinite,
                   skips_in_a_row=opt_state.notfinite_count)
    return new_state, metrics

  return step_fn


def jit_train_step(graphdef, tx, config, mesh):
  """:func:`make_train_step` jitted as the training loop runs it: the state is
  donated (updated in place) and the outputs are replicated over ``mesh``.
  The TPU compile check (``nifzoo.tpu``) lowers this same program."""
  repl = mesh_lib.replicated(mesh)
  return jax.jit(make_train_step(graphdef, tx, config),
                 donate_argnums=(0,), out_shardings=(repl, repl))
