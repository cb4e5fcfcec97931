"""Coupling layers (Dinh et al. 2017; Glow's conditioner; the authors' tanh log-scale).

The input is split on its last axis into ``x_a = x[..., :c_a]`` (transformed) and
``x_b = x[..., c_a:]`` (kept, it conditions ``x_a``)::

    affine:    z_a = x_a * exp(log_s) + t,   log_s = tanh(raw),   (t, raw) = NN(x_b)
               log_det = sum over positions and channels of log_s
    additive:  z_a = x_a + t,                t = NN(x_b),          log_det = 0
    z = concat(z_a, x_b)

The last layer of every conditioner is zero-initialised, so each coupling starts as
the identity. Image conditioner (Glow; ``F = width``, ``c`` channels, ``c_a = c/2``)::

    3x3 conv (c/2 -> F) + bias, ReLU
    1x1 conv (F -> F) + bias, ReLU          (a dense layer on the channel axis)
    3x3 conv (F -> c_out) + bias, zero-init (c_out = c affine, c/2 additive)

Parameters: affine ``9(c/2)F + F + F^2 + F + 9Fc + c``; additive
``9(c/2)F + F + F^2 + F + 9F(c/2) + c/2``. The affine network's output channels are
``[t (c/2) | raw (c/2)]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nifzoo import checks
from nifzoo.flows import _base

_zeros = nnx.initializers.zeros


_TAPS = tuple((r, c) for r in range(3) for c in range(3))


def _shift(x, dr, dc):
  """(B, H, W, ...) -> the same shape, ``s[b, h, w] = x[b, h+dr, w+dc]`` where that is
  inside the image, else 0 (dr, dc in -1, 0, 1): the in-range slice of x padded back
  to (H, W). Sliced before padding, the nine shifted terms of ``_shifted_sum`` fuse
  into one pass over z, 1.5-2.4x faster than slicing a padded z
  (``bench/README.md``, "What the profile says")."""
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

  The weight gradients' products, which XLA:CPU runs in Eigen. Eigen is up to 2.3x
  faster when the product's columns are the operand whose width is a multiple of 32
  (on the Glow's shapes, e.g. 2.13 -> 1.38 ms for (108, 128) instead of (128, 108)
  over 16384 positions: ``bench/README.md``, "What the profile says"). So when only
  ``a``'s width is, the product is formed as ``(b^T a)^T``; an optimization barrier
  keeps XLA from folding the small transpose back into the product."""
  if a.shape[1] % 32 or not b.shape[1] % 32:
    return _matmul(a, b, contract_a=0)
  return jax.lax.optimization_barrier(_matmul(b, a, contract_a=0)).T


def _pad_columns(m):
  """(K, N) -> (K, N') with zero columns up to a multiple of 16 when N < 64.

  XLA:CPU's product (YNNPACK) with that few columns runs faster at the multiple of
  16 than at N (54 -> 64 columns: 0.86 -> 0.63 ms for 16384 rows and K = 128;
  ``bench/README.md``, "What the profile says"); the extra columns are sliced off."""
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

  Why (``bench/README.md``, the profile): on XLA:CPU (jax 0.10.2) native convolutions of the
  Glow's shapes run at 10-25 GFLOP/s (YNNPACK; the weight gradient of a conv with few
  output channels is the slowest), and the convolutions autodiff emits for the
  gradient run as a naive loop inside a ``while`` (``scan``). The products run at
  matmul speed.
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

  The same numbers as ``nnx.Linear`` without bias; reverse mode forms the kernel
  gradient as one contraction of x and dy over the positions. Autodiff of
  ``nnx.Linear`` inside ``nnx.scan`` makes XLA:CPU copy dy transposed (8 MB a Glow
  step of the benchmark) before that product (``bench/README.md``, the profile).
  """


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


class ConvConditioner(nnx.Module):
  """Glow's coupling network: (B, H, W, c_in) -> (B, H, W, c_out)."""

  def __init__(self, in_channels: int, width: int, out_channels: int, *,
               rngs: nnx.Rngs):
    self.conv_in = Conv3x3(in_channels, width, rngs=rngs)
    self.hidden = Dense(width, width, rngs=rngs)     # the 1x1 conv
    self.conv_out = Conv3x3(width, out_channels, kernel_init=_zeros,
                            bias_init=_zeros, rngs=rngs)

  def __call__(self, x):
    h = relu(self.conv_in(x))
    h = relu(self.hidden(h))
    return self.conv_out(h)


class MLPConditioner(nnx.Module):
  """``depth`` hidden dense layers of ``hidden`` units with ReLU, zero-init output."""

  def __init__(self, in_features: int, hidden: int, depth: int,
               out_features: int, *, rngs: nnx.Rngs):
    sizes = [in_features] + [hidden] * depth
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.out = nnx.Linear(sizes[-1], out_features, kernel_init=_zeros,
                          bias_init=_zeros, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = relu(layer(x))
    return self.out(x)


def _check_even_channels(channels, name="channels"):
  checks.check_positive_int(channels, name)
  if channels % 2:
    raise ValueError(f"{name} must be even to split into two halves for a "
                     f"coupling layer, got {channels}.")


class _ImageCoupling(nnx.Module):
  """Shared split/merge for image couplings on (B, H, W, C)."""

  channels: int

  def _split(self, x, name):
    x = _base.check_features(x, name, self.channels, rank=4)
    half = self.channels // 2
    return x[..., :half], x[..., half:]


class AffineCoupling(_ImageCoupling):
  """Affine coupling with log-scale ``tanh(raw)``; images (B, H, W, C), C even."""

  def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs):
    _check_even_channels(channels)
    checks.check_positive_int(width, "width")
    self.channels = channels
    self.net = ConvConditioner(channels // 2, width, channels, rngs=rngs)

  def _shift_log_scale(self, x_b):
    out = self.net(x_b)
    half = self.channels // 2
    return out[..., :half], jnp.tanh(out[..., half:])

  def forward(self, x):
    """x (B,H,W,C) -> (z, log_det (B,)); z_a = x_a exp(tanh(raw)) + t."""
    x_a, x_b = self._split(x, "x")
    t, log_s = self._shift_log_scale(x_b)
    z_a = x_a * jnp.exp(log_s) + t
    return jnp.concatenate([z_a, x_b], -1), _base.sum_except_batch(log_s)

  def inverse(self, z):
    """z (B,H,W,C) -> x; x_a = (z_a - t) exp(-tanh(raw))."""
    z_a, x_b = self._split(z, "z")
    t, log_s = self._shift_log_scale(x_b)
    return jnp.concatenate([(z_a - t) * jnp.exp(-log_s), x_b], -1)


class AdditiveCoupling(_ImageCoupling):
  """Additive (volume-preserving) coupling; images (B, H, W, C), C even.

  Parameters: ``9(c/2)F + F + F^2 + F + 9F(c/2) + c/2`` (the net outputs only t).
  """

  def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs):
    _check_even_channels(channels)
    checks.check_positive_int(width, "width")
    self.channels = channels
    self.net = ConvConditioner(channels // 2, width, channels // 2, rngs=rngs)

  def forward(self, x):
    """x (B,H,W,C) -> (z, zeros (B,)); z_a = x_a + t(x_b)."""
    x_a, x_b = self._split(x, "x")
    z = jnp.concatenate([x_a + self.net(x_b), x_b], -1)
    return z, jnp.zeros((z.shape[0],), jnp.float32)

  def inverse(self, z):
    """z (B,H,W,C) -> x; x_a = z_a - t(x_b)."""
    z_a, x_b = self._split(z, "z")
    return jnp.concatenate([z_a - self.net(x_b), x_b], -1)


class VectorAffineCoupling(nnx.Module):
  """Affine coupling on vectors (B, D) with an MLP conditioner, log-scale tanh.

  ``x_a = x[:, :D//2]`` is transformed, ``x_b = x[:, D//2:]`` conditions it; the MLP
  has ``depth`` hidden layers of ``hidden`` units and outputs ``[t | raw]``
  (2 * (D//2) numbers, zero-initialised).
  """

  def __init__(self, dim: int, hidden: int, depth: int, *, rngs: nnx.Rngs):
    checks.check_positive_int(dim, "dim")
    checks.check_positive_int(hidden, "hidden")
    checks.check_positive_int(depth, "depth")
    if dim < 2:
      raise ValueError(f"dim must be >= 2 for a coupling layer, got {dim}.")
    self.dim = dim
    self.split = dim // 2
    self.net = MLPConditioner(dim - self.split, hidden, depth, 2 * self.split,
                              rngs=rngs)

  def _shift_log_scale(self, x_b):
    out = self.net(x_b)
    return out[:, :self.split], jnp.tanh(out[:, self.split:])

  def forward(self, x):
    """x (B, D) -> (z, log_det (B,))."""
    x = _base.check_features(x, "x", self.dim, rank=2)
    x_a, x_b = x[:, :self.split], x[:, self.split:]
    t, log_s = self._shift_log_scale(x_b)
    z_a = x_a * jnp.exp(log_s) + t
    return jnp.concatenate([z_a, x_b], -1), jnp.sum(log_s, axis=1)

  def inverse(self, z):
    """z (B, D) -> x."""
    z = _base.check_features(z, "z", self.dim, rank=2)
    z_a, x_b = z[:, :self.split], z[:, self.split:]
    t, log_s = self._shift_log_scale(x_b)
    return jnp.concatenate([(z_a - t) * jnp.exp(-log_s), x_b], -1)
