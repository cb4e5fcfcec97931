"""Scanned stacks, data-dependent init, the multi-scale Glow and the low-dim flow."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from nifzoo import flows
from test_flows_oracles import assert_bijection, normal, num_params, perturb, rngs


def _stats_ok(z, axes):
  np.testing.assert_allclose(np.mean(z, axes), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.std(z, axes), 1.0, atol=1e-3)


def _step(stack, i):
  """Step i of a vectorised stack as a standalone module (an independent copy)."""
  graphdef, state = nnx.split(stack.steps)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


@functools.lru_cache(maxsize=None)
def _tiny_glow(conv, coupling, squeeze):
  """(4, 4, 2), 2 scales x 2 steps, width 8: data-initialised, then perturbed."""
  glow = flows.Glow((4, 4, 2), 2, 2, 8, conv=conv, coupling=coupling,
                    squeeze=squeeze, rngs=rngs(0))
  with flows.data_init(glow):
    nnx.jit(lambda m, x: m.forward(x))(glow, normal((16, 4, 4, 2), seed=3, loc=1.0,
                                                    scale=2.0))
  return perturb(glow, 7, scale=0.05)


# -- building a scanned stack ---------------------------------------------------

_TRACES = []


def _counted_step(*args, rngs):
  _TRACES.append(args)
  return flows.GlowStep(*args, rngs=rngs)


def test_stack_init_is_one_program_per_step_shape_with_the_eager_numbers():
  """Equal partials share one compiled init; its numbers are the eager vmap's."""
  make = lambda: functools.partial(_counted_step, 4, 8)
  _TRACES.clear()
  a, b = [flows.ScannedStack(make(), 3, rngs=rngs(s)) for s in (5, 6)]
  again = flows.ScannedStack(make(), 3, rngs=rngs(5))
  assert len(_TRACES) == 1  # Traced once for the three stacks.

  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def eager(r):
    return flows.GlowStep(4, 8, rngs=r)

  want = nnx.state(eager(rngs(5)))
  for got in (a, again):
    flat = jax.tree.leaves(nnx.state(got.steps))
    assert len(flat) == len(jax.tree.leaves(want)) > 0
    for x, y in zip(flat, jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  # Another seed draws other parameters.
  ka, kb = a.steps.coupling.net.conv_in.kernel[...], b.steps.coupling.net.conv_in.kernel[...]
  assert ka.shape == (3, 3, 3, 2, 8) and not np.allclose(ka, kb)


# -- data-dependent init in a scanned stack -------------------------------------

def test_data_init_reaches_every_step_of_a_scanned_stack():
  c = 4
  stack = flows.ScannedStack(functools.partial(flows.GlowStep, c, 8), 2, rngs=rngs(1))
  perturb(stack, 2, scale=0.2)           # non-trivial couplings
  x = normal((16, 3, 3, c), seed=4, loc=-1.0, scale=3.0)
  assert not flows.is_initialized(stack)
  with flows.data_init(stack):
    z, log_det = nnx.jit(lambda m, x: m.forward(x))(stack, x)
  assert flows.is_initialized(stack)
  np.testing.assert_array_equal(stack.steps.actnorm.initialized[...], [True, True])

  # Run the steps one at a time: each ActNorm normalises its OWN input.
  step0, step1 = _step(stack, 0), _step(stack, 1)
  _stats_ok(step0.actnorm.forward(x)[0], (0, 1, 2))
  h, ld0 = step0.forward(x)
  _stats_ok(step1.actnorm.forward(h)[0], (0, 1, 2))
  z1, ld1 = step1.forward(h)
  np.testing.assert_allclose(z, z1, atol=1e-5)
  np.testing.assert_allclose(log_det, ld0 + ld1, rtol=1e-5)
  # reversed scan
  np.testing.assert_allclose(stack.inverse(z), x, atol=1e-4)


def test_glow_data_init_flags_state_and_idempotence():
  glow = flows.Glow((4, 4, 2), 2, 2, 8, rngs=rngs(2))
  assert not flows.is_initialized(glow)
  fwd = nnx.jit(lambda m, x: m.forward(x))
  with flows.data_init(glow):
    fwd(glow, normal((8, 4, 4, 2), seed=5, loc=3.0))
  assert flows.is_initialized(glow)
  flags = jax.tree.leaves(nnx.state(glow, flows.ActNormInitialized))
  assert len(flags) == 2 and all(f.shape == (2,) and f.all() for f in flags)
  assert all(not m.data_init_mode for _, m in nnx.iter_modules(glow)
             if isinstance(m, flows.ActNorm))
  before = jax.tree.map(np.asarray, nnx.state(glow))
  with flows.data_init(glow):             # different data: must change nothing
    fwd(glow, normal((8, 4, 4, 2), seed=6, loc=-2.0, scale=5.0))
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.asarray, nnx.state(glow)))
  # A model restored from a saved state keeps the flag, so it never re-inits.
  fresh = flows.Glow((4, 4, 2), 2, 2, 8, rngs=rngs(3))
  nnx.update(fresh, before)
  assert flows.is_initialized(fresh)


# -- the whole Glow --------------------------------------------------------------

@pytest.mark.parametrize("conv,coupling,squeeze", [
    ("lu", "affine", "channel_major"), ("colnorm", "additive", "glow")])
def test_tiny_glow_is_a_bijection(conv, coupling, squeeze):
  glow = _tiny_glow(conv, coupling, squeeze)
  x = normal((2, 4, 4, 2), seed=8)
  z, _ = assert_bijection(glow, x, atol_ld=5e-3)
  assert z.shape == x.shape


def test_glow_factors_out_the_second_half():
  """As the authors and openai/glow: the second half of the channels is factored
  out after the first scale (it equals the first scale's output), the first half
  goes on through the later scales (it differs)."""
  glow = _tiny_glow("lu", "affine", "channel_major")
  x = normal((1, 4, 4, 2), seed=9)
  z = flows.squeeze(glow.forward(x)[0])
  b = glow.scales[0].forward(flows.squeeze(x))[0]
  np.testing.assert_allclose(z[..., 4:], b[..., 4:], atol=1e-5)
  assert np.max(np.abs(z[..., :4] - b[..., :4])) > 1e-2


def _glow_formula(shape, scales, steps, f):
  total, c = 0, shape[-1]
  for s in range(scales):
    c = 4 * c if s == 0 else 4 * (c // 2)
    total += steps * (2 * c + c * c + 9 * (c // 2) * f + f + f * f + f
                      + 9 * f * c + c)
  return total


@pytest.mark.parametrize("shape,scales,expected", [
    ((64, 64, 3), 5, 26_657_472), ((32, 32, 3), 4, 14_384_832),
    ((28, 28, 1), 2, 2_778_944)])
@pytest.mark.parametrize("conv", ["lu", "colnorm"])
def test_glow_parameter_count_matches_authors(shape, scales, expected, conv):
  assert _glow_formula(shape, scales, 16, 256) == expected
  model = nnx.eval_shape(lambda: flows.Glow(shape, scales, 16, 256, conv=conv,
                                            rngs=nnx.Rngs(0)))
  assert num_params(model) == expected
  assert flows.glow_num_params(shape, scales, 16, 256) == expected


def _num_eqns(jaxpr):
  n = 0
  for eqn in jaxpr.eqns:
    n += 1
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          n += _num_eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          n += _num_eqns(sub)
  return n


def test_scanned_steps_trace_one_body():
  """The traced program (hence compile time) does not grow with steps_per_scale."""
  sizes = []
  for steps in (2, 7):
    model = nnx.eval_shape(lambda: flows.Glow((8, 8, 1), 2, steps, 4, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    fwd = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s).forward(x))(state, x)
    inv = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s).inverse(x))(state, x)
    sizes.append((_num_eqns(fwd.jaxpr), _num_eqns(inv.jaxpr)))
  assert sizes[0] == sizes[1]


def test_glow_validation():
  with pytest.raises(ValueError, match=r"divisible by 2\*\*num_scales = 8"):
    flows.Glow((28, 28, 1), 3, 1, 4, rngs=rngs(0))
  with pytest.raises(ValueError, match="parameterization must be one of"):
    flows.Glow((4, 4, 1), 1, 1, 4, conv="svd", rngs=rngs(0))
  with pytest.raises(ValueError, match="squeeze must be one of"):
    flows.Glow((4, 4, 1), 1, 1, 4, squeeze="nchw", rngs=rngs(0))
  with pytest.raises(ValueError, match="input_shape must be"):
    flows.Glow((4, 4), 1, 1, 4, rngs=rngs(0))
  with pytest.raises(ValueError, match="steps_per_scale"):
    flows.Glow((4, 4, 1), 1, 0, 4, rngs=rngs(0))
  glow = _tiny_glow("lu", "affine", "channel_major")
  with pytest.raises(ValueError, match=r"x must have shape \(B, 4, 4, 2\)"):
    glow.forward(jnp.zeros((2, 4, 4, 1)))
  with pytest.raises(TypeError, match="x must be a floating-point"):
    glow.forward(jnp.zeros((2, 4, 4, 2), jnp.int32))
  with pytest.raises(ValueError, match=r"z must have shape \(B, 4, 4, 2\)"):
    glow.inverse(jnp.zeros((4, 4, 2)))


# -- low-dimensional flow ----------------------------------------------------------

def test_lowdim_flow():
  flow = flows.LowDimFlow(4, num_layers=3, hidden=16, mlp_depth=2, rngs=rngs(4))
  assert flow.layers.steps.coupling.net.out.kernel.shape == (3, 16, 4)
  z_train = normal((32, 4), seed=10, loc=2.0, scale=3.0)
  with flows.data_init(flow):
    flow.forward(z_train)
  assert flows.is_initialized(flow)
  perturb(flow, 11, scale=0.1)
  z = normal((3, 4), seed=12)
  eps, log_det = assert_bijection(flow, z)
  want = scipy.stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf(
      np.asarray(eps, np.float64)) + np.asarray(log_det)
  np.testing.assert_allclose(flow.log_prob(z), want, rtol=1e-5, atol=1e-4)
  assert flow.sample(jax.random.key(0, impl="rbg"), 5).shape == (5, 4)
  with pytest.raises(ValueError, match="z must have 4 features"):
    flow.forward(jnp.zeros((2, 3)))


# -- unrolled stacks --------------------------------------------------------------

def test_stack_unroll_computes_the_steps_one_after_another():
  """Any ``unroll`` gives the numbers of the steps applied one at a time as
  standalone modules (no scan): z, log_det, inverse and the parameter gradient."""
  c, n = 4, 3
  x = normal((5, 3, 3, c), seed=13, loc=0.5, scale=1.5)
  want = None
  for unroll in (1, True):  # (2 .. n-1: a loop of partly unrolled bodies, as 1)
    stack = flows.ScannedStack(functools.partial(flows.GlowStep, c, 8), n,
                               unroll=unroll, rngs=rngs(11))
    perturb(stack, 12, scale=0.2)
    graphdef, params, rest = nnx.split(stack, nnx.Param, ...)

    def loss(params, x, via_steps, graphdef=graphdef, rest=rest):
      s = nnx.merge(graphdef, params, rest)
      if not via_steps:
        z, log_det = s.forward(x)
      else:
        z, log_det = x, 0.0
        for i in range(n):
          z, ld = _step(s, i).forward(z)
          log_det = log_det + ld
      return jnp.sum(z**2) - jnp.sum(log_det), (z, log_det)

    grad = lambda via: jax.jit(jax.value_and_grad(
        lambda p, x: loss(p, x, via), has_aux=True))(params, x)
    if want is None:  # The same parameters for every unroll (same seed).
      want = grad(True)
    (got, (z, ld)), g = grad(False)
    (want_loss, (z1, ld1)), g1 = want
    np.testing.assert_allclose(z, z1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ld, ld1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want_loss, rtol=1e-5)
    leaves, leaves1 = jax.tree.leaves(g), jax.tree.leaves(g1)
    assert len(leaves) == len(leaves1) > 0
    for a, b in zip(leaves, leaves1):  # float32 sums: tolerance on the leaf's scale
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * np.max(np.abs(b)))
    if unroll is True:  # (The rolled inverse: test_data_init_reaches_every_step...)
      np.testing.assert_allclose(stack.inverse(z), x, atol=1e-4)
    # The knob reaches the compiled program: a loop only when not fully unrolled.
    hlo = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest).forward(x)).lower(
        params, x).as_text()
    assert ("stablehlo.while" in hlo) == (unroll is not True), unroll


def test_stack_unroll_is_checked():
  make = functools.partial(flows.GlowStep, 4, 8)
  for bad in (0, -2, 1.5, "yes", None):
    with pytest.raises(ValueError, match="unroll must be"):
      flows.ScannedStack(make, 2, unroll=bad, rngs=rngs(0))
