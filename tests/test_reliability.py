"""Reliability of the training loop (issue 12): SIGTERM, damaged checkpoints,
config validation and resume refusal. One tiny digits run per module (a
launch/train.py subprocess stopped by SIGTERM) is shared; tamper tests copy it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from nifzoo import configs
from nifzoo.train import checkpoint as ckpt_lib
from nifzoo.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
ARGS = ("--config.checkpoint_every=3", "--config.eval_batches=1",
        "--config.sample_every=100000", "--config.log_every=3")


def tiny_config(**overrides):
  c = configs.get_config("digits-nif8,tiny")
  c.checkpoint_every, c.eval_batches, c.sample_every, c.log_every = 3, 1, 100000, 3
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
  """launch/train.py for 100000 steps, SIGTERM once step 3 is checkpointed."""
  workdir = str(tmp_path_factory.mktemp("sigterm") / "run")
  proc = subprocess.Popen(
      [sys.executable, TRAIN, f"--config={ROOT}/configs/digits.py:nif8,tiny",
       f"--workdir={workdir}", "--config.total_steps=100000", *ARGS],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  first = os.path.join(workdir, "checkpoints", "3", ckpt_lib.CHECKSUMS_FILE)
  deadline = time.time() + 300
  while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  return workdir, proc.returncode, out


def test_sigterm_saves_an_exit_checkpoint_and_exits_nonzero(sigterm_run):
  workdir, code, out = sigterm_run
  assert code == 143, out[-3000:]
  assert "Stopped by SIGTERM" in out
  stopped = int(out.split("Stopped by SIGTERM (preemption) at step ")[1].split(".")[0])
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert not [n for n in names if "tmp" in n], names  # No abandoned save.
  steps = sorted(int(n) for n in names if n.isdigit())
  assert steps[-1] == stopped >= 3  # The exit checkpoint is the step it stopped at.
  for s in steps:  # Every finalized checkpoint carries its checksums.
    assert ckpt_lib.verify_checksums(os.path.join(workdir, "checkpoints", str(s)))


def _copy(sigterm_run, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(sigterm_run[0], dst)
  return dst


def test_damaged_checkpoint_is_refused_kept_and_skipped(sigterm_run, tmp_path):
  """64 flipped bytes in the newest checkpoint's data: resume from the one
  before, with a warning naming the file; the damaged one moves to damaged/."""
  workdir = _copy(sigterm_run, tmp_path)
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))
                 if n.isdigit())
  newest = os.path.join(workdir, "checkpoints", str(steps[-1]), "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(newest) for f in fs
           if os.sep + "d" + os.sep in os.path.join(d, f)]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0xFF for b in
                                                     data[len(data) // 2:len(data) // 2 + 64])
    f.seek(0)
    f.write(data)
  config = tiny_config(total_steps=steps[-1])
  mngr = ckpt_lib.manager(workdir)
  _, tx, state = loop.create_state(config, loop.mesh_lib.make_mesh())
  del tx
  it = iter(loop.data_lib.make_dataset(config.data, "train", global_batch_size=8,
                                       seed=0, shuffle=True, repeat=True))
  target_state = ckpt_lib.abstract_like(state, loop.mesh_lib.replicated(
      loop.mesh_lib.make_mesh()))
  step, restored = ckpt_lib.restore_newest_intact(mngr, target_state, it)
  assert step == steps[-2]
  assert ckpt_lib.is_finite(restored)
  moved = os.path.join(workdir, ckpt_lib.DAMAGED_DIR, str(steps[-1]))
  assert os.path.isdir(moved)  # Kept, never deleted.
  assert str(steps[-1]) not in os.listdir(os.path.join(workdir, "checkpoints"))
  with pytest.raises(ckpt_lib.CheckpointError, match="does not match its checksum"):
    ckpt_lib.verify_checksums(moved)


def test_resume_with_a_changed_model_field_is_refused(sigterm_run, tmp_path):
  workdir = _copy(sigterm_run, tmp_path)
  config = tiny_config()
  config.model.squeeze = "glow"
  with pytest.raises(loop.ConfigError, match="model.squeeze: workdir 'channel_major'"):
    loop.train_and_evaluate(config, workdir)
  # Allowed changes pass the check (how long, the learning rate).
  loop.check_resume_config(workdir, configs.finalize(
      tiny_config(total_steps=7, learning_rate=1e-4)))


@pytest.mark.parametrize("field,value", [
    ("learning_rate", -1e-3), ("keep_checkpoints", 0), ("checkpoint_every", 0),
    ("max_consecutive_skips", 0), ("grad_clip", 0.0)])
def test_bad_config_is_refused_before_any_work(field, value, tmp_path):
  config = tiny_config(**{field: value})
  workdir = str(tmp_path / "w")
  with pytest.raises(loop.ConfigError, match=f"config.{field}"):
    loop.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)  # Nothing was written.


def test_empty_workdir_is_refused():
  with pytest.raises(loop.ConfigError, match="workdir"):
    loop.train_and_evaluate(tiny_config(), "")


def test_nonfinite_state_is_never_saved(tmp_path):
  mngr = ckpt_lib.manager(str(tmp_path))
  state = {"w": np.array([1.0, np.nan], np.float32)}
  with pytest.raises(ValueError, match="NaN or inf"):
    ckpt_lib.save(mngr, 1, state, None)
  assert mngr.all_steps() == []


def test_restore_refuses_a_checkpoint_holding_nan(tmp_path):
  """A NaN state written behind the loop's back (valid checksums) is refused."""
  mngr = ckpt_lib.manager(str(tmp_path))
  import grain
  ds = grain.MapDataset.range(4).to_iter_dataset()
  it = iter(ds)
  mngr.save(1, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"w": np.array([np.nan], np.float32)}),
      data=grain.checkpoint.CheckpointSave(it)))
  ckpt_lib.finish(mngr)
  assert ckpt_lib.verify_checksums(os.path.join(str(mngr.directory), "1"))
  import jax
  target = {"w": jax.ShapeDtypeStruct((1,), np.float32,
                                      sharding=jax.sharding.SingleDeviceSharding(
                                          jax.devices()[0]))}
  with pytest.raises(ckpt_lib.CheckpointError, match="NaN or inf"):
    ckpt_lib.restore(mngr, 1, target, it)


# ------------------------------------------------ divergence, stop, rotation


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if n.isdigit())


def _stopped(sigterm_run):
  return _steps(sigterm_run[0])[-1]


def _damage(step_dir):
  """Flips 64 bytes in the middle of the largest array file of ``step_dir``."""
  root = os.path.join(step_dir, "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
           if os.sep + "d" + os.sep in os.path.join(d, f)]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    data = bytearray(f.read())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    f.seek(0)
    f.write(data)


def _finite_log_prob(workdir, step=None):
  """log p of one test batch under the workdir's checkpoint (zoo.load)."""
  from nifzoo import zoo
  model = zoo.load(workdir, step=step)
  batch = next(iter(loop.data_lib.make_dataset(
      model.config.data, "test", global_batch_size=8, seed=0, shuffle=False,
      repeat=False)))["image"]
  lp = np.asarray(model.log_prob(batch, key=loop.jax.random.key(0)))
  return lp.shape == (8,) and bool(np.all(np.isfinite(lp)))


@pytest.fixture(scope="module")
def diverged_run(sigterm_run, tmp_path_factory):
  """The SIGTERM run resumed with learning_rate=1e30 in skip mode, saving
  every step and keeping 2 checkpoints: it must stop as diverged."""
  workdir = str(tmp_path_factory.mktemp("diverged") / "run")
  shutil.copytree(sigterm_run[0], workdir)
  start = _stopped(sigterm_run)
  config = tiny_config(total_steps=start + 40, learning_rate=1e30,
                       checkpoint_every=1, keep_checkpoints=2,
                       max_consecutive_skips=3)
  with pytest.raises(loop.DivergedError) as e:
    loop.train_and_evaluate(config, workdir)
  return workdir, start, str(e.value)


def test_divergence_stops_naming_the_step_checkpoint_and_a_lower_lr(diverged_run):
  workdir, start, msg = diverged_run
  bad = int(msg.split("Non-finite loss, gradient or update at step ")[1].split(" ")[0])
  assert start < bad < start + 40, msg
  assert "3 non-finite steps in a row" in msg
  newest = _steps(workdir)[-1]
  assert f"The newest good checkpoint is step {newest} in " in msg
  assert newest < bad
  assert "lower learning rate" in msg and "1e+30" in msg


def test_rotation_never_removes_the_newest_finite_checkpoint(diverged_run):
  """keep_checkpoints=2 and a checkpoint due every step of the divergence:
  the newest checkpoint left is finite, intact and evaluates finite."""
  workdir, _, _ = diverged_run
  steps = _steps(workdir)
  assert 1 <= len(steps) <= 2
  for s in steps:
    assert ckpt_lib.verify_checksums(os.path.join(workdir, "checkpoints", str(s)))
  assert _finite_log_prob(workdir)


class _Toy(loop.nnx.Module):
  """bits/dim = sum((x - w)^2): finite for any finite w."""

  def __init__(self):
    self.w = loop.nnx.Param(loop.jax.numpy.ones((3,)))

  def bits_per_dim(self, images, key):
    del key
    return loop.jax.numpy.sum((images - self.w.value) ** 2, axis=-1)


def test_a_finite_loss_whose_update_gives_nan_parameters_is_skipped():
  """learning_rate 1e39 is inf in float32: warmup's first rate is inf * 0 =
  NaN, so the loss and gradient are finite but the new parameters are NaN.
  The step must report finite=False and keep the parameters (all ones)."""
  from nifzoo.train import step as step_lib
  import ml_collections
  config = ml_collections.ConfigDict(dict(learning_rate=1e39, warmup_steps=0,
                                          grad_clip=5.0))
  tx = step_lib.make_optimizer(config)
  graphdef, state = step_lib.init_state(_Toy(), tx, 0)
  step_fn = loop.jax.jit(step_lib.make_train_step(graphdef, tx, config))
  images = np.zeros((2, 3), np.float32)
  new, metrics = step_fn(state, images)
  assert np.isfinite(metrics["bits_per_dim"]) and metrics["bits_per_dim"] == 3.0
  assert np.isfinite(metrics["grad_norm"])
  assert not bool(metrics["finite"])
  np.testing.assert_array_equal(np.asarray(new.params["w"].value), np.ones(3))
  assert ckpt_lib.is_finite(new)


def test_stop_mode_leaves_only_a_state_that_evaluates_finite(sigterm_run, tmp_path):
  """on_nonfinite='stop' with learning_rate=1e30: the run stops non-zero, and
  the newest checkpoint (the "last good" state) evaluates finite; resuming
  it stops again without writing another checkpoint."""
  workdir = _copy(sigterm_run, tmp_path)
  config = tiny_config(total_steps=_stopped(sigterm_run) + 40, learning_rate=1e30,
                       checkpoint_every=1, on_nonfinite="stop")
  with pytest.raises(loop.NonFiniteLossError, match="on_nonfinite='stop'"):
    loop.train_and_evaluate(config, workdir)
  steps = _steps(workdir)
  assert _finite_log_prob(workdir)
  with pytest.raises(loop.NonFiniteLossError, match="on_nonfinite='stop'"):
    loop.train_and_evaluate(config, workdir)
  assert _steps(workdir) == steps
