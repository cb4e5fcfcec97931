"""Test-session set-up: compile fast, and compile each program once.

The tests run tiny models whose time goes into XLA compilation, not execution:

- ``--xla_backend_optimization_level=0`` (and no expensive LLVM passes) makes
  XLA:CPU compile about a third faster, and ``--xla_cpu_use_fusion_emitters=false``
  (XLA:CPU's older loop emitters for its fusions, not the MLIR fusion
  emitters) faster again; ``--xla_cpu_parallel_codegen_split_count=1``
  generates each program's machine code in one piece, not split between
  threads that two busy workers on two cores cannot run in parallel anyway
  (``bench/compile_flags.py`` measures each on the tiny digits programs). The
  programs run slower, which tiny shapes do not notice.
  Numerics are unchanged up to float reassociation, inside every test's
  tolerance; runs compared bitwise are the same program under the same flags.
- One persistent compilation cache per test session, shared through the
  environment by the xdist workers and by every ``launch/train.py`` or
  ``train_worker.py`` subprocess, so a program compiled by one is loaded by
  the others (the tiny digits train step, eval and sampling functions recur).

Only compilation changes: every check still runs. Set ``JAX_COMPILATION_CACHE_DIR``
yourself to keep a cache between sessions, or ``NIFZOO_TEST_XLA_OPT=1`` to test
with XLA's default optimisation.
"""

import collections
import os
import shutil
import tempfile

import pytest

# (bench/compile_flags.py measures these.)
FAST_COMPILE = ("--xla_backend_optimization_level=0",
                "--xla_llvm_disable_expensive_passes=true",
                "--xla_cpu_use_fusion_emitters=false",
                "--xla_cpu_parallel_codegen_split_count=1")


def _known_to_xla(flags) -> list[str]:
  """The flags the installed jaxlib has: XLA aborts the process on an unknown
  flag in XLA_FLAGS, and a jaxlib newer than constraints.txt's may have
  dropped one. Its libraries hold every flag's name as a string."""
  import glob  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import mmap  # pylint: disable=g-import-not-at-top
  names = {f: f.lstrip("-").split("=")[0].encode() for f in flags}
  missing = set(flags)
  spec = importlib.util.find_spec("jaxlib")
  for lib in glob.glob(os.path.join(os.path.dirname(spec.origin), "*.so")):
    if not missing:
      break
    with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
      missing -= {f for f in missing if m.find(names[f]) >= 0}
  return [f for f in flags if f not in missing]


def pytest_configure(config):
  # pytest's unraisable-exception plugin runs 5 full garbage collections as
  # each process ends (seconds with jax's caches on the heap, at the end of
  # every xdist worker); none, as pytester does: what is unraisable is still
  # reported when it is collected during the session.
  try:
    from _pytest import unraisableexception  # pylint: disable=g-import-not-at-top
    config.stash[unraisableexception.gc_collect_iterations_key] = 0
  except (ImportError, AttributeError):
    pass
  if hasattr(config, "workerinput"):  # An xdist worker: the controller set it up.
    return
  if os.environ.get("NIFZOO_TEST_XLA_OPT") != "1":
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags += _known_to_xla([f for f in FAST_COMPILE if f not in flags])
    os.environ["XLA_FLAGS"] = " ".join(flags)
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    cache = tempfile.mkdtemp(prefix="nifzoo-test-xla-cache-")
    config.nifzoo_cache_dir = cache
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
  # Cache every compilation, not only those over jax's default 1 s: the other
  # worker and a later session on the same cache (.ci/run's lower-bounds run)
  # load even the eager single-op programs instead of compiling them again.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  # libtpu (for the TPU compile tests) without a TPU: keep jax from loading it
  # in every process (it probes for chips and the metadata server).
  from nifzoo import runtime  # pylint: disable=g-import-not-at-top
  if "JAX_PLATFORMS" not in os.environ and runtime.tpu_without_chips():
    os.environ["JAX_PLATFORMS"] = "cpu"
  # TPU compiles (tests/test_tpu.py): the xdist workers each load libtpu, which
  # refuses a second process unless told (libtpu's lockfile).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


# The files whose tests take longest (the pod rehearsal, the paper-config TPU
# compile, the multi-process training runs) are handed to the xdist workers
# first: started last, one of them alone would be the suite's tail.
_LONGEST_FIRST = ("test_cloud_pod.py", "test_tpu.py", "test_train.py",
                  "test_reliability.py", "test_compiled.py", "test_models.py")


# A test that needs one of these fixtures needs a training run: it is an
# end-to-end test, ``slow`` (not in the fast set), as if marked so itself.
_TRAINING_RUNS = frozenset({"tiny_run", "gs_run", "sigterm_run", "diverged_run",
                            "tf_run"})


@pytest.hookimpl(tryfirst=True)  # Before -m "not slow" deselects.
def pytest_collection_modifyitems(items):
  for item in items:
    if _TRAINING_RUNS & set(item.fixturenames):
      item.add_marker(pytest.mark.slow)

  # The rest: the files with the most tests first (xdist's own order, which
  # pyproject.toml's --no-loadscope-reorder turns off so this one holds).
  counts = collections.Counter(item.path.name for item in items)

  def rank(item):
    name = item.path.name
    if name in _LONGEST_FIRST:
      return (_LONGEST_FIRST.index(name), 0)
    return (len(_LONGEST_FIRST), -counts[name])
  items.sort(key=rank)  # Stable: each file keeps its own order.


def pytest_unconfigure(config):
  cache = getattr(config, "nifzoo_cache_dir", None)
  if cache:
    shutil.rmtree(cache, ignore_errors=True)


# ---- GCS emulator fixtures (tests/gcs_emulator.py) --------------------------
# Every GCS client points at a local fake-gcs-server; nothing reaches the real
# service. pytest_sessionstart runs in every pytest process (each xdist worker
# picks its own ports) before any test module is imported, and sets the client
# environment there (some clients read it once per process: see
# gcs_emulator's docstring); the `gcs` fixture starts the emulator and the TLS
# proxy for tf.io.gfile on those ports when first used.
import gcs_emulator as _gcs_emulator  # pylint: disable=g-import-not-at-top


def pytest_sessionstart(session):
  del session
  _gcs_emulator.session_start()


def pytest_sessionfinish(session):
  del session
  _gcs_emulator.session_finish()


@pytest.fixture(scope="session")
def gcs():
  """The emulator: .url .bucket .env .tf_env .prefix(name) .invalidate() .pid."""
  server = _gcs_emulator.GCS()
  try:
    yield server.start()
  finally:
    server.stop()


@pytest.fixture
def gcs_path(gcs, request):
  """A fresh gs://<bucket>/<test name>-<uuid8> prefix (no trailing slash)."""
  return gcs.prefix(request.node.name)
# ---- end of the GCS emulator fixtures ---------------------------------------


# ---- The tiny trained-and-registered model (tests/helpers.py) ---------------
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id):
  """(workdir, registry dir, loop result) of one tiny digits-nif4 run,
  registered as ``helpers.TINY_NAME``. Trained once per session: the xdist
  workers share it through their common temp root under a file lock. Shared
  and read-only: copy it (``helpers.copy_tree``) before changing it."""
  import fcntl  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import helpers  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  root = (base if worker_id == "master" else base.parent) / "tiny_run"
  root.mkdir(exist_ok=True)
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / "result.json").exists():
      helpers.train_tiny(str(root))
    fcntl.flock(lock, fcntl.LOCK_UN)
  result = json.loads((root / "result.json").read_text())
  return str(root / "run"), str(root / "reg"), result
