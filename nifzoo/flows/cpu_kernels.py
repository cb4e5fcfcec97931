"""The coupling network's 3x3 conv and dense layer as XLA:CPU runs them fastest.

On XLA:CPU native convolutions of the Glow's shapes run far below matmul speed,
and the convolutions autodiff emits for their gradient run as a naive loop inside a
scan's ``while``; the products XLA:CPU runs slowly on some shapes are formed the
fast way round. Every choice here is measured in ``bench/README.md`` ("The CPU
kernels"); :mod:`nifzoo.flows.layers` uses these functions on CPU only.

  conv3x3(x, kernel)  (B, H, W, I), (3, 3, I, O) -> (B, H, W, O), 'SAME'
  dense(x, kernel)    (..., I), (I, O) -> (..., O)

Both equal their native forms (``lax.conv_general_dilated``, ``x @ kernel``) and
compute the forward, dL/dx and dL/dk each as ONE matrix product whose rows are the
positions B H W, with a reverse mode of their own (:func:`_with_reverse_mode`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TAPS = tuple((r, c) for r in range(3) for c in range(3))


def _shift(x, dr, dc):
  """(B, H, W, ...) -> the same shape, ``s[b, h, w] = x[b, h+dr, w+dc]`` where that is
  inside the image, else 0 (dr, dc in -1, 0, 1): the in-range slice of x padded back
  to (H, W). Sliced before padding, the nine shifted terms of ``_shifted_sum`` fuse
  into one pass over z (slicing a padded z does not)."""
  h, w = x.shape[1:3]
  s = x[:, max(dr, 0):h + min(dr, 0), max(dc, 0):w + min(dc, 0)]
  pad = [(0, 0), (max(-dr, 0), max(dr, 0)), (max(-dc, 0), max(dc, 0))]
  return jnp.pad(s, pad + [(0, 0)] * (x.ndim - 3))


def _patches(x, flip=False):
  """im2col: (B, H, W, C) -> (B, H, W, 9 C), ``[..., (r, c, ch)] = pad(x)[b, h+r, w+c, ch]``
  for taps (r, c) in row-major order; ``flip`` takes ``pad(x)[b, h+2-r, w+2-c, ch]``
  (pad: one zero row and column on each side)."""
  taps = [(2 - r, 2 - c) if flip else (r, c) for r, c in _TAPS]
  return jnp.concatenate([_shift(x, r - 1, c - 1) for r, c in taps], -1)


def _shifted_sum(z):
  """col2im: (B, H, W, 9, O) -> (B, H, W, O), ``y[b,h,w] = sum_{r,c} pad(z)[b, h+r, w+c, 3r+c]``
  (one zero row and column of padding on each side), summed in tap order."""
  y = 0
  for r, c in _TAPS:
    y = y + _shift(z[..., 3 * r + c, :], r - 1, c - 1)
  return y


def _matmul(a, b, contract_a=1):
  """(M, K) @ (K, N), or (K, M)^T @ (K, N) with ``contract_a=0`` (no transposed copy)."""
  return jax.lax.dot_general(a, b, (((contract_a,), (0,)), ((), ())))


def _contract_positions(a, b):
  """``a^T b`` contracting the positions (axis 0): (P, M), (P, N) -> (M, N).

  The weight gradients' products, which XLA:CPU runs in Eigen. Eigen is faster when
  the product's columns are the operand whose width is a multiple of 32, so when
  only ``a``'s width is, the product is formed as ``(b^T a)^T``; an optimization
  barrier keeps XLA from folding the small transpose back into the product."""
  if a.shape[1] % 32 or not b.shape[1] % 32:
    return _matmul(a, b, contract_a=0)
  return jax.lax.optimization_barrier(_matmul(b, a, contract_a=0)).T


def _pad_columns(m):
  """(K, N) -> (K, N') with zero columns up to a multiple of 16 when N < 64: XLA:CPU's
  product (YNNPACK) with that few columns runs faster at the multiple of 16 than at
  N. The caller slices the extra columns off the product."""
  n = m.shape[1]
  return jnp.pad(m, ((0, 0), (0, -n % 16))) if n < 64 else m


def _conv_gemm(x, kernel):
  """y[b,h,w,o] = sum_{r,c,i} pad(x)[b,h+r,w+c,i] k[r,c,i,o] as ONE matrix product over
  the B H W positions, shifting whichever side has fewer channels:

    I <= O:  y = patches(x) (BHW, 9I) @ k (9I, O)
    I >  O:  z = x (BHW, I) @ k (I, 9O), then y = shifted_sum(z)
             (k's columns padded by ``_pad_columns``, the padding sliced off z)

  (B, H, W, I), (3, 3, I, O) -> (B, H, W, O). The copy is 9 min(I, O) numbers per
  position; the product has the large B H W as its rows either way."""
  b, h, w, i = x.shape
  o = kernel.shape[-1]
  if i <= o:
    y = _matmul(_patches(x).reshape(-1, 9 * i), kernel.reshape(9 * i, o))
    return y.reshape(b, h, w, o)
  columns = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(i, 9 * o)
  z = _matmul(x.reshape(-1, i), _pad_columns(columns))[:, :9 * o]
  return _shifted_sum(z.reshape(b, h, w, 9, o))


def _conv3x3_grad_x(dy, kernel):
  """dL/dx = conv(dy, kernel flipped in H, W with I and O swapped): (B, H, W, I).

  With dy the thinner side (O <= I) its patches are taken flipped,
  ``dx = patches(dy, flip) (BHW, 9O) @ k (9O, I)``, the same matrix
  ``_conv3x3_grad_kernel`` multiplies by x, so the two share one copy."""
  b, h, w, o = dy.shape
  i = kernel.shape[2]
  if o <= i:
    dx = _matmul(_patches(dy, flip=True).reshape(-1, 9 * o),
                 jnp.transpose(kernel, (0, 1, 3, 2)).reshape(9 * o, i))
    return dx.reshape(b, h, w, i)
  return _conv_gemm(dy, jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)))


def _conv3x3_grad_kernel(x, dy):
  """dL/dk[r,c,i,o] = sum_{b,h,w} pad(x)[b,h+r,w+c,i] dy[b,h,w,o] -> (3, 3, I, O), one
  product contracting the B H W positions; the side with fewer channels is shifted:

    I <= O:  patches(x)^T (9I, BHW) @ dy (BHW, O)
    I >  O:  x^T (I, BHW) @ patches(dy, flip) (BHW, 9O)  (pad(x)[h+r] pairs dy[h],
             i.e. x[h'] pairs pad(dy)[h'+2-r]; dx uses the same patches)."""
  i, o = x.shape[-1], dy.shape[-1]
  if i <= o:
    dk = _contract_positions(_patches(x).reshape(-1, 9 * i), dy.reshape(-1, o))
    return dk.reshape(3, 3, i, o)
  dk = _contract_positions(x.reshape(-1, i),
                           _patches(dy, flip=True).reshape(-1, 9 * o))
  return jnp.transpose(dk.reshape(i, 3, 3, o), (1, 2, 0, 3))


def _with_reverse_mode(forward, grad_x, grad_kernel):
  """``forward(x, kernel)``, bilinear, as a ``jax.custom_jvp`` whose reverse mode
  computes exactly ``grad_x(dy, kernel)`` and ``grad_kernel(x, dy)``.

  The tangent map is written as the transpose of those two linear maps of dy, so
  transposing it again (reverse mode) gives them back: the jaxpr carries transposes
  that XLA folds into the products, and the compiled gradient has our contraction
  over positions, not autodiff's (``tests/test_conv3x3.py`` checks it). Under
  ``jax.checkpoint``, reverse mode keeps only ``x`` and ``kernel`` (not, say, the
  im2col patches of x, 9x larger: the backward pass copies them again). Forward
  mode (``jax.jacfwd``) works as usual.
  """
  f = jax.custom_jvp(forward)

  @f.defjvp
  def _jvp(primals, tangents):
    x, kernel = primals
    x_dot, kernel_dot = tangents
    y = forward(x, kernel)
    dy = jax.ShapeDtypeStruct(y.shape, y.dtype)

    @jax.checkpoint
    def tangent(x, kernel, x_dot, kernel_dot):
      lin_x = jax.linear_transpose(lambda g: grad_x(g, kernel), dy)
      lin_k = jax.linear_transpose(lambda g: grad_kernel(x, g), dy)
      return lin_x(x_dot)[0] + lin_k(kernel_dot)[0]

    return y, tangent(x, kernel, x_dot, kernel_dot)

  return f


conv3x3 = _with_reverse_mode(_conv_gemm, _conv3x3_grad_x, _conv3x3_grad_kernel)
conv3x3.__doc__ = """3x3 'SAME' convolution: (B, H, W, I), (3, 3, I, O) -> (B, H, W, O).

  Equal to ``lax.conv_general_dilated(x, kernel, (1, 1), "SAME")`` (NHWC/HWIO), but
  computed as matrix products (``_conv_gemm``): the forward, dL/dx and dL/dk are each
  one GEMM whose rows are the B H W positions, plus a copy of 9 min(I, O) numbers per
  position (im2col of the thinner side, or a shifted sum of the product). Reverse
  mode computes dx and dk that way too (``_conv3x3_grad_x``,
  ``_conv3x3_grad_kernel``, through ``_with_reverse_mode``).
  """


def _dense_forward(x, kernel):
  """(..., I) @ (I, O) -> (..., O) as one (positions, I) @ (I, O) product."""
  return _matmul(x.reshape(-1, x.shape[-1]), kernel).reshape(
      *x.shape[:-1], kernel.shape[-1])


def _dense_grad_x(dy, kernel):
  """dL/dx = dy @ kernel^T: (..., O), (I, O) -> (..., I)."""
  return _dense_forward(dy, kernel.T)


def _dense_grad_kernel(x, dy):
  """dL/dk = x^T dy contracting the positions of both, (..., I), (..., O) -> (I, O)."""
  return _contract_positions(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))


dense = _with_reverse_mode(_dense_forward, _dense_grad_x, _dense_grad_kernel)
dense.__doc__ = """``x @ kernel`` on the last axis: (..., I), (I, O) -> (..., O) (a 1x1 conv).

  Reverse mode forms the kernel gradient as one contraction of x and dy over the
  positions; autodiff of a 4-D ``dot_general`` inside a scan makes XLA:CPU copy dy
  transposed before that product.
  """
