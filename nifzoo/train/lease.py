"""A workdir lease: at most one trainer writes a workdir's checkpoints.

A resubmitted pod job can start while the old one still runs (a scheduler
that lost track of it, a user who resubmitted too early). Both would resume
from the same checkpoint and overwrite each other's saves. The trainer that
holds ``<workdir>/lease.json`` is the only one that saves; another one
refuses to start (:class:`LeaseHeldError`), and a trainer whose lease was
taken over stops before its next save (:class:`LeaseLostError`).

The file (JSON, written through ``etils.epath``, so local paths and ``gs://``
behave the same)::

  {"version": 1, "token": "<uuid4 hex>", "host": "<host name>", "pid": 1234,
   "acquired": "2026-12-07T06:55:15.123+00:00", "heartbeat": "...+00:00",
   "process_count": 4, "stale_secs": 600.0, "heartbeat_secs": 60.0,
   "boot_id": "...", "pid_namespace": "pid:[...]", "pid_start": 123456}

Times are UTC (ISO 8601). ``boot_id``, ``pid_namespace`` and ``pid_start``
(Linux, else null) tell whether the holder is a process of this very machine
that has died (below). The text is padded with spaces to
:data:`_PADDED_BYTES`: every version of the file has the same size, so a
reader that sizes the object from a cached stat (TensorFlow's GCS file
system caches them for seconds) still reads a whole record.

Life of a lease (:func:`hold`):

- **Acquire.** No lease: take it. A lease whose heartbeat is older than the
  stale time (the larger of ours and the one the holder recorded) is taken
  over with a warning naming the old holder and how long it has been silent.
  A lease of a process of this machine (same host, boot and pid namespace)
  that no longer runs (a crashed or killed run resumed on the same VM) is
  taken over at once, with a warning. Any other lease is live: refused with
  :class:`LeaseHeldError` naming the holder, when it would become stale and
  what to do.
- **Heartbeat.** A daemon thread rewrites the heartbeat every
  ``heartbeat_secs`` (only while the file still holds our token: it never
  overwrites another trainer's lease). A lease found taken over or deleted
  is marked lost.
- **Check.** Before every checkpoint save the loop calls :meth:`Lease.check`,
  which re-reads the file: another token (or none, or a file that cannot be
  read in three tries a second apart) raises :class:`LeaseLostError` and the
  checkpoint is not written (nor an exit checkpoint).
- **Release.** At the end of the run, on an error and on SIGTERM the file is
  deleted, only if it still holds our token (under a lock the heartbeat
  takes too, so no heartbeat recreates it afterwards). A run killed hard
  (SIGKILL, a lost VM) leaves it: stale after the stale time, or taken over
  at once by a run on the same machine.

Defaults: stale after :data:`DEFAULT_STALE_SECS` (10 minutes) of silence, a
heartbeat every tenth of that (1 minute). A write per minute costs nothing
and is far below GCS's one write per second per object; ten missed
heartbeats in a row (a GCS outage, a host stalled in a long compile or
swap) are needed before a second trainer may take over. Ten minutes is what
a resubmitted job on *another* host waits after the old one was killed hard
(SIGKILL, a lost VM); a run that exits (normally, on an error, on SIGTERM)
releases at once, and a dead run on the same machine is detected at once.

Several processes (multi-host): only process 0 (the chief) reads and writes
the file and runs the heartbeat; its verdicts (acquired or refused, lease
still held or lost, with the message) are broadcast to every process, so
they all refuse, or stop before the same save, together.

Race windows (stated honestly):

- Local disk: a new lease is created atomically (a complete temporary file
  hard-linked to ``lease.json``, which fails if it exists; ``O_CREAT|O_EXCL``
  where hard links are not supported): of two racers exactly one wins. A
  stale or dead lease is replaced (temporary file + ``os.replace``), then
  re-read after ``settle_secs`` to confirm our token: of two racers the
  last writer wins and the other refuses, unless one racer paused for longer
  than ``settle_secs`` between reading the old lease and writing its own.
- gs://: epath has no create-if-absent, so every acquisition writes the
  object (a single object write is atomic), waits ``settle_secs`` (2 s) and
  re-reads: the last writer wins, the other refuses. Both can believe they
  won if one's read-to-write gap exceeds ``settle_secs``.
- In either case a trainer that wrongly believes it holds the lease finds
  out at its next :meth:`Lease.check`, before saving. What remains is a save
  that was already in flight (Orbax saves asynchronously) when the lease was
  lost, and a heartbeat that read our token just before another trainer's
  takeover and wrote just after its confirmation (it needs a silence of a
  whole stale time first). The stale time compares the holder's clock with
  ours (NTP-synchronised hosts differ by milliseconds).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging

from nifzoo import fileio


LEASE_FILE = "lease.json"
DEFAULT_STALE_SECS = 600.0  # config.lease_stale_secs.
_PADDED_BYTES = 1024
_MSG_BYTES = 4096  # The longest message broadcast from the chief.

# Tokens of the leases this process holds now: a lease recorded with our own
# pid but another token is one an earlier run in this process left behind.
_HELD_TOKENS = set()


class LeaseError(RuntimeError):
  """The workdir's lease stops this run (launch/train.py: one line, exit 1)."""


class LeaseHeldError(LeaseError):
  """Another live trainer holds the workdir's lease."""


class LeaseLostError(LeaseError):
  """Another trainer took over this run's lease: it must not save."""


def _now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


def _iso(t: datetime.datetime) -> str:
  return t.isoformat(timespec="milliseconds")


def read(workdir) -> dict | None:
  """The lease record of ``workdir``, None when there is none. An unreadable
  file gives ``{"unreadable": "<reason>"}``."""
  path = fileio.as_path(workdir) / LEASE_FILE
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
    if not isinstance(record, dict) or "token" not in record:
      raise ValueError("no token")
  except ValueError as e:
    return {"unreadable": f"{type(e).__name__}: {e}"}
  return record


# ------------------------------------------------------ this machine's processes


def _read_small(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return None


def _pid_namespace() -> str | None:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


def _pid_start(pid: int) -> int | None:
  """When ``pid`` started (clock ticks since boot), None if unknown."""
  stat = _read_small(f"/proc/{pid}/stat")
  if not stat:
    return None
  try:  # Field 22; the name in field 2 may hold spaces, hence after ")".
    return int(stat.rsplit(")", 1)[1].split()[19])
  except (IndexError, ValueError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  except OSError:
    return True  # Cannot tell: assume alive.
  return True


def _dead_here(record: dict) -> str | None:
  """Why the holder is a process of this machine that no longer runs, or None
  (another machine, or it runs, or we cannot tell)."""
  if record.get("host") != socket.gethostname():
    return None
  for key, ours in (("boot_id", _read_small("/proc/sys/kernel/random/boot_id")),
                    ("pid_namespace", _pid_namespace())):
    if record.get(key) != ours:  # Another boot, another container's pids.
      return None
  pid = record.get("pid")
  if not isinstance(pid, int):
    return None
  if pid == os.getpid():
    if record.get("token") in _HELD_TOKENS:
      return None
    return f"it is this process (pid {pid}), whose earlier run did not release it"
  if not _pid_alive(pid):
    return f"pid {pid} no longer runs on this host"
  start = _pid_start(pid)
  if start is not None and record.get("pid_start") not in (None, start):
    return f"pid {pid} now belongs to another process (its start time differs)"
  return None


# ----------------------------------------------------------------------- Lease


class Lease:
  """The lease of one workdir for this run (see the module docstring).

  Args:
    workdir: the run's directory (local or ``gs://``).
    stale_secs: a lease silent for longer than this may be taken over.
    heartbeat_secs: how often the heartbeat is rewritten (default a tenth of
      ``stale_secs``).
    settle_secs: how long to wait before re-reading a written lease to confirm
      our token (default 2 s on remote storage, 0.1 s locally).
  """

  def __init__(self, workdir, *, stale_secs: float = DEFAULT_STALE_SECS,
               heartbeat_secs: float | None = None,
               settle_secs: float | None = None):
    if not (isinstance(stale_secs, (int, float)) and stale_secs > 0):
      raise ValueError(f"stale_secs must be a number > 0, got {stale_secs!r}.")
    self.workdir = str(workdir)
    self.path = fileio.as_path(workdir) / LEASE_FILE
    self.stale_secs = float(stale_secs)
    self.heartbeat_secs = float(heartbeat_secs if heartbeat_secs is not None
                                else stale_secs / 10)
    if not 0 < self.heartbeat_secs < self.stale_secs:
      raise ValueError(f"heartbeat_secs must be in (0, stale_secs="
                       f"{self.stale_secs}), got {self.heartbeat_secs!r}.")
    self.remote = not fileio.is_local(workdir)
    self.settle_secs = float(settle_secs if settle_secs is not None else
                             (2.0 if self.remote else 0.1))
    self.chief = jax.process_index() == 0
    self.token = uuid.uuid4().hex
    self.held = False
    self._lost = False  # Set by the heartbeat once the lease is lost.
    self._stop = threading.Event()
    self._lock = threading.Lock()
    self._thread = None

  # ------------------------------------------------------------- public API

  def acquire(self) -> None:
    """Takes the lease (every process calls this) and starts the heartbeat;
    raises :class:`LeaseHeldError` (on every process) if a live trainer
    holds it."""
    ok, message = False, ""
    # Ours from before it is written: a lease of this process that this very
    # acquisition is confirming is not one an earlier run left behind.
    _HELD_TOKENS.add(self.token)
    if self.chief:
      try:
        ok, message = self._acquire_on_chief()
      except Exception as e:  # pylint: disable=broad-except
        # (Every process waits for the chief's verdict: never raise alone.)
        ok, message = False, (
            f"Cannot read or write the workdir lease {self.path}: "
            f"{type(e).__name__}: {e}. Check that the workdir is writable.")
    ok, message = self._agree(ok, message)
    if not ok:
      _HELD_TOKENS.discard(self.token)
      raise LeaseHeldError(message)
    self.held = True
    if self.chief:
      self._thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                      name=f"nifzoo-lease-{self.token[:8]}")
      self._thread.start()

  def check(self, step=None) -> None:
    """Confirms (every process; before a save) that we still hold the lease;
    else raises :class:`LeaseLostError` on every process, naming the holder."""
    ok, message = True, ""
    if self.chief:
      current = self._read_retrying()
      if current is None or current.get("token") != self.token:
        ok = False
        what = f" before saving step {step}" if step is not None else ""
        todo = ("Let the other trainer run, or stop it and rerun this command "
                "to resume from the newest checkpoint.")
        if current is None:
          now = f"{self.path} was deleted"
        elif "error" in current:
          now = f"{self.path} cannot be read ({current['error']})"
          todo = "Fix the storage, then rerun this command to resume."
        elif "unreadable" in current:
          now = f"{self.path} is unreadable ({current['unreadable']})"
        else:
          now = (f"{self.path} is now held by {self._describe(current)}. "
                 "Another trainer took the workdir over (this run's heartbeat "
                 f"was silent for over {self.stale_secs:.0f} s, or the lease "
                 "was deleted)")
        message = (
            f"Lost the workdir lease of {self.workdir}{what}: {now}. Stopped "
            "without writing the checkpoint; the earlier checkpoints are "
            f"untouched. {todo}")
    ok, message = self._agree(ok, message)
    if not ok:
      self._stop.set()
      raise LeaseLostError(message)

  def heartbeat(self) -> bool:
    """Rewrites the heartbeat (chief) if the file still holds our token;
    False (and the lease is marked lost) otherwise."""
    if not self.chief or self._lost:
      return not self._lost
    with self._lock:  # Never a write after release() deleted the lease.
      if self._stop.is_set():
        return True
      current = self._read()
      if current is None or current.get("token") != self.token:
        self._lost = True
        logging.error("The workdir lease %s was taken over or deleted (now: "
                      "%s); this run stops before its next checkpoint.",
                      self.path, self._describe(current) if current else
                      "no lease")
        return False
      record = dict(current, heartbeat=_iso(_now()))
      self._write(record)
      return True

  def release(self) -> None:
    """Stops the heartbeat and deletes the lease if it still holds our token
    (chief). Never raises: it runs while another error may be propagating."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=max(10.0, 2 * self.settle_secs))
      self._thread = None
    if not self.held:
      return
    self.held = False
    _HELD_TOKENS.discard(self.token)
    if not self.chief:
      return
    try:
      with self._lock:
        current = self._read()
        ours = current is not None and current.get("token") == self.token
        if ours:
          self.path.unlink()
      if ours:
        logging.info("Released the workdir lease %s.", self.path)
      else:
        logging.warning("Not deleting the workdir lease %s: it is not ours "
                        "(now: %s).", self.path,
                        self._describe(current) if current else "no lease")
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Could not release the workdir lease %s: %s: %s "
                      "(another trainer can take it over once it is %.0f s "
                      "stale).", self.path, type(e).__name__, e, self.stale_secs)

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()

  # -------------------------------------------------------------- internals

  def _acquire_on_chief(self) -> tuple[bool, str]:
    for _ in range(5):  # Re-read when the lease vanished or appeared meanwhile.
      current = self._read()
      if current is not None and "unreadable" in current:
        # Another trainer's write may be under way (an object store can show
        # it half-written): judge the lease once it reads whole.
        time.sleep(self.settle_secs)
        continue
      start = _now()
      record = {
          "version": 1, "token": self.token, "host": socket.gethostname(),
          "pid": os.getpid(), "acquired": _iso(start), "heartbeat": _iso(start),
          "process_count": jax.process_count(), "stale_secs": self.stale_secs,
          "heartbeat_secs": self.heartbeat_secs,
          "boot_id": _read_small("/proc/sys/kernel/random/boot_id"),
          "pid_namespace": _pid_namespace(), "pid_start": _pid_start(os.getpid())}
      if current is None:
        if not self.remote:
          if not self._create_exclusive(record):
            continue  # Another trainer created it first: judge theirs.
          logging.info("Acquired the workdir lease %s.", self.path)
          return True, ""
      else:
        takeover = self._takeover_reason(current)
        if takeover is None:
          return False, self._held_message(current)
        logging.warning("Taking over the workdir lease %s: %s.", self.path,
                        takeover)
      self._write(record)
      time.sleep(self.settle_secs)
      confirmed = self._read()
      if confirmed is not None and confirmed.get("token") == self.token:
        logging.info("Acquired the workdir lease %s.", self.path)
        return True, ""
      if confirmed is None or "unreadable" in confirmed:
        continue
      return False, ("Another trainer acquired the workdir lease at the same "
                     "time and won. " + self._held_message(confirmed))
    if current is not None and "unreadable" in current:
      return False, self._held_message(current)
    return False, (f"The workdir lease {self.path} kept appearing and "
                   "disappearing: other trainers are starting on this workdir. "
                   "Stop them, then rerun.")

  def _takeover_reason(self, record: dict) -> str | None:
    """Why ``record``'s lease may be taken over (stale, dead here), or None."""
    if "unreadable" in record:
      return None
    dead = _dead_here(record)
    if dead:
      return (f"held by {self._describe(record)}, but {dead} (a crashed or "
              "killed run)")
    silent = self._silent_secs(record)
    if silent is None or silent > self._stale_after(record):
      return (f"held by {self._describe(record)}, silent for "
              f"{'?' if silent is None else f'{silent:.0f}'} s (stale after "
              f"{self._stale_after(record):.0f} s): the holder is presumed dead")
    return None

  def _stale_after(self, record: dict) -> float:
    theirs = record.get("stale_secs")
    return max(self.stale_secs,
               float(theirs) if isinstance(theirs, (int, float)) else 0.0)

  @staticmethod
  def _silent_secs(record: dict) -> float | None:
    try:
      beat = datetime.datetime.fromisoformat(record["heartbeat"])
    except (KeyError, TypeError, ValueError):
      return None
    if beat.tzinfo is None:
      beat = beat.replace(tzinfo=datetime.timezone.utc)
    return (_now() - beat).total_seconds()

  def _describe(self, record: dict) -> str:
    if "unreadable" in record:
      return f"an unreadable lease ({record['unreadable']})"
    silent = self._silent_secs(record)
    return (f"host {record.get('host')!r}, pid {record.get('pid')} "
            f"({record.get('process_count')} jax process(es)) since "
            f"{record.get('acquired')}, last heartbeat "
            f"{'?' if silent is None else f'{silent:.0f}'} s ago")

  def _held_message(self, record: dict) -> str:
    if "unreadable" in record:
      return (f"The workdir {self.workdir} has an unreadable lease {self.path} "
              f"({record['unreadable']}). If no other trainer uses this "
              f"workdir, delete {self.path} and rerun.")
    silent = self._silent_secs(record) or 0.0
    stale_after = self._stale_after(record)
    at = _iso(_now() + datetime.timedelta(seconds=max(stale_after - silent, 0)))
    return (
        f"The workdir {self.workdir} is in use by another trainer: {self.path} "
        f"is held by {self._describe(record)} (heartbeat every "
        f"{record.get('heartbeat_secs')} s). It becomes stale, and can be "
        f"taken over, after {stale_after:.0f} s of silence: not before {at} "
        "if it stops now. Wait for that job to finish, stop it, or, if you are "
        f"sure it is dead, delete {self.path} and rerun.")

  def _read(self) -> dict | None:
    return read(self.workdir)

  def _read_retrying(self, tries: int = 3) -> dict | None:
    """:meth:`_read`, retried on storage errors; ``{"error": ...}`` if they
    persist (the chief must not raise alone: the others wait for it)."""
    for i in range(tries):
      try:
        return self._read()
      except Exception as e:  # pylint: disable=broad-except
        error = f"{type(e).__name__}: {e}"
        logging.warning("Reading the workdir lease %s: %s.", self.path, error)
        if i + 1 < tries:
          time.sleep(1.0)
    return {"error": error}

  def _text(self, record: dict) -> str:
    return json.dumps(record, indent=1).ljust(_PADDED_BYTES) + "\n"

  def _create_exclusive(self, record: dict) -> bool:
    """Creates the local lease file with ``record`` unless it exists."""
    path = os.fspath(self.path)
    tmp = f"{path}.{self.token}.tmp"
    with open(tmp, "w") as f:
      f.write(self._text(record))
    try:
      os.link(tmp, path)  # Atomic, complete content, fails if it exists.
      return True
    except FileExistsError:
      return False
    except OSError as e:  # No hard links on this file system.
      if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                         errno.EXDEV, errno.EMLINK):
        raise
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(self._text(record))
      return True
    finally:
      os.remove(tmp)

  def _write(self, record: dict) -> None:
    """Writes ``record``: locally a temporary file moved over the lease (a
    reader sees the old or the new record, never a partial one); remotely
    one object write (atomic)."""
    if self.remote:
      self.path.write_text(self._text(record))
      return
    path = os.fspath(self.path)
    tmp = f"{path}.{self.token}.tmp"
    with open(tmp, "w") as f:
      f.write(self._text(record))
    os.replace(tmp, path)

  def _heartbeat_loop(self) -> None:
    while not self._stop.wait(self.heartbeat_secs):
      try:
        if not self.heartbeat():
          return
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Could not refresh the workdir lease %s: %s: %s "
                        "(retrying in %.0f s).", self.path, type(e).__name__,
                        e, self.heartbeat_secs)

  def _agree(self, ok: bool, message: str) -> tuple[bool, str]:
    """The chief's (ok, message) on every process."""
    if jax.process_count() == 1:
      return ok, message
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    buf = np.zeros(_MSG_BYTES + 1, np.uint8)
    if self.chief:
      data = message.encode()[:_MSG_BYTES]
      buf[0] = 1 if ok else 2
      buf[1:1 + len(data)] = np.frombuffer(data, np.uint8)
    buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    text = bytes(buf[1:]).rstrip(b"\0").decode(errors="replace")
    return bool(buf[0] == 1), text


@contextlib.contextmanager
def hold(workdir, **kwargs):
  """Holds ``workdir``'s lease for the block (:class:`Lease` arguments):
  acquires it (or raises :class:`LeaseHeldError`), heartbeats, and releases
  it however the block ends."""
  lease = Lease(workdir, **kwargs)
  lease.acquire()
  try:
    yield lease
  finally:
    lease.release()
