"""A module's computation as one compiled program over a device mesh.

Single model calls use the model's own compiled methods (``nifzoo.compiled``,
as the figures do). The evaluation loops instead stream batches sharded over
the mesh's ``data`` axis and need to say where the result lives: replicated
(sums, embeddings, features: every process can read them) or sharded over the
batch (samples on their way into a feature network). :func:`on_mesh` is that
one wrapper: ``fn(module, *args, **static)`` jitted with the module's state
replicated on the mesh as an input, one program per (``fn``, module structure,
mesh, placement), so equally built modules (every checkpoint of a run) share
their compiled programs and the cache holds no arrays.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
from flax import nnx

from nifzoo import mesh as mesh_lib

_PLACEMENT = {"replicated": mesh_lib.replicated, "batch": mesh_lib.batch_sharded}


@functools.lru_cache(maxsize=32)
def _program(fn, graphdef, mesh, out: str, static_argnames: tuple):

  def program(state, *args, **kwargs):
    return fn(nnx.merge(graphdef, state), *args, **kwargs)

  program.__name__ = getattr(fn, "__name__", "program")
  return jax.jit(program, out_shardings=_PLACEMENT[out](mesh),
                 static_argnames=static_argnames)


def on_mesh(fn: Callable, module: nnx.Module, mesh=None, *,
            out: str = "replicated", static_argnames=()) -> Callable:
  """``call(*args, **kwargs) = fn(module, *args, **kwargs)``, compiled.

  Args:
    fn: a module-level function (or unbound method) of the module first; a
      new function object is a new program.
    module: its current variables are the program's input.
    mesh: default ``nifzoo.mesh.make_mesh()`` (every device).
    out: "replicated" or "batch" (sharded over the mesh's data axis).
    static_argnames: keyword arguments of ``fn`` that are Python values the
      program is specialised on (e.g. a number of draws).
  """
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  graphdef, state = nnx.split(module)
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  return functools.partial(
      _program(fn, graphdef, mesh, out, tuple(static_argnames)), state)
