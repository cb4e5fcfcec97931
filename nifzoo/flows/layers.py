"""The coupling network's layers: 3x3 conv, dense (a 1x1 conv), ReLU.

  conv3x3(x, kernel)  (B, H, W, I), (3, 3, I, O) -> (B, H, W, O)
                      y[b,h,w,o] = sum_{r,c,i} pad(x)[b, h+r, w+c, i] k[r, c, i, o]
                      ('SAME': one zero row and column of padding on each side)
  dense(x, kernel)    (..., I), (I, O) -> (..., O),  y = x @ kernel

The implementation is chosen by the platform the program is lowered for
(``jax.lax.platform_dependent``), not by the process's default backend: a program
traced on this CPU and compiled for TPU (``nifzoo.tpu``) gets the TPU's. On TPU and
GPU they are the native ops (``lax.conv_general_dilated``, as ``nnx.Conv``; a
``dot_general``, as ``nnx.Linear``); on CPU the matrix-product forms of
:mod:`nifzoo.flows.cpu_kernels`. Both give the same numbers and gradients
(``tests/test_conv3x3.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nifzoo.flows import cpu_kernels

_zeros = nnx.initializers.zeros


def native_conv3x3(x, kernel):
  """:func:`conv3x3` as one ``lax.conv_general_dilated`` (NHWC, HWIO)."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def native_dense(x, kernel):
  """:func:`dense` as one ``dot_general`` on the last axis of x."""
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


# Under jax.checkpoint, reverse mode keeps only x and kernel, as each implementation
# alone does; unchecked, the switch's partial evaluation would return copies of them
# as its residuals, which a scan then stacks beside the originals.


@jax.checkpoint
def conv3x3(x, kernel):
  """3x3 'SAME' convolution (module docstring): the CPU kernel or the native conv."""
  return jax.lax.platform_dependent(x, kernel, cpu=cpu_kernels.conv3x3,
                                    default=native_conv3x3)


@jax.checkpoint
def dense(x, kernel):
  """``x @ kernel`` on the last axis (module docstring): the CPU kernel or native."""
  return jax.lax.platform_dependent(x, kernel, cpu=cpu_kernels.dense,
                                    default=native_dense)


@jax.custom_jvp
def relu(x):
  """``max(x, 0)``, any shape. Its derivative ``where(y > 0, t, 0)`` is computed from
  the output y under ``jax.checkpoint``, so reverse mode keeps y (which the next
  layer's weight gradient keeps anyway) instead of a separate boolean mask of x."""
  return jnp.maximum(x, 0)


@relu.defjvp
def _relu_jvp(primals, tangents):
  y = relu(primals[0])
  return y, jax.checkpoint(lambda y, t: jnp.where(y > 0, t, 0))(y, tangents[0])


class Conv3x3(nnx.Module):
  """3x3 'SAME' conv with bias, parameters laid out as ``nnx.Conv``'s:
  ``kernel`` (3, 3, I, O) (default LeCun-normal over fan-in 9 I) and ``bias`` (O,)."""

  def __init__(self, in_features: int, out_features: int, *,
               kernel_init=nnx.initializers.lecun_normal(),
               bias_init=nnx.initializers.zeros, rngs: nnx.Rngs):
    self.kernel = nnx.Param(kernel_init(
        rngs.params(), (3, 3, in_features, out_features), jnp.float32))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32))

  def __call__(self, x):
    return conv3x3(x, self.kernel[...]) + self.bias[...]


class Dense(nnx.Module):
  """``nnx.Linear``'s parameters (``kernel`` (I, O), LeCun-normal; ``bias`` (O,),
  zeros) applied with :func:`dense`: (..., I) -> (..., O)."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(
        rngs.params(), (in_features, out_features), jnp.float32))
    # A key is drawn for the bias as nnx.Linear does, so that every later draw
    # (and so every initial parameter of a model) is the same as with nnx.Linear.
    self.bias = nnx.Param(_zeros(rngs.params(), (out_features,), jnp.float32))

  def __call__(self, x):
    return dense(x, self.kernel[...]) + self.bias[...]
