"""Every GCS client against the local emulator (tests/gcs_emulator.py).

Each test makes a real round trip through fake-gcs-server, and checks the
objects there directly (`gcs.objects`), not only through the client that wrote
them. TensorFlow's clients (tf.io.gfile, epath with EPATH_USE_TF=true, clu's
TensorBoard writer, and nifzoo's workdir lease on epath's TF backend) run in
one subprocess for the module (importing TF is most of its time) that goes
through the TLS proxy.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gcs_emulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gcsfs():
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.filesystem("gcs")


def _key(url):
  """gs://bucket/a/b -> a/b."""
  return url[len("gs://"):].partition("/")[2]


def test_environment_is_loopback_only(gcs):
  gcs_emulator.check_env()
  assert gcs.url.startswith("http://127.0.0.1:")
  for name in ("TENSORSTORE_GCS_HTTP_URL", "STORAGE_EMULATOR_HOST",
               "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
    assert os.environ[name] == gcs.url
  assert os.environ["EPATH_USE_TF"] == "false"
  assert gcs.env["https_proxy"] == gcs.tf_env["https_proxy"] == gcs.proxy.url
  assert set(gcs.tf_env) <= set(gcs.env)
  assert gcs.pid and gcs.emulator.process.poll() is None


def test_epath_gcsfs_round_trip(gcs, gcs_path):
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(gcs_path)
  assert type(root._backend).__name__ == "_FileSystemSpecBackend"  # gcsfs, not tf.io.gfile.
  (root / "a.txt").write_text("alpha")
  (root / "sub" / "b.bin").write_bytes(b"\x00\x01")
  assert (root / "a.txt").read_text() == "alpha"
  assert (root / "sub" / "b.bin").read_bytes() == b"\x00\x01"
  assert sorted(p.name for p in root.iterdir()) == ["a.txt", "sub"]
  assert (root / "sub").is_dir() and (root / "a.txt").exists()
  assert not (root / "missing").exists()
  # Rename into an existing "folder" (fsspec refuses a destination whose parent
  # has no object).
  (root / "a.txt").rename(root / "sub" / "c.txt")
  assert not (root / "a.txt").exists()
  assert (root / "sub" / "c.txt").read_text() == "alpha"
  assert gcs.objects(gcs_path) == {_key(gcs_path) + "/sub/b.bin": 2,
                                   _key(gcs_path) + "/sub/c.txt": 5}
  root.rmtree()
  gcs.invalidate()
  assert not root.exists()
  assert gcs.objects(gcs_path) == {}


def test_gcsfs_invalidate_sees_changes_behind_its_back(gcs, gcs_path):
  fs = _gcsfs()
  fs.pipe(f"{gcs_path}/x", b"1")
  assert fs.ls(gcs_path) == [f"{gcs_path[5:]}/x"]
  # An object written by another client (here: the JSON API directly).
  import urllib.parse  # pylint: disable=g-import-not-at-top
  import urllib.request  # pylint: disable=g-import-not-at-top
  name = urllib.parse.quote(f"{_key(gcs_path)}/y", safe="")
  req = urllib.request.Request(
      f"{gcs.url}/upload/storage/v1/b/{gcs.bucket}/o?uploadType=media&name="
      f"{name}", data=b"2", method="POST")
  gcs_emulator._direct_opener().open(req).close()
  gcs.invalidate()
  assert sorted(fs.ls(gcs_path)) == [f"{gcs_path[5:]}/x", f"{gcs_path[5:]}/y"]


def test_orbax_standard_checkpointer(gcs, gcs_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
          "b": np.array([1.5, -2.0], np.float32), "step": np.array(7, np.int32)}
  path = f"{gcs_path}/ckpt"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree)
    ckptr.wait_until_finished()
  names = gcs.objects(path)
  assert any("ocdbt" in n or n.endswith("manifest.ocdbt") for n in names), names
  assert any(n.endswith("_CHECKPOINT_METADATA") for n in names), names
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(path, tree)
  for k in tree:
    np.testing.assert_array_equal(np.asarray(restored[k]), tree[k])


def test_array_record_data_source(gcs, gcs_path, tmp_path):
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  local = str(tmp_path / "x.array_record")
  records = [f"record-{i}".encode() * (i + 1) for i in range(10)]
  writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
  for r in records:
    writer.write(r)
  writer.close()
  remote = f"{gcs_path}/x.array_record-00000-of-00001"
  _gcsfs().put_file(local, remote)
  assert gcs.objects(remote) == {_key(remote): os.path.getsize(local)}
  source = array_record_data_source.ArrayRecordDataSource([remote])
  try:
    assert len(source) == len(records)
    assert source[3] == records[3]
    assert source.__getitems__([0, 9]) == [records[0], records[9]]
  finally:
    source.__exit__(None, None, None)


@pytest.mark.parametrize("name", sorted(gcs_emulator.REQUIRED))
def test_check_env_names_a_missing_variable(gcs, name):
  env = dict(gcs.env)
  gcs_emulator.check_env(env)
  del env[name]
  with pytest.raises(gcs_emulator.GCSEnvError, match=name):
    gcs_emulator.check_env(env)


@pytest.mark.parametrize("name,value", [
    ("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com"),
    ("TENSORSTORE_GCS_HTTP_URL", "http://10.1.2.3:4443"),
    ("GCE_METADATA_HOST", "metadata.google.internal"),
    ("https_proxy", "http://proxy.example.com:3128"),
    ("http_proxy", "http://127.0.0.1:3128"),
    ("FSSPEC_GCS_TOKEN", "google_default"),
    ("GOOGLE_APPLICATION_CREDENTIALS", "/tmp/key.json"),
])
def test_check_env_refuses_off_loopback(gcs, name, value):
  env = dict(gcs.env, **{name: value})
  with pytest.raises(gcs_emulator.GCSEnvError, match=name):
    gcs_emulator.check_env(env)


def _connect(proxy, target):
  import socket  # pylint: disable=g-import-not-at-top
  with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return s.recv(4096).decode("latin-1")


@pytest.mark.parametrize("target", [
    "example.com:443", "pypi.org:443", "storage.googleapis.com:80",
    "googleapis.com.evil.example:443", "127.0.0.1:22", "10.0.0.1:443"])
def test_proxy_refuses_other_hosts(gcs, target):
  before = len(gcs.proxy.refused)
  reply = _connect(gcs.proxy, target)
  assert reply.startswith("HTTP/1.1 403"), reply
  assert gcs.proxy.refused[before:] == [target]


def test_proxy_refuses_plain_http(gcs):
  import http.client  # pylint: disable=g-import-not-at-top
  conn = http.client.HTTPConnection("127.0.0.1", gcs.proxy.port, timeout=10)
  conn.request("GET", "http://example.com/")
  assert conn.getresponse().status == 403
  conn.close()


def test_proxy_serves_googleapis_over_tls(gcs, gcs_path):
  """Python's TLS client through the proxy, trusting only the throw-away CA."""
  import http.client  # pylint: disable=g-import-not-at-top
  import ssl  # pylint: disable=g-import-not-at-top
  _gcsfs().pipe(f"{gcs_path}/hello", b"hi")
  ctx = ssl.create_default_context(cafile=gcs.proxy.ca_file)
  conn = http.client.HTTPSConnection("127.0.0.1", gcs.proxy.port, context=ctx,
                                     timeout=10)
  conn.set_tunnel("storage.googleapis.com", 443)
  conn.request("GET", f"/{gcs.bucket}/{_key(gcs_path)}/hello")
  assert conn.getresponse().read() == b"hi"
  conn.request("GET", f"/storage/v1/b/{gcs.bucket}/storageLayout")
  layout = json.loads(conn.getresponse().read())
  assert layout["bucket"] == gcs.bucket
  conn.close()


# tf.io.gfile, epath's TF backend, clu's writer and the workdir lease on epath's
# TF backend, in one subprocess (TensorFlow's import is most of its time).
_TF_SCRIPT = textwrap.dedent("""
    import json, os, sys
    root = sys.argv[1]
    out = {}
    import tensorflow as tf
    from etils import epath
    g = tf.io.gfile
    d = root + "/gfile"
    with g.GFile(d + "/a.txt", "w") as f:
      f.write("hello from tf")
    out["read"] = g.GFile(d + "/a.txt").read()
    g.makedirs(d + "/emptydir")
    out["listdir"] = sorted(g.listdir(d))
    g.rename(d + "/a.txt", d + "/b.txt")
    out["after_rename"] = sorted(g.listdir(d))
    out["exists_a"] = g.exists(d + "/a.txt")
    out["isdir_emptydir"] = g.isdir(d + "/emptydir")

    p = epath.Path(root) / "epath_tf"
    out["epath_backend"] = type(p._backend).__name__
    (p / "run" / "note.txt").write_text("written by epath on tf.io.gfile")
    (p / "run" / "data.bin").write_bytes(bytes(range(256)))
    out["epath_list"] = sorted(x.name for x in (p / "run").iterdir())

    from clu import metric_writers
    w = metric_writers.SummaryWriter(root + "/tb")
    w.write_scalars(1, {"loss": 0.5})
    w.flush(); w.close()
    out["tb"] = [os.path.basename(x) for x in g.glob(root + "/tb/*")]

    from nifzoo.train import lease as L
    p = root + "/lease"
    a = L.Lease(p, stale_secs=60, settle_secs=0.2)
    a.acquire()
    out["lease"] = [L.read(p)["token"] == a.token]
    try:
      L.Lease(p, stale_secs=60, settle_secs=0.2).acquire()
      out["lease"].append("a live lease was not refused")
    except L.LeaseHeldError as e:
      out["lease"].append(type(e).__name__)
    out["lease"].append(a.heartbeat())
    a.check(step=1)
    a.release()
    out["lease"] += [L.read(p) is None, type(epath.Path(p)._backend).__name__]
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def tf_run(gcs):
  """Runs _TF_SCRIPT once: (root prefix, its results, the proxy's counts)."""
  root = gcs.prefix("tf")
  env = {**os.environ, **gcs.env, **gcs.tf_env, "EPATH_USE_TF": "true",
         "TF_CPP_MIN_LOG_LEVEL": "2", "GCS_RETRY_CONFIG_MAX_RETRIES": "1",
         "PYTHONPATH": os.pathsep.join([ROOT] + os.environ.get(
             "PYTHONPATH", "").split(os.pathsep))}
  before = dict(gcs.proxy.requests)
  refused = len(gcs.proxy.refused)
  proc = subprocess.run([sys.executable, "-c", _TF_SCRIPT, root], env=env,
                        capture_output=True, text=True, timeout=300)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  counts = {k: v - before.get(k, 0) for k, v in gcs.proxy.requests.items()}
  counts["refused"] = gcs.proxy.refused[refused:]
  return root, json.loads(lines[-1][len("RESULT "):]), counts


@pytest.mark.slow
def test_tf_gfile_through_proxy(gcs, tf_run):
  root, out, counts = tf_run
  assert out["read"] == "hello from tf"
  assert out["listdir"] == ["a.txt", "emptydir/"]
  assert out["after_rename"] == ["b.txt", "emptydir/"]
  assert not out["exists_a"] and out["isdir_emptydir"]
  # TF went through the proxy (JSON API on www., downloads on storage.).
  assert counts.get(("www.googleapis.com", "POST"), 0) >= 2, counts
  assert counts.get(("storage.googleapis.com", "GET"), 0) >= 1, counts
  assert counts["refused"] == []  # Nothing but storage APIs asked.
  # The zero-byte dir/ placeholder TF's makedirs writes...
  objects = gcs.objects(root + "/gfile")
  key = _key(root) + "/gfile"
  assert objects == {f"{key}/b.txt": 13, f"{key}/emptydir/": 0}
  # ...which gcsfs lists as a child with the directory's own name.
  gcs.invalidate()
  fs = _gcsfs()
  listed = fs.ls(f"{root}/gfile/emptydir", detail=False)
  assert [n.rstrip("/").rsplit("/", 1)[-1] for n in listed] == ["emptydir"], listed
  assert fs.isdir(f"{root}/gfile/emptydir")


@pytest.mark.slow
def test_cross_backend_tf_write_gcsfs_read(gcs, tf_run):
  root, out, _ = tf_run
  assert out["epath_backend"] != "_FileSystemSpecBackend", out
  gcs.invalidate()
  from etils import epath  # pylint: disable=g-import-not-at-top
  run = epath.Path(root) / "epath_tf" / "run"
  assert type(run._backend).__name__ == "_FileSystemSpecBackend"
  assert (run / "note.txt").read_text() == "written by epath on tf.io.gfile"
  assert (run / "data.bin").read_bytes() == bytes(range(256))
  assert sorted(out["epath_list"]) == ["data.bin", "note.txt"]
  # clu's TensorBoard writer (tf.io.gfile whatever EPATH_USE_TF says).
  assert len(out["tb"]) == 1 and out["tb"][0].startswith("events.out.tfevents")
  events = _gcsfs().cat(f"{root}/tb/{out['tb'][0]}")
  assert b"loss" in events


@pytest.mark.slow
def test_workdir_lease_through_tf_gfile(tf_run):
  """nifzoo/train/lease.py through etils' tf.io.gfile backend (TF installed,
  EPATH_USE_TF): acquired, a second holder refused, heartbeat, released."""
  _, out, _ = tf_run
  assert out["lease"] == [True, "LeaseHeldError", True, True, "_TfBackend"], out["lease"]


def test_check_env_fails_on_os_environ(gcs, monkeypatch):
  """The guard as a test meets it: a variable gone from os.environ."""
  gcs_emulator.check_env()
  monkeypatch.delenv("TENSORSTORE_GCS_HTTP_URL")
  with pytest.raises(gcs_emulator.GCSEnvError,
                     match="TENSORSTORE_GCS_HTTP_URL is not set"):
    gcs_emulator.check_env()
