"""Compiled public methods (nifzoo/compiled.py) and the persistent cache (nifzoo/cache.py).

References: the eager result of the same method (``nifzoo.configure(
compiled_methods=False)``, what the methods computed before) and the same call
under a hand-written ``nnx.jit``. A compiled method must equal the hand-written
program bitwise and the eager result to float32 reassociation (XLA fuses ops
the eager path runs one by one).
"""

import contextlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nifzoo
from nifzoo import cache, compiled, configs, models, zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def eager():
  nifzoo.configure(compiled_methods=False)
  try:
    yield
  finally:
    nifzoo.configure(compiled_methods=True)


@pytest.fixture(scope="module")
def nif16():
  return zoo.load("digits-nif16")


@pytest.fixture(scope="module")
def images(nif16):
  return nif16.sample(jax.random.key(5), 8)


@pytest.fixture(scope="module")
def tiny_deepnif():
  config = configs.get_config("digits-deepnif8,tiny")
  model = models.build(config, rngs=models.seeded_rngs(0))
  x = jax.random.randint(jax.random.key(0), (8, 8, 8, 1), 0, 17)
  model.initialize(x)
  return model, x


def _programs():
  fns = [getattr(models.ImageFlow, n) for n in dir(models.ImageFlow)]
  return sum(f.compiled._cache_size() for f in fns if hasattr(f, "compiled"))


K1, K2 = jax.random.key(1), jax.random.key(2)
# name -> f(model, x, z) with x images, z latents; every public method.
CALLS = {
    "log_prob": lambda m, x, z: m.log_prob(x, key=K1, noise_scale=0.5),
    "log_prob_nokey": lambda m, x, z: m.log_prob(x) if m.prior.exact_density else m.log_prob(x, key=K2),
    "bits_per_dim": lambda m, x, z: m.bits_per_dim(x, key=K1),
    "encode": lambda m, x, z: m.encode(x),
    "encode_posterior": lambda m, x, z: m.encode(x, kind="posterior", noise_scale=0.3) if m.prior.exact_density else m.encode(x),
    "decode": lambda m, x, z: m.decode(z, key=K1, noise_scale=0.7, output="continuous"),
    "reconstruct": lambda m, x, z: m.reconstruct(x, output="continuous"),
    "sample": lambda m, x, z: m.sample(K1, 8, temperature=0.9, noise_scale=0.5, output="continuous"),
    "sample_latent": lambda m, x, z: m.sample_latent(K2, 8, temperature=0.8),
    "flow_latent": lambda m, x, z: m.flow_latent(x, key=K1),
    "flow_inverse": lambda m, x, z: m.flow_inverse(
        jnp.tile(z, (1, 4)) if m.prior.has_manifold else z, output="continuous"),
}


def _assert_close(got, want, rtol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert g.shape == w.shape and np.all(np.isfinite(g))
    assert np.max(np.abs(g - w)) <= rtol * np.max(np.abs(w)), (
        np.max(np.abs(g - w)) / np.max(np.abs(w)))


def _assert_bitwise(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _hand_written_jit(names, model, x, z):
  """Each named call under its own hand-written ``nnx.jit``: name -> result."""
  return {n: nnx.jit(CALLS[n])(model, x, z) for n in names}


@pytest.fixture(scope="module")
def nif16_hand_written(nif16, images):
  z = nif16.encode(images)
  return z, _hand_written_jit(sorted(CALLS), nif16, images, z)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_method_equals_its_eager_result_and_the_hand_written_jit(
    name, nif16, images, nif16_hand_written):
  fn = CALLS[name]
  z, reference = nif16_hand_written
  got = fn(nif16, images, z)
  with eager():
    want = fn(nif16, images, z)
  _assert_bitwise(got, reference[name])
  # flow_latent's log-det sums D float32 terms in another order (3e-6 of it,
  # as under the hand-written jit); everything else within 1e-6.
  _assert_close(got, want, 1e-5 if name.startswith("flow_") else 1e-6)


def test_levels_outputs_differ_from_eager_only_on_bin_edges(nif16, images):
  got = nif16.sample(K1, 16, noise_scale=1.0)
  cont = nif16.sample(K1, 16, noise_scale=1.0, output="continuous")
  with eager():
    want = nif16.sample(K1, 16, noise_scale=1.0)
  assert got.dtype == want.dtype == jnp.int32
  differ = np.asarray(got != want)
  y = np.asarray(cont) * nif16.num_levels
  assert np.all(np.abs(y - np.round(y))[differ] < 1e-4)
  assert differ.mean() < 0.01


DEEP_NIF_CALLS = ("log_prob", "encode", "decode", "sample", "sample_latent",
                  "reconstruct")


@pytest.fixture(scope="module")
def tiny_deepnif_hand_written(tiny_deepnif):
  model, x = tiny_deepnif
  z = model.encode(x)
  return z, _hand_written_jit(DEEP_NIF_CALLS, model, x, z)


@pytest.mark.parametrize("name", DEEP_NIF_CALLS)
def test_deep_nif_methods_equal_eager(name, tiny_deepnif, tiny_deepnif_hand_written):
  model, x = tiny_deepnif
  z, reference = tiny_deepnif_hand_written
  got = CALLS[name](model, x, z)
  with eager():
    want = CALLS[name](model, x, z)
  _assert_close(got, want, 1e-6)
  _assert_bitwise(got, reference[name])


def test_initialize_is_compiled_and_equals_eager():
  config = configs.get_config("digits-nif4,tiny")
  x = jax.random.randint(jax.random.key(0), (16, 8, 8, 1), 0, 17)
  a = models.build(config, rngs=models.seeded_rngs(0))
  b = models.build(config, rngs=models.seeded_rngs(0))
  c = models.build(config, rngs=models.seeded_rngs(0))
  before = _programs()
  a.initialize(x, key=K1)
  assert _programs() == before + 1
  with eager():
    b.initialize(x, key=K1)
  # The data statistics reduce in another order than op by op: 2e-6.
  _assert_close(nnx.state(a), nnx.state(b), 1e-5)
  nnx.jit(lambda m, x, k: m.initialize(x, key=k))(c, x, K1)
  _assert_bitwise(nnx.state(a), nnx.state(c))
  from nifzoo import flows
  assert flows.is_initialized(a)
  state = nnx.state(a)
  a.initialize(16 - x, key=K2)  # Idempotent: initialised ActNorms keep theirs.
  _assert_bitwise(nnx.state(a), state)


def test_parameters_are_inputs_never_constants(nif16, images):
  nif16.log_prob(images)
  nif16.sample(K1, 8, output="continuous")
  programs = _programs()
  model = zoo.load("digits-nif16")  # Equally built: the same programs.
  lp = model.log_prob(images)
  samples = model.sample(K1, 8, output="continuous")
  # Change a parameter in place: the next call sees it, with no new program.
  model.nif.A[...] = model.nif.A[...] * 1.5
  lp2 = model.log_prob(images)
  assert not np.allclose(lp, lp2)
  with eager():
    _assert_close(lp2, model.log_prob(images), 1e-6)
  assert not np.allclose(samples, model.sample(K1, 8, output="continuous"))
  # nnx.update with another model's state.
  nnx.update(model, nnx.state(nif16))
  _assert_bitwise(model.log_prob(images), nif16.log_prob(images))
  assert _programs() == programs


def test_programs_are_reused_across_values_and_made_per_shape(nif16, images):
  z = nif16.encode(images)
  nif16.decode(z, key=K1, noise_scale=0.3)
  nif16.sample(K1, 8, temperature=0.5, noise_scale=0.2)
  programs = _programs()
  for s in (0.0, 0.4, 1.3):  # New keys, noise scales, temperatures: no compile.
    nif16.decode(z, key=jax.random.key(int(10 * s)), noise_scale=s)
    nif16.sample(jax.random.key(7), 8, temperature=s + 0.1, noise_scale=s)
  assert _programs() == programs
  nif16.sample(K1, 4)  # Another n: another program.
  assert _programs() == programs + 1


def test_inside_user_transformations_the_methods_trace_through(nif16, images):
  keys = jax.random.split(K1, 3)
  lp = nif16.log_prob(images, key=K1)
  latents = [nif16.sample_latent(k, 4) for k in keys]
  loss = lambda m, x: -jnp.mean(m.log_prob(x))
  with eager():  # The reference, compiled (op by op it takes seconds).
    want = nnx.jit(nnx.grad(loss))(nif16, images)
  programs = _programs()
  _assert_bitwise(jax.jit(lambda x, k: nif16.log_prob(x, key=k))(images, K1), lp)
  # vmap over keys, and a gradient with respect to the parameters.
  batched = jax.vmap(lambda k: nif16.sample_latent(k, 4))(keys)
  for i in range(3):
    _assert_bitwise(batched[i], latents[i])
  grads = nnx.jit(nnx.grad(loss))(nif16, images)  # The same program: bitwise.
  _assert_bitwise(grads, want)
  assert np.any(np.asarray(grads["nif"]["A"][...]) != 0)
  # No nested compile: the methods' own programs were not used under a trace.
  assert _programs() == programs


def test_images_closed_over_in_a_users_jit(nif16, images):
  """Concrete images captured by a jitted function (not its arguments): their
  values are checked when traced, eagerly, whether the methods compile or not."""
  want = nif16.log_prob(images)
  for compiled_methods in (True, False):
    nifzoo.configure(compiled_methods=compiled_methods)
    try:
      _assert_close(jax.jit(lambda: nif16.log_prob(images))(), want, 1e-6)
      bad = images.at[0, 0, 0, 0].set(-1)
      with pytest.raises(ValueError, match=r"values must lie in \[0, 17\)"):
        jax.jit(lambda: nif16.log_prob(bad))()
    finally:
      nifzoo.configure(compiled_methods=True)


def test_checked_still_checks_values_under_jit(nif16, images):
  from nifzoo import checks
  log_prob = checks.checked(lambda m, x: m.log_prob(x))
  _assert_close(log_prob(nif16, images), nif16.log_prob(images), 1e-6)
  with pytest.raises(ValueError, match=r"values must lie in \[0, 17\)"):
    log_prob(nif16, images.at[0, 0, 0, 0].set(17))


def _error(fn):
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    return type(e), str(e)
  return None


BAD_CALLS = {
    "images out of range": lambda m, x: m.log_prob(x.at[0, 0, 0, 0].set(17)),
    "float images": lambda m, x: m.encode(x.astype(jnp.float32)),
    "flow_latent range": lambda m, x: m.flow_latent(x - 1),
    "zero density scale": lambda m, x: m.log_prob(x, noise_scale=0.0),
    "posterior scale": lambda m, x: m.encode(x, kind="posterior", noise_scale=-1.0),
    "bad kind": lambda m, x: m.encode(x, kind="mean"),
    "decode negative s": lambda m, x: m.decode(jnp.zeros((2, 16)), key=K1, noise_scale=-0.5),
    "decode s without key": lambda m, x: m.decode(jnp.zeros((2, 16)), noise_scale=0.5),
    "decode nan": lambda m, x: m.decode(jnp.full((2, 16), jnp.nan)),
    "decode bad output": lambda m, x: m.decode(jnp.zeros((2, 16)), output="png"),
    "decode bad noise": lambda m, x: m.decode(jnp.zeros((2, 16)), key=K1, noise="pink"),
    "reconstruct s without key": lambda m, x: m.reconstruct(x, noise_scale=0.5),
    "sample n": lambda m, x: m.sample(K1, 0),
    "sample string s": lambda m, x: m.sample(K1, 2, noise_scale="1"),
    "sample temperature": lambda m, x: m.sample(K1, 2, temperature=float("nan")),
    "sample no key": lambda m, x: m.sample(None, 2),
    "sample_latent n": lambda m, x: m.sample_latent(K1, 2.5),
    "flow_inverse output": lambda m, x: m.flow_inverse(jnp.zeros((1, 64)), output="x"),
    "initialize range": lambda m, x: m.initialize(x + 20),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_as_eagerly(name, nif16, images):
  fn = BAD_CALLS[name]
  got = _error(lambda: fn(nif16, images))
  with eager():
    want = _error(lambda: fn(nif16, images))
  assert want is not None and got == want


def test_unhashable_static_arguments_run_eagerly(nif16):
  # A list where a static string belongs: the eager path raises as before.
  with eager():
    want = _error(lambda: nif16.sample(K1, 2, output=["levels"]))
  assert _error(lambda: nif16.sample(K1, 2, output=["levels"])) == want


def test_the_method_decorator_refuses_unknown_argument_names():
  with pytest.raises(ValueError, match="no arguments"):
    compiled.method(static=("nope",))(lambda self, x: x)


# ---- the persistent compilation cache ---------------------------------------

_PROBE = """
import json, os, time
import jax
counts = {}
jax.monitoring.register_event_listener(
    lambda name, **kw: counts.__setitem__(name, counts.get(name, 0) + 1))
import nifzoo
from nifzoo import configs, models
status = nifzoo.cache.status()
if os.environ.get("PROBE_SAMPLE"):
  m = models.build(configs.get_config("digits-nif4,tiny"), rngs=models.seeded_rngs(0))
  m.sample_latent(jax.random.key(0), 3)
import threadpoolctl
print(json.dumps(dict(status=status, dir=jax.config.jax_compilation_cache_dir,
                      min_secs=jax.config.jax_persistent_cache_min_compile_time_secs,
                      hits=counts.get("/jax/compilation_cache/cache_hits", 0),
                      openblas={i["filepath"]: i["num_threads"]
                                for i in threadpoolctl.threadpool_info()
                                if i["internal_api"] == "openblas"})))
"""


def _probe(env_updates, sample=False):
  import json
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "NIFZOO_COMPILATION_CACHE",
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                      "OPENBLAS_NUM_THREADS")}
  env.update(env_updates, PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
  if sample:
    env["PROBE_SAMPLE"] = "1"
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True,
                       text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # Starts a Python process that imports jax.
def test_cache_is_on_by_default_in_the_user_cache_dir(tmp_path):
  got = _probe({"XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path)})
  assert got["status"]["source"] == "nifzoo"
  assert got["dir"] == got["status"]["dir"]
  assert got["dir"].startswith(str(tmp_path)) and got["dir"].endswith(
      os.path.join("nifzoo", "jax"))
  assert got["min_secs"] == cache.MIN_COMPILE_SECS
  # scipy's OpenBLAS (jax's CPU LAPACK calls) on one thread; numpy's as it was.
  scipy_blas = {f: n for f, n in got["openblas"].items() if "scipy.libs" in f
                or os.sep + "scipy" + os.sep in f}
  assert set(scipy_blas.values()) == {1}, got["openblas"]
  numpy_blas = [n for f, n in got["openblas"].items() if "numpy" in f]
  if os.cpu_count() > 1:
    assert all(n > 1 for n in numpy_blas), got["openblas"]


@contextlib.contextmanager
def _fresh_cache_settings(monkeypatch, **env):
  """As in a new process with ``env`` set: nifzoo's cache not applied yet, JAX's
  cache settings from ``env`` (else their defaults); restored afterwards.

  ``cache.apply_default`` reads only the environment and JAX's config, both
  set here; ``test_cache_is_on_by_default...`` runs it in a real new process."""
  names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs")
  saved = {n: getattr(jax.config, n) for n in names}
  before = cache.status()
  for k in ("JAX_COMPILATION_CACHE_DIR", cache.ENV,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", env.get("JAX_COMPILATION_CACHE_DIR"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(
      env.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0)))
  cache._STATE.update(source=None, dir=None)  # pylint: disable=protected-access
  try:
    yield
  finally:  # Back to the session's cache (tests/conftest.py).
    for n, v in saved.items():
      jax.config.update(n, v)
    cache._STATE.update(source=before["source"], dir=before["dir"])  # pylint: disable=protected-access
    cache._reset()  # pylint: disable=protected-access


def test_cache_respects_the_users_setting_and_can_be_moved_or_turned_off(
    tmp_path, monkeypatch):
  mine = str(tmp_path / "mine")
  with _fresh_cache_settings(monkeypatch, JAX_COMPILATION_CACHE_DIR=mine,
                             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5"):
    cache.apply_default()
    assert cache.status()["source"] == "user"
    assert (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs) == (mine, 0.5)
  home = tmp_path / "home"
  home.mkdir()
  with _fresh_cache_settings(monkeypatch, NIFZOO_COMPILATION_CACHE="0",
                             HOME=str(home), XDG_CACHE_HOME=str(home)):
    cache.apply_default()
    assert cache.status()["source"] == "off" and cache.status()["dir"] is None
    assert jax.config.jax_compilation_cache_dir is None
    assert not os.listdir(home)  # Nothing made in the default directory.
  moved = str(tmp_path / "moved")
  with _fresh_cache_settings(monkeypatch, NIFZOO_COMPILATION_CACHE=moved):
    cache.apply_default()
    assert cache.status()["source"] == "nifzoo" and cache.status()["dir"] == moved
    assert jax.config.jax_compilation_cache_dir == moved and os.path.isdir(moved)
    assert (jax.config.jax_persistent_cache_min_compile_time_secs
            == cache.MIN_COMPILE_SECS)


@pytest.mark.slow  # Starts a Python process that imports jax.
def test_a_second_process_loads_the_first_ones_programs(tmp_path):
  env = {"NIFZOO_COMPILATION_CACHE": str(tmp_path / "c"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  # The first process also has the user's OPENBLAS_NUM_THREADS: kept (OpenBLAS
  # caps it at the cores) where nifzoo would set one thread.
  first = _probe({**env, "OPENBLAS_NUM_THREADS": "2"}, sample=True)
  assert set(first["openblas"].values()) == {min(2, os.cpu_count())}, first["openblas"]
  assert first["status"]["source"] == "nifzoo" and first["min_secs"] == 0
  assert os.listdir(tmp_path / "c")
  second = _probe(env, sample=True)
  assert second["hits"] >= 1 and second["hits"] > first["hits"]


def test_configure_moves_and_turns_off_the_cache(tmp_path):
  before = cache.status()
  try:
    got = nifzoo.configure(compilation_cache=str(tmp_path / "x"))
    assert got["source"] == "nifzoo" and jax.config.jax_compilation_cache_dir == str(
        tmp_path / "x")
    got = nifzoo.configure(compilation_cache=False)
    assert got["source"] == "off" and not jax.config.jax_enable_compilation_cache
  finally:  # Back to the session's cache (tests/conftest.py).
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "JAX_COMPILATION_CACHE_DIR"))
    cache._STATE.update(source=before["source"], dir=before["dir"])  # pylint: disable=protected-access
    cache._reset()  # pylint: disable=protected-access
