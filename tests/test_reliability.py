"""Reliability of the training loop (issue 12): SIGTERM, damaged checkpoints,
divergence, a full disk, preemption sync, config validation and resume refusal.
One tiny digits run per module (a launch/train.py subprocess stopped by
SIGTERM) is shared and the tests that use it copy its workdir; they are marked
slow (a training process), the rest run in the fast set."""

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
from nifzoo import variables
from nifzoo.train import checkpoint as ckpt_lib
from nifzoo.train import loop
from nifzoo.train import setup as setup_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
ARGS = ("--config.checkpoint_every=3", "--config.eval_batches=1",
        "--config.sample_every=100000", "--config.log_every=3",
        "--config.tensorboard=False")


def tiny_config(**overrides):
  c = configs.get_config("digits-nif8,tiny")
  c.checkpoint_every, c.eval_batches, c.sample_every, c.log_every = 3, 1, 100000, 3
  c.tensorboard = False
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
  first = os.path.join(workdir, "checkpoints", "3", variables.CHECKSUMS_FILE)
  deadline = time.time() + 300
  while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  return workdir, proc.returncode, out


@pytest.mark.slow
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
    assert variables.verify_checksums(os.path.join(workdir, "checkpoints", str(s)))


def _copy(sigterm_run, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(sigterm_run[0], dst)
  return dst


@pytest.mark.slow
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
  _, tx, state = setup_lib.create_state(config, loop.mesh_lib.make_mesh())
  del tx
  it = iter(loop.data_lib.make_dataset(config.data, "train", global_batch_size=8,
                                       seed=0, shuffle=True, repeat=True))
  target_state = variables.abstract_like(state, loop.mesh_lib.replicated(
      loop.mesh_lib.make_mesh()))
  step, restored = ckpt_lib.restore_newest_intact(mngr, target_state, it)
  assert step == steps[-2]
  assert ckpt_lib.is_finite(restored)
  moved = os.path.join(workdir, ckpt_lib.DAMAGED_DIR, str(steps[-1]))
  assert os.path.isdir(moved)  # Kept, never deleted.
  assert str(steps[-1]) not in os.listdir(os.path.join(workdir, "checkpoints"))
  with pytest.raises(variables.CheckpointError, match="does not match its checksum"):
    variables.verify_checksums(moved)


@pytest.mark.slow
def test_resume_with_a_changed_model_field_is_refused(sigterm_run, tmp_path):
  workdir = _copy(sigterm_run, tmp_path)
  config = tiny_config()
  config.model.squeeze = "glow"
  with pytest.raises(setup_lib.ConfigError, match="model.squeeze: workdir 'channel_major'"):
    loop.train_and_evaluate(config, workdir)
  # Allowed changes pass the check (how long, the learning rate, unrolled loops:
  # the config and the wiring checks both).
  allowed = tiny_config(total_steps=7, learning_rate=1e-4)
  allowed.model.unroll = True
  setup_lib.check_resume_config(workdir, configs.finalize(allowed))


@pytest.mark.parametrize("field,value", [
    ("learning_rate", -1e-3), ("keep_checkpoints", 0), ("checkpoint_every", 0),
    ("max_consecutive_skips", 0), ("grad_clip", 0.0)])
def test_bad_config_is_refused_before_any_work(field, value, tmp_path):
  config = tiny_config(**{field: value})
  workdir = str(tmp_path / "w")
  with pytest.raises(setup_lib.ConfigError, match=f"config.{field}"):
    loop.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)  # Nothing was written.


def test_empty_workdir_is_refused():
  with pytest.raises(setup_lib.ConfigError, match="workdir"):
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
  assert variables.verify_checksums(os.path.join(str(mngr.directory), "1"))
  import jax
  target = {"w": jax.ShapeDtypeStruct((1,), np.float32,
                                      sharding=jax.sharding.SingleDeviceSharding(
                                          jax.devices()[0]))}
  with pytest.raises(variables.CheckpointError, match="NaN or inf"):
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


@pytest.mark.slow
def test_divergence_stops_naming_the_step_checkpoint_and_a_lower_lr(diverged_run):
  workdir, start, msg = diverged_run
  bad = int(msg.split("Non-finite loss, gradient or update at step ")[1].split(" ")[0])
  assert start < bad < start + 40, msg
  assert "3 non-finite steps in a row" in msg
  newest = _steps(workdir)[-1]
  assert f"The newest good checkpoint is step {newest} in " in msg
  assert newest < bad
  assert "lower learning rate" in msg and "1e+30" in msg


@pytest.mark.slow
def test_rotation_never_removes_the_newest_finite_checkpoint(diverged_run):
  """keep_checkpoints=2 and a checkpoint due every step of the divergence:
  the newest checkpoint left is finite, intact and evaluates finite."""
  workdir, start, _ = diverged_run
  steps = _steps(workdir)
  assert steps[-1] == start  # No NaN-evaluating state was saved after it.
  for s in steps:
    assert variables.verify_checksums(os.path.join(workdir, "checkpoints", str(s)))
  assert _finite_log_prob(workdir)


class _Toy(loop.nnx.Module):
  """bits/dim = -sum(w) for every image (finite while |sum(w)| < 1.7e38)."""

  def __init__(self):
    self.w = loop.nnx.Param(loop.jax.numpy.array([1.6e38, 0.0, 0.0]))

  def bits_per_dim(self, images, key):
    del key
    return -loop.jax.numpy.sum(self.w.value) + 0.0 * images.sum(-1)


def test_a_finite_loss_whose_update_gives_inf_parameters_is_skipped():
  """The real optimiser at learning_rate 2e38 (no warmup: 0 at step 1, 2e38
  from step 2): step 2's loss (-1.6e38) and gradient (-1) are finite, but
  Adam's update (+2e38) takes w[0] past float32's 3.4e38 to inf. The step must
  report finite=False and keep the parameters."""
  from nifzoo.train import step as step_lib
  import ml_collections
  config = ml_collections.ConfigDict(dict(learning_rate=2e38, warmup_steps=0,
                                          grad_clip=5.0))
  tx = step_lib.make_optimizer(config)
  graphdef, state = step_lib.init_state(_Toy(), tx, 0)
  step_fn = loop.jax.jit(step_lib.make_train_step(graphdef, tx, config))
  images = np.zeros((2, 3), np.float32)
  w0 = np.array([1.6e38, 0.0, 0.0], np.float32)
  state, metrics = step_fn(state, images)  # Learning rate 0: no change.
  assert bool(metrics["finite"])
  np.testing.assert_array_equal(np.asarray(state.params["w"].value), w0)
  state, metrics = step_fn(state, images)
  assert float(metrics["bits_per_dim"]) == float(-w0[0])
  assert np.isfinite(metrics["grad_norm"])
  assert not bool(metrics["finite"])
  np.testing.assert_array_equal(np.asarray(state.params["w"].value), w0)
  assert ckpt_lib.is_finite(state)


@pytest.mark.slow
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


# ------------------------------------------------ full disk, preemption sync


@pytest.mark.slow
@pytest.mark.parametrize("where", ["save", "background"])
def test_full_disk_is_reported_once_at_its_step_and_stops(
    sigterm_run, tmp_path, monkeypatch, caplog, where):
  """ENOSPC at the save of step s (raised by the save call, or found in the
  background write by check_for_errors): CheckpointSaveError naming step s,
  no second report, no exit checkpoint, earlier checkpoints intact."""
  import errno
  workdir = _copy(sigterm_run, tmp_path)
  before = _steps(workdir)
  fail = before[-1] + 1
  enospc = OSError(errno.ENOSPC, "No space left on device")
  if where == "save":
    real = ocp.CheckpointManager.save

    def save(self, step, *a, **k):
      if step == fail:
        raise enospc
      return real(self, step, *a, **k)
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  else:
    real = ocp.CheckpointManager.check_for_errors

    def check_for_errors(self):
      if getattr(self, "pending_step", None) == fail:
        raise enospc
      return real(self)
    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", check_for_errors)
  config = tiny_config(total_steps=fail + 3, checkpoint_every=1)
  with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
    loop.train_and_evaluate(config, workdir)
  msg = str(e.value)
  assert f"Saving the checkpoint of step {fail} into " in msg
  assert "the disk is full" in msg
  logged = [r.getMessage() for r in caplog.records]
  assert not [m for m in logged if "Saving the checkpoint of step" in m], logged
  assert not [m for m in logged if "exit checkpoint" in m or "before exiting" in m]
  after = _steps(workdir)
  assert before[-1] in after and max(after) <= fail  # (Rotation may drop the oldest.)
  for s in after:
    if s != fail:
      assert variables.verify_checksums(os.path.join(workdir, "checkpoints", str(s)))


@pytest.mark.slow
def test_preemption_sync_point_saves_that_step_and_stops(sigterm_run, tmp_path,
                                                         monkeypatch):
  """When JAX's preemption sync point (every host agrees on it) is reached at
  step s, the loop saves step s and raises Preempted, as for SIGTERM."""
  workdir = _copy(sigterm_run, tmp_path)
  s = _stopped(sigterm_run) + 2
  monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption",
                      lambda self, step: step == s)
  config = tiny_config(total_steps=s + 20, checkpoint_every=1000)
  with pytest.raises(loop.Preempted, match=f"at step {s}\\."):
    loop.train_and_evaluate(config, workdir)
  assert _steps(workdir)[-1] == s
  assert variables.verify_checksums(os.path.join(workdir, "checkpoints", str(s)))


# ------------------------------------------------ resume with other code/shapes


@pytest.mark.slow
def test_resume_with_another_wiring_revision_is_refused(sigterm_run, tmp_path,
                                                        monkeypatch):
  """models.WIRING_REVISION bumped (the layers changed since the run started):
  resuming and zoo.load both refuse, naming `revision`."""
  from nifzoo.models import image_flow
  workdir = _copy(sigterm_run, tmp_path)
  with open(os.path.join(workdir, variables.WIRING_FILE)) as f:
    assert json.load(f)["revision"] == image_flow.WIRING_REVISION
  monkeypatch.setattr(image_flow, "WIRING_REVISION", image_flow.WIRING_REVISION + 1)
  with pytest.raises(setup_lib.ConfigError, match="revision: checkpoint .*new --workdir"):
    loop.train_and_evaluate(tiny_config(total_steps=_stopped(sigterm_run)), workdir)
  from nifzoo import zoo  # Loading it for evaluation is refused too.
  with pytest.raises(zoo.ZooError, match="different wiring.*revision: checkpoint"):
    zoo.load(workdir)


@pytest.mark.slow
def test_resume_with_other_shapes_names_them_and_moves_nothing(sigterm_run, tmp_path):
  """A workdir without config.json (older code) resumed with width 16: every
  checkpoint has the old shapes, so the error names them and says to use a
  new workdir; no checkpoint is treated as damaged."""
  workdir = _copy(sigterm_run, tmp_path)
  for name in (variables.CONFIG_FILE, "wiring.json"):
    if os.path.exists(os.path.join(workdir, name)):
      os.remove(os.path.join(workdir, name))
  before = _steps(workdir)
  config = tiny_config(total_steps=before[-1])
  config.model.width = 16
  with pytest.raises(setup_lib.ConfigError) as e:
    loop.train_and_evaluate(config, workdir)
  msg = str(e.value)
  assert "variable(s) differ" in msg and "the model needs" in msg, msg
  assert "new --workdir" in msg
  assert _steps(workdir) == before
  assert not os.path.exists(os.path.join(workdir, ckpt_lib.DAMAGED_DIR))


@pytest.mark.slow
def test_zoo_load_of_a_workdir_verifies_checksums(sigterm_run, tmp_path, caplog):
  """zoo.load(workdir) skips a damaged newest checkpoint (warning naming it,
  left in place) for the newest intact one; asking for that step refuses it."""
  from nifzoo import zoo
  workdir = _copy(sigterm_run, tmp_path)
  steps = _steps(workdir)
  newest = os.path.join(workdir, "checkpoints", str(steps[-1]))
  _damage(newest)
  assert variables.source(workdir)[2] == steps[-2]
  assert _finite_log_prob(workdir)
  assert any("does not match its checksum" in r.getMessage() and newest in
             r.getMessage() for r in caplog.records)
  assert os.path.isdir(newest)  # Loading never moves files.
  with pytest.raises(variables.CheckpointError, match="does not match its checksum"):
    zoo.load(workdir, step=steps[-1])
