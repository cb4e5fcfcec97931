"""The coupling network's 3x3 conv and dense layer: each implementation (the CPU
matrix-product kernels and the native ops) against float64 oracles and against each
other, the choice by lowering platform, and the CPU kernels' compiled shapes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nifzoo import configs
from nifzoo import flows
from nifzoo import mesh as mesh_lib
from nifzoo import tpu
from nifzoo.flows import cpu_kernels
from nifzoo.flows import layers

# Each implementation forced explicitly, and the one chosen by platform.
CONV3X3 = {"cpu": cpu_kernels.conv3x3, "native": layers.native_conv3x3,
           "chosen": flows.conv3x3}
DENSE = {"cpu": cpu_kernels.dense, "native": layers.native_dense,
         "chosen": flows.dense}


@pytest.mark.parametrize("impl", sorted(CONV3X3))
@pytest.mark.parametrize("cin,cout", [(3, 16), (16, 4), (5, 5)])
def test_conv3x3_equals_numpy(impl, cin, cout):
  rng = np.random.default_rng(cin * 10 + cout)
  x = rng.normal(size=(2, 5, 6, cin))
  w = rng.normal(size=(3, 3, cin, cout))
  with jax.enable_x64(True):
    got = CONV3X3[impl](jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_allclose(got, _np_conv3x3(x, w), rtol=1e-10, atol=1e-10)


def test_conv3x3_module_matches_nnx_conv_layout():
  layer = flows.Conv3x3(4, 6, rngs=nnx.Rngs(0))
  ref = nnx.Conv(4, 6, (3, 3), padding="SAME", rngs=nnx.Rngs(1))
  assert layer.kernel.shape == ref.kernel.shape and layer.bias.shape == ref.bias.shape
  ref.kernel[...] = layer.kernel[...]
  ref.bias[...] = jnp.arange(6.0)
  layer.bias[...] = jnp.arange(6.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 4)), jnp.float32)
  np.testing.assert_allclose(layer(x), ref(x), rtol=1e-5, atol=1e-5)


def _np_conv3x3(x, k):
  """float64 oracle: y[b,h,w,o] = sum_{r,c,i} pad(x)[b,h+r,w+c,i] k[r,c,i,o]."""
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(np.einsum("bhwi,io->bhwo", xp[:, r:r + h, c:c + w], k[r, c])
             for r in range(3) for c in range(3))


def _np_conv3x3_grads(x, k, g):
  """float64 oracle of d/dx, d/dk of sum(conv3x3(x, k) * g), written by hand."""
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dk = np.zeros_like(k)
  dxp = np.zeros_like(xp)
  for r in range(3):
    for c in range(3):
      dk[r, c] = np.einsum("bhwi,bhwo->io", xp[:, r:r + h, c:c + w], g)
      dxp[:, r:r + h, c:c + w] += np.einsum("bhwo,io->bhwi", g, k[r, c])
  return dxp[:, 1:-1, 1:-1], dk


@pytest.mark.parametrize("impl", sorted(CONV3X3))
@pytest.mark.parametrize("cin,cout", [(3, 16), (16, 4), (32, 3)])
def test_conv3x3_gradients_and_jvp_match_numpy(impl, cin, cout):
  """Reverse mode (the CPU kernel's own, or autodiff's of the native conv) and
  forward mode. For the CPU kernel, (32, 3) forms the kernel gradient transposed
  (``cpu_kernels._contract_positions``); the products with fewer than 64 columns
  are padded (``cpu_kernels._pad_columns``)."""
  conv = CONV3X3[impl]
  rng = np.random.default_rng(cin + 100 * cout)
  x, g = rng.normal(size=(2, 5, 6, cin)), rng.normal(size=(2, 5, 6, cout))
  k = rng.normal(size=(3, 3, cin, cout))
  x_dot, k_dot = rng.normal(size=x.shape), rng.normal(size=k.shape)
  want_dx, want_dk = _np_conv3x3_grads(x, k, g)
  with jax.enable_x64(True):
    loss = lambda x, k: jnp.sum(conv(x, k) * g)
    dx, dk = jax.jit(jax.grad(loss, (0, 1)))(jnp.asarray(x), jnp.asarray(k))
    _, y_dot = jax.jvp(conv, (jnp.asarray(x), jnp.asarray(k)),
                       (jnp.asarray(x_dot), jnp.asarray(k_dot)))
  np.testing.assert_allclose(dx, want_dx, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(y_dot, _np_conv3x3(x_dot, k) + _np_conv3x3(x, k_dot),
                             rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fns,shapes", [
    (CONV3X3, [((2, 4, 5, 3), (3, 3, 3, 8)), ((2, 4, 5, 32), (3, 3, 32, 3))]),
    (DENSE, [((2, 3, 4, 5), (5, 6)), ((2, 3, 4, 32), (32, 6))]),
], ids=["conv3x3", "dense"])
def test_cpu_kernel_and_native_have_the_same_derivatives(fns, shapes):
  """The CPU kernel's Jacobians (forward mode, ``jax.jacfwd``) and its reverse mode
  (``jax.vjp``) equal the native op's, in float64."""
  rng = np.random.default_rng(11)
  cpu, native = fns["cpu"], fns["native"]
  with jax.enable_x64(True):
    for x_shape, k_shape in shapes:
      x, k = jnp.asarray(rng.normal(size=x_shape)), jnp.asarray(rng.normal(size=k_shape))
      jacobians = lambda f: jax.jit(jax.jacfwd(f, (0, 1)))(x, k)
      for got, want in zip(jacobians(cpu), jacobians(native)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
      g = jnp.asarray(rng.normal(size=x_shape[:-1] + k_shape[-1:]))
      reverse = lambda f: jax.jit(lambda x, k, g: jax.vjp(f, x, k)[1](g))(x, k, g)
      for got, want in zip(reverse(cpu), reverse(native)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def _scanned_convs(ks, ks_back, x):
  """sum of h after a scan of h -> tanh(conv3x3(tanh(conv3x3(h, k)), k_back))."""
  def body(h, k):
    k, kb = k
    return jnp.tanh(flows.conv3x3(jnp.tanh(flows.conv3x3(h, k)), kb)), None
  h, _ = jax.lax.scan(body, x, (ks, ks_back))
  return jnp.sum(h)


def test_conv3x3_gradient_in_scan_is_matrix_products():
  """Inside a scan the forward and the gradient contain no convolution at all, only
  dots: XLA:CPU's convolutions run at a fraction of matmul speed on these shapes, and
  the ones autodiff emits for the gradient run as a naive loop inside a ``while``."""
  x = jnp.ones((2, 4, 4, 3))
  ks = jnp.ones((2, 3, 3, 3, 5))
  ks_back = jnp.ones((2, 3, 3, 5, 3))

  hlo = jax.jit(jax.grad(_scanned_convs, (0, 1, 2))).lower(ks, ks_back, x).as_text("hlo")
  assert " convolution(" not in hlo
  # Forward, dx and dk of both convolutions (3 -> 5 patches x, 5 -> 3 shifts the output).
  assert hlo.count(" dot(") >= 6, hlo.count(" dot(")


def _lowered(f, platform, *args):
  """StableHLO of ``jax.jit(f)`` lowered for ``platform``, traced on this CPU."""
  return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_native_ops_are_chosen_when_lowering_for_an_accelerator(platform):
  """Traced here, where ``jax.default_backend()`` is "cpu", and lowered for an
  accelerator, the scanned gradient holds native convolutions and no products,
  and the dense layer is one product of the 4-D activations; lowered for CPU,
  the CPU kernels' products and no convolution."""
  grad = jax.grad(_scanned_convs, (0, 1, 2))
  args = jnp.ones((2, 3, 3, 3, 5)), jnp.ones((2, 3, 3, 5, 3)), jnp.ones((2, 4, 4, 3))
  on_accelerator, on_cpu = _lowered(grad, platform, *args), _lowered(grad, "cpu", *args)
  assert "stablehlo.convolution" in on_accelerator
  assert "stablehlo.dot_general" not in on_accelerator
  assert "stablehlo.convolution" not in on_cpu and "stablehlo.dot_general" in on_cpu

  dense_grad = jax.grad(lambda x, k: jnp.sum(flows.dense(x, k) ** 2), (0, 1))
  x, k = jnp.ones((2, 4, 4, 3)), jnp.ones((3, 5))
  dots = lambda text: re.findall(r"stablehlo.dot_general.*?: \((tensor<[^>]*>)", text)
  assert dots(_lowered(dense_grad, platform, x, k))[0] == "tensor<2x4x4x3xf32>"
  assert dots(_lowered(dense_grad, "cpu", x, k))[0] == "tensor<32x3xf32>"


def test_choosing_by_platform_stacks_no_extra_residuals():
  """A scanned conditioner's compiled gradient (conv, ReLU, dense, ReLU, conv as in
  the Glow) needs the same temporaries with the platform-chosen layers as with
  the CPU kernels called directly: the choice adds no copies of the scan's
  stacked residuals."""
  def loss(conv, dense):
    def body(h, k):
      k_in, k_hidden, k_out = k
      a = layers.relu(conv(h, k_in))
      return jnp.tanh(conv(layers.relu(dense(a, k_hidden)), k_out)), None
    return lambda ks, x: jnp.sum(jax.lax.scan(body, x, ks)[0])

  ks = jnp.ones((3, 3, 3, 4, 16)), jnp.ones((3, 16, 16)), jnp.ones((3, 3, 3, 16, 4))
  x = jnp.ones((2, 8, 8, 4))
  temp = lambda f: jax.jit(jax.grad(f)).lower(ks, x).compile().memory_analysis(
      ).temp_size_in_bytes
  assert temp(loss(flows.conv3x3, flows.dense)) == temp(
      loss(cpu_kernels.conv3x3, cpu_kernels.dense))


_OK, _WHY = tpu.tpu_available()


@pytest.mark.skipif(not _OK, reason=f"libtpu not loadable: {_WHY}")
def test_train_step_for_tpu_has_native_convolutions():
  """A small config's train step lowered for compile-only TPU devices (as
  ``nifzoo.tpu`` compiles it) has the native convolutions; for this CPU, none."""
  config = configs.get_config("digits-nif4,tiny")
  batch = config.batch_size
  for_tpu = tpu.lower_train_step(config, tpu.compile_mesh("v5e:1x1"), batch).as_text()
  for_cpu = tpu.lower_train_step(config, mesh_lib.make_mesh(devices=jax.devices()[:1]),
                                 batch).as_text()
  assert re.search(r"stablehlo.convolution.*tensor<3x3x\d+x\d+xf32>", for_tpu)
  assert "stablehlo.convolution" not in for_cpu


def test_conv3x3_products_in_scan_have_the_fast_shapes():
  """In a scanned gradient (the Glow's), the products XLA:CPU runs slowly on some
  shapes are formed the fast way round (``bench/README.md``, "The CPU
  kernels"): a kernel gradient's columns are the side whose width is a multiple of 32
  ((54, 32), not (32, 54)), and a product with 54 columns is padded to 64."""
  x = jnp.ones((2, 4, 5, 32))                    # 40 positions, width 32
  ks, ks_back = jnp.ones((2, 3, 3, 32, 6)), jnp.ones((2, 3, 3, 6, 32))

  hlo = jax.jit(jax.grad(_scanned_convs, (0, 1, 2))).lower(ks, ks_back, x).compile().as_text()
  dots = re.findall(r"= (f32\[[\d,]+\])\S* dot\(.*?lhs_contracting_dims=\{(\d)\}", hlo)
  kernel_grads = [shape for shape, contract in dots if contract == "0"]
  assert sorted(kernel_grads) == ["f32[54,32]", "f32[54,32]"], dots
  wide = [shape for shape, contract in dots if contract == "1"]
  assert wide.count("f32[40,64]") == 2 and "f32[40,54]" not in wide, dots


@pytest.mark.parametrize("impl", sorted(DENSE))
@pytest.mark.parametrize("cin,cout", [(5, 6), (32, 6)])
def test_dense_values_gradients_and_jvp_match_numpy(impl, cin, cout):
  """``flows.dense`` (the coupling net's 1x1 conv): value, reverse and forward mode
  ((32, 6) forms the CPU kernel's kernel gradient transposed)."""
  dense = DENSE[impl]
  rng = np.random.default_rng(7)
  x, g = rng.normal(size=(2, 3, 4, cin)), rng.normal(size=(2, 3, 4, cout))
  k = rng.normal(size=(cin, cout))
  x_dot, k_dot = rng.normal(size=x.shape), rng.normal(size=k.shape)
  with jax.enable_x64(True):
    y = dense(jnp.asarray(x), jnp.asarray(k))
    loss = lambda x, k: jnp.sum(dense(x, k) * g)
    dx, dk = jax.grad(loss, (0, 1))(jnp.asarray(x), jnp.asarray(k))
    _, y_dot = jax.jvp(dense, (jnp.asarray(x), jnp.asarray(k)),
                       (jnp.asarray(x_dot), jnp.asarray(k_dot)))
  np.testing.assert_allclose(y, np.einsum("bhwi,io->bhwo", x, k), rtol=1e-12)
  np.testing.assert_allclose(dx, np.einsum("bhwo,io->bhwi", g, k), rtol=1e-12)
  np.testing.assert_allclose(dk, np.einsum("bhwi,bhwo->io", x, g), rtol=1e-12)
  np.testing.assert_allclose(
      y_dot, np.einsum("bhwi,io->bhwo", x_dot, k) + np.einsum("bhwi,io->bhwo", x, k_dot),
      rtol=1e-12)


def test_dense_module_is_nnx_linear():
  """Same parameters from the same key (so models initialise as with nnx.Linear) and
  the same outputs."""
  layer, ref = flows.Dense(4, 6, rngs=nnx.Rngs(3)), nnx.Linear(4, 6, rngs=nnx.Rngs(3))
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(getattr(layer, name)[...], getattr(ref, name)[...])
  assert (jax.tree_util.tree_structure(nnx.state(layer, nnx.Param))
          == jax.tree_util.tree_structure(nnx.state(ref, nnx.Param)))
  ref.bias[...] = layer.bias[...] = jnp.arange(6.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 4)), jnp.float32)
  np.testing.assert_allclose(layer(x), ref(x), rtol=1e-6, atol=1e-6)


def test_dense_kernel_gradient_in_scan_has_no_transposed_copy_of_dy():
  """In a scanned gradient (the Glow's), XLA:CPU turns a plain 4-D ``dot_general``'s
  kernel gradient into a transposed copy of dy (O x positions) and a product; with
  ``flows.dense`` it is one dot contracting the positions of both operands."""
  x, ks = jnp.ones((4, 8, 8, 32)), jnp.ones((3, 32, 32))
  plain = lambda h, k: jax.lax.dot_general(h, k, (((3,), (0,)), ((), ())))

  def optimized_hlo(f):
    def loss(ks, x):
      h, _ = jax.lax.scan(lambda h, k: (jnp.maximum(f(h, k), 0), None), x, ks)
      return jnp.sum(h)
    return jax.jit(jax.grad(loss, (0, 1))).lower(ks, x).compile().as_text()

  transposed_dy = "f32[32,256]{1,0}"                   # (O, 4 * 8 * 8 positions)
  assert transposed_dy in optimized_hlo(plain)          # what the test guards against
  hlo = optimized_hlo(flows.dense)
  assert transposed_dy not in hlo
  assert "lhs_contracting_dims={0}, rhs_contracting_dims={0}" in hlo
