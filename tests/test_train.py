"""Training: loss goes down, exact resume, data parallel = single device,
multi-process = single process, non-finite steps skipped or stopped, what a
run logs, and no tensorflow without TensorBoard logs."""

import glob
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from nifzoo import configs
from nifzoo import data
from nifzoo.train import loop
from nifzoo import mesh as mesh_lib
from nifzoo.train import setup as setup_lib
from nifzoo.train import step as step_lib

import gcs_emulator  # free_port
import helpers
import train_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
WORKER = os.path.join(ROOT, "tests", "train_worker.py")


def tiny_config(**overrides):
  c = configs.get_config("digits-nif8,tiny")
  c.log_every = 5
  c.tensorboard = False
  for k, v in overrides.items():
    c[k] = v
  return c


def test_optimizer_skips_nonfinite_updates_and_logs_the_applied_lr():
  """make_optimizer: a non-finite gradient changes neither parameters nor
  optimiser state, and the logged learning rate is the warmup schedule at the
  number of updates applied so far (skipped ones do not count)."""
  config = tiny_config(learning_rate=1e-2, warmup_steps=4)
  tx = step_lib.make_optimizer(config)
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  state = tx.init(params)
  applied = 0
  for g in ([1.0, 1.0, 1.0], [np.nan, 1.0, 1.0], [1.0, -1.0, 2.0],
            [np.inf, 0.0, 0.0], [0.5, 0.5, 0.5]):
    g = jnp.asarray(g)
    updates, new_state = tx.update({"w": g}, state, params)
    new_params = optax.apply_updates(params, updates)
    finite = bool(np.isfinite(np.asarray(g)).all())
    assert bool(new_state.last_finite) == finite
    if finite:
      assert float(step_lib.learning_rate(new_state)) == pytest.approx(
          1e-2 * min(applied, 4) / 4)
      assert not np.array_equal(new_params["w"], params["w"]) or applied == 0
      applied += 1
    else:
      np.testing.assert_array_equal(new_params["w"], params["w"])
      for a, b in zip(jax.tree.leaves(new_state.inner_state),
                      jax.tree.leaves(state.inner_state)):
        np.testing.assert_array_equal(a, b)
    params, state = new_params, new_state
  assert int(state.total_notfinite) == 2 and applied == 3

@pytest.mark.slow
def test_loss_decreases_on_digits():
  config = tiny_config(learning_rate=3e-3, warmup_steps=1)
  mesh = mesh_lib.make_mesh()
  graphdef, tx, state = setup_lib.create_state(config, mesh)
  it = iter(data.make_dataset(config.data, "train", global_batch_size=32, seed=0))
  batch = lambda: mesh_lib.global_batch(mesh, next(it)["image"])
  state = setup_lib.initialize_actnorms(graphdef, state, batch(), mesh)
  held_out = mesh_lib.global_batch(mesh, next(iter(data.make_dataset(
      config.data, "test", global_batch_size=64, seed=0, shuffle=False)))["image"])
  eval_fn = jax.jit(lambda params, rest, x, key: jnp.mean(
      nnx.merge(graphdef, params, rest).bits_per_dim(x, key=key)))
  key = jax.random.key(0)
  before = float(eval_fn(state.params, state.rest, held_out, key))
  step = jax.jit(step_lib.make_train_step(graphdef, tx, config))
  for _ in range(40):
    state, metrics = step(state, batch())
    assert metrics["finite"]
  after = float(eval_fn(state.params, state.rest, held_out, key))
  assert np.isfinite(before) and after < before - 0.2, (before, after)


def _spawn(cmd, log):
  """Starts ``cmd`` writing its stdout and stderr to the file ``log`` -> (proc, log).

  A file, not a pipe: while ``_wait`` waits for one process, a pipe nobody reads
  could fill and stall another (fatal for processes that sync with each other)."""
  with open(log, "w") as f:
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), log


def _wait(runs):
  """Waits for ``_spawn``ed runs; their logs, asserting each exited with 0."""
  logs = []
  for proc, log in runs:
    proc.wait(timeout=600)
    with open(log) as f:
      logs.append(f.read())
    assert proc.returncode == 0, logs[-1][-4000:]
  return logs


def _start_train(workdir, config_arg, *extra, python_flags=()):
  return _spawn([sys.executable, *python_flags, TRAIN,
                 f"--config={os.path.join(ROOT, 'configs', 'digits.py')}:{config_arg}",
                 f"--workdir={workdir}", *extra], f"{workdir}.log")


def _restore(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def _restore_params(workdir, step):
  return _restore(workdir, step)["params"]


def _actnorm_flags(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [np.asarray(v) for path, v in flat if "initialized" in jax.tree_util.keystr(path)]


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
  """2N steps straight == N steps, a fresh process restoring, N more (bitwise).

  The straight run writes TensorBoard logs; the other one
  (config.tensorboard=False) writes metrics.jsonl and never imports
  tensorflow. Each log step's numbers are logged once, after one progress line
  (steps/s and ETA)."""
  args = ("--config.checkpoint_every=4", "--config.sample_every=100",
          "--config.log_every=4", "--config.eval_batches=1")
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  no_tb = "--config.tensorboard=False"
  # Each process is mostly one busy thread: the independent runs go in pairs.
  log, _ = _wait([
      _start_train(straight, "nif8,tiny", "--config.total_steps=8", *args),
      _start_train(resumed, "nif8,tiny", "--config.total_steps=4", no_tb, *args)])
  (log_resumed,) = _wait([_start_train(
      resumed, "nif8,tiny", "--config.total_steps=8", no_tb, *args,
      python_flags=("-X", "importtime"))])
  assert "Resumed" in log_resumed
  a = _restore_params(straight, 8)
  b = _restore_params(resumed, 8)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The ActNorm init flags are in the checkpoint, so a restored model is not
  # re-initialised (the loop only initialises when there is no checkpoint).
  flags = _actnorm_flags(_restore(resumed, 4)["rest"])
  assert flags and all(f.all() for f in flags)
  # The workdir holds TensorBoard logs and sample PNGs.
  assert glob.glob(os.path.join(straight, "events.out.tfevents.*"))
  assert glob.glob(os.path.join(straight, "samples", "samples_s0_*.png"))
  # Without them: metrics.jsonl (steps 4 and 8 of both processes), no tensorflow.
  assert not glob.glob(os.path.join(resumed, "events.out.tfevents.*"))
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    logged = [l for l in f if '"train_bits_per_dim"' in l]
  assert [l.split(",")[0] for l in logged] == ['{"step": 4', '{"step": 8']
  packages = helpers.imported_packages(log_resumed)
  assert "clu" in packages and "jax" in packages and "tensorflow" not in packages
  # One progress line and the numbers once per log step (4 and 8; after resuming, 8).
  for out, steps in ((log, (4, 8)), (log_resumed, (8,))):
    lines = out.splitlines()
    progress = [l for l in lines if "steps/s" in l]
    numbers = [l for l in lines if "train_bits_per_dim=" in l]
    assert all(f"({s}/8), ETA: " in l for l, s in zip(progress, steps)), progress
    assert len(progress) == len(numbers) == len(steps), (progress, numbers)
    assert all(re.search(rf"\[{s}\] .*train_bits_per_dim=", l)
               for l, s in zip(numbers, steps)), numbers


def _worker(out, devices, *extra):
  log = f"{out}.{len(glob.glob(out + '.*.log'))}.log"  # Processes can share an out.
  return _spawn([sys.executable, WORKER, f"--devices={devices}", f"--out={out}", *extra],
                log)


def _load(path):
  f = np.load(path)
  return f["losses"], [f[k] for k in sorted(f.files, key=lambda k: (len(k), k))
                       if k != "losses"]


def _assert_close(run_a, run_b):
  (la, pa), (lb, pb) = run_a, run_b
  np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5)
  assert len(pa) == len(pb) > 0
  for x, y in zip(pa, pb):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_data_parallel_and_two_processes_match_one_device(tmp_path):
  """8 devices in one process, and 2 processes x 2 devices, against 1 device."""
  eight, multi = (str(tmp_path / f"{n}.npz") for n in ("eight", "multi"))
  coord = f"--coordinator=127.0.0.1:{gcs_emulator.free_port()}"
  runs = [_worker(eight, 8),
          *(_worker(multi, 2, coord, f"--process_id={i}", "--num_processes=2")
            for i in range(2))]
  reference = train_worker.train(devices=jax.devices()[:1])  # Here, meanwhile.
  _wait(runs)
  _assert_close(reference, _load(eight))
  _assert_close(reference, _load(multi))


@pytest.mark.slow
def test_nonfinite_step_is_skipped_or_stops(tmp_path, monkeypatch):
  """A corrupted batch (values far outside the grey levels -> NaN in the logit).

  The host does not wait for every step: in skip mode it reads the steps'
  metrics (in one transfer) only at the steps that log, sample, save or end
  the run; in stop mode (any step may stop it) at every step. The skipped steps
  are counted in the optimiser state, so the count is in the checkpoint."""
  calls, events = {"n": 0}, []
  real, real_get = mesh_lib.global_batch, jax.device_get

  def poisoned(mesh, images):
    calls["n"] += 1
    events.append("b")
    images = np.array(images)
    if calls["n"] == 4:  # The init batch is call 1; this is train step 3.
      images[0, 0, 0, 0] = -1000
    return real(mesh, images)

  def get(x):
    if isinstance(x, list) and x and "finite" in x[0]:  # Train steps' metrics.
      events.append(f"r{len(x)}")
    return real_get(x)

  monkeypatch.setattr(loop.mesh_lib, "global_batch", poisoned)
  monkeypatch.setattr(loop.jax, "device_get", get)
  config = tiny_config(total_steps=6, checkpoint_every=100, sample_every=100,
                       eval_batches=1)  # log_every = 5
  result = loop.train_and_evaluate(config, str(tmp_path / "skip"))
  assert result["skipped_steps"] == 1
  assert np.isfinite(result["train_bits_per_dim"])
  # Steps 1-5 are read at step 5 (it logs), 6 at the last step (then the
  # evaluation's batches).
  reads = lambda: [e for e in events if e[0] == "r"]
  assert events[1:9] == ["b"] * 5 + ["r5", "b", "r1"] and len(reads()) == 2, events
  opt_state = _restore(str(tmp_path / "skip"), 6)["opt_state"]
  assert [int(v) for k, v in sorted(opt_state.items()) if k in (
      "notfinite_count", "total_notfinite")] == [0, 1], opt_state.keys()

  calls["n"], events[:] = 0, []
  config.on_nonfinite = "stop"
  with pytest.raises(loop.NonFiniteLossError, match="step 3"):
    loop.train_and_evaluate(config, str(tmp_path / "stop"))
  assert events[1:7] == ["b", "r1"] * 3 and len(reads()) == 3, events
  # Nothing lost: the last good state (step 3, the bad update not applied) is saved.
  params = _restore_params(str(tmp_path / "stop"), 3)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_interrupted_run_saves_and_resumes_exactly(tmp_path, monkeypatch):
  """Ctrl-C after a batch was fetched but before its step: the exit checkpoint
  holds the last finished step with the data iterator rewound to match."""
  config = tiny_config(total_steps=6, checkpoint_every=100, sample_every=100,
                       eval_batches=1)
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  loop.train_and_evaluate(config, straight)

  calls = {"n": 0}
  real = mesh_lib.global_batch

  def interrupt(mesh, images):
    calls["n"] += 1
    if calls["n"] == 5:  # Call 1 is the init batch; this is step 4's batch.
      raise KeyboardInterrupt
    return real(mesh, images)

  monkeypatch.setattr(loop.mesh_lib, "global_batch", interrupt)
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(config, interrupted)
  monkeypatch.setattr(loop.mesh_lib, "global_batch", real)
  assert os.path.isdir(os.path.join(interrupted, "checkpoints", "3"))
  loop.train_and_evaluate(config, interrupted)
  for x, y in zip(jax.tree.leaves(_restore_params(straight, 6)),
                  jax.tree.leaves(_restore_params(interrupted, 6))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
