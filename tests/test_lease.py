"""The workdir lease (train/lease.py): a second trainer on a live workdir
refuses before writing anything, a stale or dead lease is taken over, racers
get exactly one winner, the heartbeat refreshes, a run whose lease was taken
over stops before its next save, release deletes only our own lease; the same
on gs:// (the fake-gcs-server fixture of tests/conftest.py; through
TensorFlow's tf.io.gfile in tests/test_gcs_clients.py's TF process). The lease API
runs with short stale and heartbeat times; one tiny training run (the lost
lease) is marked slow."""

import datetime
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from etils import epath

from nifzoo import variables
from nifzoo.train import checkpoint as ckpt_lib
from nifzoo.train import lease as lease_lib
from nifzoo.train import loop
from nifzoo.train import setup as setup_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
from test_reliability import tiny_config  # pylint: disable=g-bad-import-order


def _ago(secs):
  t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=secs)
  return t.isoformat(timespec="milliseconds")


def fake_lease(workdir, *, host="other-host", pid=4242, silent=1.0,
               acquired="2026-01-02T03:04:05.000+00:00", **fields):
  """Writes a lease of another trainer into ``workdir`` -> its record."""
  record = {"version": 1, "token": uuid.uuid4().hex, "host": host, "pid": pid,
            "acquired": acquired, "heartbeat": _ago(silent), "process_count": 1,
            "stale_secs": 600.0, "heartbeat_secs": 60.0, "boot_id": None,
            "pid_namespace": None, "pid_start": None}
  record.update(fields)
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / lease_lib.LEASE_FILE).write_text(json.dumps(record))
  return record


def this_machine(**fields):
  """Lease fields that say "a process of this machine"."""
  return dict(host=socket.gethostname(),
              boot_id=lease_lib._read_small("/proc/sys/kernel/random/boot_id"),
              pid_namespace=lease_lib._pid_namespace(), **fields)


def token(workdir):
  record = lease_lib.read(workdir)
  return record and record.get("token")


@pytest.fixture
def warnings_log(caplog):
  caplog.set_level(logging.INFO)
  return lambda: "\n".join(r.getMessage() for r in caplog.records
                           if r.levelno >= logging.WARNING)


# --------------------------------------------------------------- refusing


@pytest.mark.parametrize("holder", ["other_host", "live_local_pid"])
def test_live_holder_refuses_training_before_anything_is_written(holder, tmp_path):
  workdir = str(tmp_path / "run")
  if holder == "other_host":
    theirs = fake_lease(workdir)
  else:  # Our parent process: alive, on this machine.
    theirs = fake_lease(workdir, **this_machine(
        pid=os.getppid(), pid_start=lease_lib._pid_start(os.getppid())))
  with pytest.raises(lease_lib.LeaseHeldError) as e:
    loop.train_and_evaluate(tiny_config(), workdir)
  msg = str(e.value)
  assert f"host {theirs['host']!r}, pid {theirs['pid']}" in msg, msg
  assert "since 2026-01-02T03:04:05.000+00:00" in msg
  assert re.search(r"last heartbeat \d+ s ago", msg) and "not before" in msg
  assert f"delete {os.path.join(workdir, 'lease.json')}" in msg
  assert isinstance(e.value, loop.STOP_ERRORS)  # One line from launch/train.py.
  assert sorted(os.listdir(workdir)) == ["lease.json"]  # No checkpoint, no config.
  assert token(workdir) == theirs["token"]  # Theirs, untouched.


@pytest.mark.slow
def test_launcher_reports_a_held_lease_in_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  fake_lease(workdir)
  proc = subprocess.run(
      [sys.executable, TRAIN, f"--config={ROOT}/configs/digits.py:nif8,tiny",
       f"--workdir={workdir}"], capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=os.pathsep.join(  # This tree's nifzoo.
          [ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep))))
  out = proc.stdout + proc.stderr
  assert proc.returncode == 1, out[-3000:]
  assert "is in use by another trainer" in out and "Traceback" not in out, out[-3000:]


def test_bad_stale_time_is_refused(tmp_path):
  with pytest.raises(setup_lib.ConfigError, match="config.lease_stale_secs"):
    loop.train_and_evaluate(tiny_config(lease_stale_secs=0), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_unreadable_lease_is_refused_naming_it(tmp_path):
  (tmp_path / lease_lib.LEASE_FILE).write_text('{"tok')
  with pytest.raises(lease_lib.LeaseHeldError, match="has an unreadable lease"):
    lease_lib.Lease(str(tmp_path), settle_secs=0.01).acquire()
  assert (tmp_path / lease_lib.LEASE_FILE).read_text() == '{"tok'  # Untouched.


def test_a_lease_read_half_written_is_judged_once_whole(tmp_path, monkeypatch):
  """An object store can show another trainer's lease half-written: that
  racer's lease is held, not unreadable."""
  theirs = fake_lease(str(tmp_path), silent=0)
  reads = []

  def read(workdir):
    reads.append(workdir)
    if len(reads) == 1:
      return {"unreadable": "JSONDecodeError: Unterminated string"}
    return real_read(workdir)

  real_read = lease_lib.read
  monkeypatch.setattr(lease_lib, "read", read)
  with pytest.raises(lease_lib.LeaseHeldError, match="is in use by another trainer"):
    lease_lib.Lease(str(tmp_path), settle_secs=0.01).acquire()
  assert len(reads) == 2 and token(str(tmp_path)) == theirs["token"]


# ------------------------------------------------------------- taking over


def test_stale_lease_is_taken_over_with_a_warning(tmp_path, warnings_log):
  workdir = str(tmp_path)
  fake_lease(workdir, silent=30, stale_secs=5.0)
  # A live lease first: 30 s of silence is not stale for a holder that said 60.
  fake_lease(workdir, silent=30, stale_secs=60.0)
  with pytest.raises(lease_lib.LeaseHeldError, match="after 60 s of silence"):
    lease_lib.Lease(workdir, stale_secs=5).acquire()
  fake_lease(workdir, silent=30, stale_secs=5.0)
  lease = lease_lib.Lease(workdir, stale_secs=5, settle_secs=0.01)
  lease.acquire()
  try:
    assert token(workdir) == lease.token
    warned = warnings_log()
    assert "Taking over" in warned and "'other-host', pid 4242" in warned
    assert "silent for 30 s (stale after 5 s)" in warned, warned
  finally:
    lease.release()
  assert not os.path.exists(tmp_path / "lease.json")


@pytest.mark.parametrize("case", ["dead_pid", "reused_pid", "this_process"])
def test_dead_local_holder_is_taken_over_at_once(case, tmp_path, warnings_log):
  """Same host, boot and pid namespace, fresh heartbeat, 10 min stale time:
  a pid that no longer runs, a pid now used by another process, or this very
  process (an earlier run that did not release) is taken over at once."""
  if case == "dead_pid":
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    fields = this_machine(pid=proc.pid)
    why = f"pid {proc.pid} no longer runs"
  elif case == "reused_pid":
    fields = this_machine(pid=os.getppid(), pid_start=1)
    why = "now belongs to another process"
  else:
    fields = this_machine(pid=os.getpid())
    why = "whose earlier run did not release it"
  fake_lease(str(tmp_path), silent=0, **fields)
  t = time.time()
  with lease_lib.hold(str(tmp_path), settle_secs=0.01) as lease:
    assert time.time() - t < 5
    assert token(str(tmp_path)) == lease.token
  assert why in warnings_log()
  # Another machine's lease of the same pid is live.
  fake_lease(str(tmp_path), silent=0, **dict(fields, boot_id="another-boot"))
  with pytest.raises(lease_lib.LeaseHeldError):
    lease_lib.Lease(str(tmp_path)).acquire()


@pytest.mark.parametrize("existing", [None, "stale"])
def test_racing_leases_have_exactly_one_winner(existing, tmp_path):
  """Eight trainers acquire at once: on a fresh directory (hard-link create)
  and over a stale lease (replace + confirm)."""
  _race(str(tmp_path), existing, 8)
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def _race(workdir, existing, n):
  if existing:
    fake_lease(workdir, silent=100, stale_secs=5.0)
  leases = [lease_lib.Lease(workdir, stale_secs=5, settle_secs=0.5)
            for _ in range(n)]
  barrier, results = threading.Barrier(len(leases)), [None] * len(leases)

  def run(i):
    barrier.wait()
    try:
      leases[i].acquire()
      results[i] = "won"
    except lease_lib.LeaseHeldError as e:
      results[i] = str(e)

  threads = [threading.Thread(target=run, args=(i,)) for i in range(len(leases))]
  for th in threads:
    th.start()
  for th in threads:
    th.join()
  winners = [l for l, r in zip(leases, results) if r == "won"]
  try:
    assert len(winners) == 1, results
    assert token(workdir) == winners[0].token
    assert all("is in use by another trainer" in r for r in results if r != "won"), results
  finally:
    for l in leases:
      l.release()
  assert lease_lib.read(workdir) is None


# --------------------------------------------------- heartbeat and release


def test_heartbeat_refreshes_and_release_deletes(tmp_path):
  with lease_lib.hold(str(tmp_path), stale_secs=2, heartbeat_secs=0.1) as lease:
    first = lease_lib.read(str(tmp_path))
    time.sleep(0.5)
    later = lease_lib.read(str(tmp_path))
    assert later["token"] == first["token"] == lease.token
    assert later["acquired"] == first["acquired"]
    assert later["heartbeat"] > first["heartbeat"]
    # After more than the stale time the lease is still live (heartbeats).
    time.sleep(2.2)
    with pytest.raises(lease_lib.LeaseHeldError, match="last heartbeat [01] s ago"):
      lease_lib.Lease(str(tmp_path), stale_secs=2).acquire()
    lease.check(step=5)
  assert not os.path.exists(tmp_path / "lease.json")


def test_taken_over_lease_is_lost_and_not_deleted(tmp_path):
  lease = lease_lib.Lease(str(tmp_path), stale_secs=2, heartbeat_secs=0.1)
  lease.acquire()
  theirs = fake_lease(str(tmp_path), silent=0)
  time.sleep(0.4)  # Heartbeats see the other token and stop writing.
  assert token(str(tmp_path)) == theirs["token"]
  with pytest.raises(lease_lib.LeaseLostError) as e:
    lease.check(step=7)
  assert "before saving step 7" in str(e.value)
  assert "'other-host', pid 4242" in str(e.value)
  assert isinstance(e.value, loop.STOP_ERRORS)
  lease.release()
  assert token(str(tmp_path)) == theirs["token"]  # Theirs stays.
  # A deleted lease is lost too.
  mine = lease_lib.Lease(str(tmp_path / "b"), stale_secs=2)
  os.makedirs(tmp_path / "b")
  mine.acquire()
  os.remove(tmp_path / "b" / "lease.json")
  with pytest.raises(lease_lib.LeaseLostError, match="was deleted"):
    mine.check()
  mine.release()


def test_every_process_gets_the_chiefs_verdict(tmp_path, monkeypatch):
  """Two jax processes (simulated): the chief judges the lease, the other
  process never reads it and raises the chief's message."""
  fake_lease(str(tmp_path))
  sent = {}

  def chief_broadcast(x):
    sent["buf"] = np.array(x)
    return x

  monkeypatch.setattr(lease_lib.jax, "process_count", lambda: 2)
  monkeypatch.setattr(lease_lib.jax, "process_index", lambda: 0)
  monkeypatch.setattr("jax.experimental.multihost_utils.broadcast_one_to_all",
                      chief_broadcast)
  with pytest.raises(lease_lib.LeaseHeldError) as chief_error:
    lease_lib.Lease(str(tmp_path)).acquire()

  def never(*args):
    raise AssertionError("only the chief reads the lease")

  monkeypatch.setattr(lease_lib.jax, "process_index", lambda: 1)
  monkeypatch.setattr(lease_lib, "read", never)
  monkeypatch.setattr("jax.experimental.multihost_utils.broadcast_one_to_all",
                      lambda x: sent["buf"])
  with pytest.raises(lease_lib.LeaseHeldError) as other_error:
    lease_lib.Lease(str(tmp_path)).acquire()
  assert str(other_error.value) == str(chief_error.value)
  assert "'other-host', pid 4242" in str(other_error.value)


# ------------------------------------------------------ in the training loop


@pytest.mark.slow
def test_lost_lease_stops_the_run_before_its_next_save(tmp_path, monkeypatch):
  """Another trainer takes the lease over after step 3's checkpoint: the run
  stops at step 6 without saving it (nor an exit checkpoint); step 3 stays
  intact and the other trainer's lease stays."""
  workdir = str(tmp_path / "run")
  real_save, thief = ckpt_lib.save, {}

  def save_then_lose(mngr, step, state, data_iter):
    real_save(mngr, step, state, data_iter)
    thief.update(fake_lease(workdir, silent=0))

  monkeypatch.setattr(loop.ckpt_lib, "save", save_then_lose)
  with pytest.raises(lease_lib.LeaseLostError) as e:
    loop.train_and_evaluate(tiny_config(total_steps=6), workdir)
  assert "before saving step 6" in str(e.value) and "'other-host'" in str(e.value)
  steps = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  assert steps == ["3"], steps
  assert variables.verify_checksums(os.path.join(workdir, "checkpoints", "3"))
  assert token(workdir) == thief["token"]


# ------------------------------------------------------------------ gs://

def test_gcs_acquire_refuse_release(gcs_path):
  with lease_lib.hold(gcs_path, stale_secs=60, settle_secs=0.2) as lease:
    assert token(gcs_path) == lease.token
    with pytest.raises(lease_lib.LeaseHeldError, match="is in use by another"):
      lease_lib.Lease(gcs_path, stale_secs=60, settle_secs=0.2).acquire()
    assert token(gcs_path) == lease.token
    lease.check(step=1)
  assert lease_lib.read(gcs_path) is None


def test_gcs_stale_takeover_and_lost_lease(gcs_path, warnings_log):
  fake_lease(gcs_path, silent=30, stale_secs=5.0)
  lease = lease_lib.Lease(gcs_path, stale_secs=5, settle_secs=0.2)
  lease.acquire()
  assert token(gcs_path) == lease.token
  assert "silent for 30 s (stale after 5 s)" in warnings_log()
  theirs = fake_lease(gcs_path, silent=0)
  with pytest.raises(lease_lib.LeaseLostError, match="'other-host'"):
    lease.check(step=2)
  lease.release()
  assert token(gcs_path) == theirs["token"]  # Not ours: left in place.


@pytest.mark.parametrize("existing", [None, "stale"])
def test_gcs_racing_leases_have_exactly_one_winner(existing, gcs_path):
  """Write, settle, confirm: the last writer wins, the others refuse."""
  _race(gcs_path, existing, 4)


def test_gcs_training_refuses_a_live_holder(gcs_path):
  fake_lease(gcs_path)
  with pytest.raises(lease_lib.LeaseHeldError, match="'other-host', pid 4242"):
    loop.train_and_evaluate(tiny_config(), gcs_path)
  assert not (epath.Path(gcs_path) / "checkpoints").exists()
  assert not (epath.Path(gcs_path) / variables.CONFIG_FILE).exists()
