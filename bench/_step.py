"""The compiled train step of a config on random images, shared by the benchmarks."""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any, Callable, NamedTuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from nifzoo import mesh as mesh_lib  # noqa: E402
from nifzoo.train import setup as setup_lib  # noqa: E402
from nifzoo.train import step as step_lib  # noqa: E402


class CompiledStep(NamedTuple):
  mesh: Any
  graphdef: Any
  tx: Any                          # the optimizer
  state: Any                       # TrainState (ActNorms not yet initialised)
  images: Callable[[], jax.Array]  # a fresh random global batch of integer images
  step: Any                        # compiled step(state, images) -> (state, metrics)
  build_s: float
  compile_s: float


def compile_step(config, batch: int, seed: int = 0) -> CompiledStep:
  """Builds ``config``'s model at ``batch`` and compiles its (donating) train step."""
  config.batch_size = batch
  mesh = mesh_lib.make_mesh()
  t0 = time.perf_counter()
  graphdef, tx, state = setup_lib.create_state(config, mesh)
  jax.block_until_ready(state)
  build_s = time.perf_counter() - t0
  rng = np.random.default_rng(seed)
  images = lambda: mesh_lib.global_batch(mesh, rng.integers(
      0, config.data.num_levels, (batch, *config.data.image_shape), np.int32))
  c = CompiledStep(mesh, graphdef, tx, state, images, None, build_s, 0.0)
  step, compile_s = compile_train_step(c, config)
  return c._replace(step=step, compile_s=compile_s)


def compile_train_step(c: CompiledStep, config, compiler_options=None):
  """(compiled donating step(state, images), compile seconds) for c's model, with
  XLA ``compiler_options`` (e.g. ``{"xla_cpu_prefer_vector_width": 512}``) if given."""
  t0 = time.perf_counter()
  step = jax.jit(step_lib.make_train_step(c.graphdef, c.tx, config),
                 donate_argnums=(0,)).lower(c.state, c.images()).compile(
                     compiler_options=compiler_options)
  return step, time.perf_counter() - t0


def initialized(c: CompiledStep):
  """c.state with every ActNorm initialised from one random batch."""
  return setup_lib.initialize_actnorms(c.graphdef, c.state, c.images(), c.mesh)
