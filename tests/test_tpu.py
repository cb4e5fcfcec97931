"""TPU readiness without a TPU: compiling for TPU topologies (libtpu's compiler on
this CPU), the NIF prior's precision in the TPU program, the abstract train
state, the max-batch search, and the CPU emulation of TPU products.

The TPU tests skip (with the reason) only where libtpu cannot be loaded.
"""

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from nifzoo import cards
from nifzoo import configs
from nifzoo import mesh as mesh_lib
from nifzoo import models
from nifzoo import tpu
from nifzoo import zoo
from nifzoo.train import step as step_lib

_OK, _WHY = tpu.tpu_available()
needs_libtpu = pytest.mark.skipif(not _OK, reason=f"libtpu not loadable: {_WHY}")


# ------------------------------------------------------------------ TPU compiles


@pytest.fixture(scope="module")
def digits_v5e():
  """digits-nif16's train step compiled for v5e:2x2 (the loop's batch, 64).

  The tests here compile at the lowest execution-time effort (``effort=-1``,
  faster to compile): what they check (the products' precision, the memory
  report's sums, a refusal) does not depend on it."""
  return tpu.compile_train_step(configs.get_config("digits-nif16"), "v5e:2x2",
                                keep_text=True, effort=-1.0)


@needs_libtpu
def test_digits_step_compiles_for_v5e_slice(digits_v5e):
  c = digits_v5e
  assert c.fits and c.devices == 4 and c.per_chip_batch == 16
  assert "TPU" in tpu.topology("v5e:2x2").devices[0].device_kind
  # Every chip holds the whole replicated state: its arguments in HBM are at
  # least the state's bytes (the oracle: the abstract state's shapes).
  _, _, state = step_lib.new_train_state(configs.get_config("digits-nif16"),
                                         abstract=True)
  state_bytes = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize
                    for s in jax.tree.leaves(state))
  assert c.hbm["arguments"] >= state_bytes
  # The buffer assignment's allocations add up to the compiler's own report.
  assert c.hbm["total"] == c.hbm["report_total"]


@needs_libtpu
def test_prior_products_are_highest_on_tpu(digits_v5e):
  prods = tpu.check_prior_precision(digits_v5e.hlo_text)
  assert prods and all(p["precision"] == "highest,highest" for p in prods)
  # The check is not vacuous: outside the prior the Glow's products keep the
  # backend's default (config "default"), i.e. no operand_precision.
  every = tpu.products(digits_v5e.hlo_text)
  glow = [p for p in every if p not in prods]
  assert glow and all(p["precision"] == "default" for p in glow)
  # The prior's Gram matrix, its projections and their gradients are there.
  assert len(prods) >= 10


@needs_libtpu
def test_check_prior_precision_refuses_a_default_product(digits_v5e):
  line = next(l for l in digits_v5e.hlo_text.splitlines()
              if "operand_precision={highest,highest}" in l and "nif_prior" in l)
  bad = digits_v5e.hlo_text.replace(
      line, line.replace("operand_precision={highest,highest}",
                         "operand_precision={default,default}"))
  with pytest.raises(AssertionError, match="not at operand_precision"):
    tpu.check_prior_precision(bad)


@needs_libtpu
def test_matmul_precision_reaches_the_glow():
  """In the program handed to the TPU compiler (which keeps a product's
  precision: the compiled digits step above), every product, the Glow's too."""
  c = configs.get_config("digits-nif4,tiny")
  c.model.matmul_precision = "highest"
  lowered = tpu.lower_train_step(c, tpu.compile_mesh("v5e:1x1"), c.batch_size)
  hlo = lowered.as_text(dialect="hlo", debug_info=True)
  prods = tpu.products(hlo)
  prior = tpu.check_prior_precision(hlo)
  assert len(prods) > len(prior)  # Products outside the prior: the Glow's.
  assert all(p["precision"] == "highest,highest" for p in prods)


@needs_libtpu
def test_out_of_memory_is_a_refusal_not_an_error():
  """A small model at a batch far beyond one chip's HBM (quick to compile)."""
  c = configs.get_config("digits-nif4,tiny")
  out = tpu.compile_train_step(c, "v5e:1x1", 2 ** 22, effort=-1.0)
  assert not out.fits and "RESOURCE_EXHAUSTED" in out.error


@needs_libtpu
@pytest.mark.slow
def test_largest_paper_config_fits_one_v5e_chip_at_batch_32():
  """At the compiler's lowest execution-time effort: a few times faster to
  compile, for a program that needs a few per cent more HBM than the default."""
  c = configs.get_config("celeba-deepnif128")
  out = tpu.compile_train_step(c, "v5e:1x1", 32, keep_text=True, effort=-1.0)
  assert out.fits and out.per_chip_batch == 32
  assert out.hbm["total"] < tpu.USABLE_HBM_GIB["v5e"] * tpu.GiB
  tpu.check_prior_precision(out.hlo_text)


# ------------------------------------------------------------------ abstract state


def test_abstract_state_matches_the_real_one():
  c = configs.get_config("digits-nif4,tiny")
  g1, _, real = step_lib.new_train_state(c)
  g2, _, abstract = step_lib.new_train_state(c, abstract=True)
  assert g1 == g2
  assert jax.tree.structure(real) == jax.tree.structure(abstract)
  for r, a in zip(jax.tree.leaves(real), jax.tree.leaves(abstract)):
    assert isinstance(a, jax.ShapeDtypeStruct)
    assert (r.shape, r.dtype) == (a.shape, a.dtype)


def test_make_mesh_on_given_devices():
  devices = jax.devices()[:1]
  mesh = mesh_lib.make_mesh(devices=devices)
  assert mesh.axis_names == (mesh_lib.DATA_AXIS,)
  assert list(mesh.devices.flat) == devices
  assert mesh_lib.make_mesh().devices.size == jax.device_count()


# ------------------------------------------------------------------ fitting logic


@pytest.mark.parametrize("true_max", [8, 16, 290, 2000, 5])
@pytest.mark.parametrize("guess", [8, 288, 296, 4000])
def test_max_batch_search_finds_the_limit(true_max, guess):
  calls = []

  class R:
    def __init__(self, fits):
      self.fits = fits

  def at(b):
    calls.append(b)
    return R(b <= true_max)

  best, _ = tpu.max_batch(at, guess, known={32: 32 <= true_max})
  # Oracle: brute force over the multiples of 8.
  assert best == max([b for b in range(8, 4097, 8) if b <= true_max], default=0)
  assert len(set(calls)) == len(calls)  # never compiles a batch twice


def test_a_right_guess_costs_two_compiles():
  calls = []
  at = lambda b: calls.append(b) or type("R", (), {"fits": b <= 291})()
  assert tpu.max_batch(at, 288, known={32: True})[0] == 288
  assert calls == [288, 296]


def test_a_refused_guess_descends_in_growing_steps_then_bisects():
  """A prediction past the limit (refused, cheap) is followed by batches 8,
  16, 32, ... further below until one fits; then the bracket is bisected."""
  calls = []
  at = lambda b: calls.append(b) or type("R", (), {"fits": b <= 1280})()
  assert tpu.max_batch(at, 1288, known={984: True, 1288: False})[0] == 1280
  assert calls == [1280]
  calls.clear()
  at = lambda b: calls.append(b) or type("R", (), {"fits": b <= 1270})()
  assert tpu.max_batch(at, 1296, known={1120: True})[0] == 1264
  assert calls == [1296, 1288, 1272, 1240, 1256, 1264]
  calls.clear()  # Far below: down to the fit known, then bisected.
  at = lambda b: calls.append(b) or type("R", (), {"fits": b <= 1100})()
  assert tpu.max_batch(at, 1288, known={984: True, 1288: False})[0] == 1096
  assert calls[:5] == [1280, 1264, 1232, 1168, 1040] and len(set(calls)) == len(calls)


def test_predict_max_batch_on_a_line():
  gib = 2 ** 30
  # 1 GiB fixed + 0.05 GiB per sample; 15.75 GiB usable -> 295 -> 288.
  f = lambda b: gib + 0.05 * gib * b
  assert tpu.predict_max_batch(8, f(8), 32, f(32), 15.75 * gib) == 288


class _FakeCompile:
  """A chip whose HBM is 1 GiB + 0.05 GiB per sample, bent slightly below the
  line at large batches (as the compiler's is), refusing past 15.75 GiB."""
  GIB = 2 ** 30

  def __init__(self):
    self.calls = []

  def hbm(self, b):
    return self.GIB * (1 + 0.05 * b - 1e-6 * b * b)

  def __call__(self, config, topology, b, **kw):
    self.calls.append((topology, b, kw.get("effort", 0.0)))
    per_chip = b // (4 if topology == "v5e:2x2" else 1)
    fits = self.hbm(per_chip) <= 15.75 * self.GIB
    total = int(self.hbm(per_chip))
    return tpu.Compiled(topology, 4 if topology == "v5e:2x2" else 1, b, fits, 0.1,
                        hbm={"total": total, "arguments": total // 2, "temp": 0,
                             "outputs": 0, "other": 0} if fits else None,
                        hlo_text="", error=None if fits else "RESOURCE_EXHAUSTED")


def test_largest_batch_predicts_then_confirms():
  fake = _FakeCompile()
  at = lambda b: fake(None, "v5e:1x1", b)
  best, first = tpu.largest_batch(at, {8: fake.hbm(8), 32: fake.hbm(32)},
                                  15.75 * fake.GIB)
  # Oracle: brute force over the multiples of 8.
  want = max(b for b in range(8, 4097, 8) if fake.hbm(b) <= 15.75 * fake.GIB)
  assert best == want and first <= want  # the line overstates the curve's HBM
  assert len(fake.calls) <= 5 and len({c[1] for c in fake.calls}) == len(fake.calls)
  # A config that does not fit at its batch is searched downwards.
  best, _ = tpu.largest_batch(at, {512: None}, 15.75 * fake.GIB)
  assert best == want
  # A first guess from elsewhere (another generation's slope) replaces the
  # line's; near the limit, it costs two compiles.
  fake.calls.clear()
  best, first = tpu.largest_batch(at, {32: fake.hbm(32)}, 15.75 * fake.GIB,
                                  guess=want + 3)
  assert (best, first) == (want, want) and len(fake.calls) == 2


def test_fit_report_cli_finds_the_largest_batch(monkeypatch):
  """``python -m nifzoo.tpu --max_batch --effort=-1``'s report, on a fake
  compiler (the real one is tested above)."""
  fake = _FakeCompile()
  monkeypatch.setattr(tpu, "compile_train_step", fake)
  lines = []
  c = configs.get_config("digits-nf,tiny")  # No NIF prior: no precision check.
  got = tpu.fit_report(c, "v5e:2x2", 32, find_max_batch=True, effort=-1.0,
                       out=lines.append)
  want = max(b for b in range(8, 4097, 8) if fake.hbm(b) <= 15.75 * fake.GIB)
  assert got["max_per_chip_batch"] == want and got["compiled"].per_chip_batch == 8
  assert lines[-1] == f"  largest per-chip batch that compiles: {want}"
  assert "on v5e:2x2" in lines[0] and "of 15.75 GiB usable" in lines[1]
  assert {e for _, _, e in fake.calls} == {-1.0}  # --effort reaches every compile
  assert all(t == "v5e:1x1" for t, _, _ in fake.calls[1:])


def test_effort_outside_its_range_is_refused():
  with pytest.raises(ValueError, match="effort must lie in"):
    tpu.compile_train_step(configs.get_config("digits-nif4,tiny"), "v5e:1x1",
                           effort=-2.0)


# ------------------------------------------------------------------ precision


def test_precision_is_not_wiring_and_shipped_models_load():
  m = zoo.load("digits-nif16")
  assert m.matmul_precision == "default"
  c = configs.get_config("digits-nif16")
  c2 = configs.get_config("digits-nif16,precision=highest")
  assert models.wiring(c) == models.wiring(c2)
  # On CPU float32 products are float32 at any precision: the same numbers.
  c2.data = m.config.data
  m2 = models.build(c2, rngs=nnx.Rngs(0))
  nnx.update(m2, nnx.state(m))
  assert m2.matmul_precision == "highest"
  x = jnp.asarray(np.random.default_rng(0).integers(0, 17, (8, 8, 8, 1)), jnp.int32)
  lp = jax.jit(lambda x: m.log_prob(x))(x)
  lp2 = jax.jit(lambda x: m2.log_prob(x))(x)
  np.testing.assert_array_equal(np.asarray(lp), np.asarray(lp2))


def test_bad_precision_is_refused():
  c = configs.get_config("digits-nif4,tiny,precision=bf17")
  with pytest.raises(ValueError, match="matmul_precision"):
    models.build(c, rngs=nnx.Rngs(0))


def _bf16(x):
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def test_emulation_rounds_default_products_to_bf16():
  """A chain of products x W1 W2 (W2 HIGHEST), inside jit, scan and a custom_jvp
  function, against a float64 oracle that rounds the operands of the DEFAULT
  products to bfloat16."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 64)).astype(np.float32)
  w1 = rng.normal(size=(64, 32)).astype(np.float32)
  w2 = rng.normal(size=(32, 16)).astype(np.float32)

  @jax.custom_jvp
  def first(x, w):
    return jnp.dot(x, w)

  first.defjvp(lambda p, t: (first(*p), jnp.dot(t[0], p[1])))

  @jax.jit
  def second(h, w):
    return jnp.dot(h, w, precision=jax.lax.Precision.HIGHEST)

  def chain(x, w1, w2):
    def body(c, _):
      return c, second(first(x, w1), w2)
    return jax.lax.scan(body, 0.0, None, length=2)[1][0]

  # Oracle (float64): bf16 operands for the DEFAULT product, float32 h after
  # float32 accumulation, float32 operands for the HIGHEST one.
  h = (_bf16(x) @ _bf16(w1)).astype(np.float32).astype(np.float64)
  want = h @ w2.astype(np.float64)
  got = np.asarray(jax.jit(tpu.emulate_tpu_precision(chain))(x, w1, w2))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # And it is not the float32 result (the rounding happened)...
  exact = (x.astype(np.float64) @ w1) @ w2
  assert np.abs(got - exact).max() > 100 * np.abs(want - got).max()
  # ...while without rounding the interpreter gives float32's numbers.
  plain = jax.jit(tpu.emulate_tpu_precision(chain, default_passes=0))(x, w1, w2)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(jax.jit(chain)(x, w1, w2)))


def test_emulated_high_precision_is_three_bf16_passes():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(8, 256)).astype(np.float32)
  b = rng.normal(size=(256, 8)).astype(np.float32)
  exact = a.astype(np.float64) @ b.astype(np.float64)
  f = lambda p: lambda a, b: jnp.dot(a, b, precision=p)
  err = {p: np.abs(np.asarray(jax.jit(tpu.emulate_tpu_precision(f(p)))(a, b))
                   - exact).max()
         for p in (jax.lax.Precision.DEFAULT, jax.lax.Precision.HIGH,
                   jax.lax.Precision.HIGHEST)}
  # Oracle for HIGH: a = ah + al, b = bh + bl in bf16, ah bh + ah bl + al bh.
  ah, bh = _bf16(a), _bf16(b)
  al, bl = _bf16(a - ah), _bf16(b - bh)
  high = ah @ bh + ah @ bl + al @ bh
  got = np.asarray(jax.jit(tpu.emulate_tpu_precision(f(jax.lax.Precision.HIGH)))(a, b))
  np.testing.assert_allclose(got, high, rtol=1e-5, atol=1e-4)
  assert err[jax.lax.Precision.HIGHEST] < err[jax.lax.Precision.HIGH] < err[
      jax.lax.Precision.DEFAULT]


# ------------------------------------------------------------------ registry


def test_paper_entries_carry_the_bench_hardware_records():
  """The registry's hardware records are what launch/build_registry.py derives
  from bench/tpu_fit.py's JSON (the repository's own files, not the installed
  package's registry)."""
  import json
  import pathlib
  from nifzoo import registry
  root = pathlib.Path(__file__).resolve().parents[1]
  fit = json.loads((root / "bench" / "results" / "tpu_fit.json").read_text())
  for name in configs.names():
    if name.startswith("digits-"):
      continue
    path = registry.entry_path(str(root / "registry"), name)
    entry = registry.read_entry(path)  # validates the schema
    want = cards.hardware_record(fit, name)
    assert entry.data.get("hardware") == want, name
    if want:
      assert "v5e" in want["tpu"]
      text = zoo.info(name, registry=str(root / "registry"))
      assert "fits (TPU compile check" in text and "v5e:" in text
