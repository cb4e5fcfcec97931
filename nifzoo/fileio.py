"""Every file nifzoo reads or writes, on a local disk or in a bucket.

One path type for all of them: ``etils.epath.Path`` (as Orbax uses), so a
local path, ``gs://bucket/...`` and any other epath backend behave the same.
``gs://`` goes through ``tf.io.gfile`` where TensorFlow is installed and
through gcsfs otherwise (``pip install "nifzoo[gcs]"``; ``EPATH_USE_TF=false``
picks gcsfs even with TensorFlow).

What object stores do differently, and how this module evens it out
(README, "On Cloud TPU and GCS"):

- There are no directories: ``mkdir`` is a no-op, and TensorFlow (like the
  Cloud Console) writes zero-byte ``dir/`` placeholder objects, which gcsfs
  lists as an unnamed child. :func:`list_files` skips them, so a tree written
  by one backend hashes the same when read by the other.
- A single object write is atomic and nothing can be appended:
  :func:`write_text` writes whole objects (on a local disk through a temporary
  file and a rename, which is atomic there).
- A rename is a copy and a delete, and gcsfs refuses one into a "folder" that
  has no object yet: :func:`move_tree` copies every file, then deletes.
- gcsfs caches directory listings for the life of the process, and writes made
  by another client (Orbax's arrays go through tensorstore) or by another
  process never reach that cache: a trainer would then list its checkpoints
  without the newest one. nifzoo turns the listing cache off (an option a user
  sets in fsspec's config is left alone).
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def _fresh_gcs_listings() -> None:
  try:
    import fsspec.config  # pylint: disable=g-import-not-at-top
  except ImportError:  # No fsspec: no gcsfs backend either.
    return
  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault(
        "use_listings_cache", False)


_fresh_gcs_listings()


def is_local(path: PathLike) -> bool:
  """True for a path on this machine's file system (no ``scheme://``)."""
  s = os.fspath(path)
  return "://" not in s or s.startswith("file://")


def as_path(path: PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: a local one with ``~`` expanded and made
  absolute (Orbax reads an empty tree from a relative path without
  complaint), a ``gs://`` one unchanged."""
  s = os.fspath(path)
  if s.startswith("file://"):
    s = s[len("file://"):]
  if is_local(s):
    return epath.Path(os.path.abspath(os.path.expanduser(s)))
  return epath.Path(s)


def join(path: PathLike, *parts: str) -> str:
  """``path/part/...`` as a string (``os.path.join`` keeps ``gs://`` intact
  too, but ``os.path.normpath`` does not: it makes ``gs:/``)."""
  return str(as_path(path).joinpath(*parts))


def write_text(path: PathLike, text: str) -> str:
  """Writes ``text`` as the whole content of ``path``, atomically: readers
  see the old content or the new, never a part. Returns the path."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_local(path):
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
  else:  # One object write is atomic on GCS.
    path.write_text(text)
  return str(path)


def write_json(path: PathLike, data: Any, **kwargs) -> str:
  """``data`` as indented JSON (``kwargs`` go to ``json.dumps``), atomically."""
  kwargs.setdefault("indent", 2)
  return write_text(path, json.dumps(data, **kwargs) + "\n")


def read_json(path: PathLike) -> Any:
  return json.loads(as_path(path).read_text())


def list_files(root: PathLike) -> dict[str, epath.Path]:
  """``{relative posix path: path}`` of every file under ``root``, sorted,
  without the zero-byte directory placeholders of object stores.
  ``FileNotFoundError`` if ``root`` does not exist."""
  root = as_path(root)
  if not root.exists():
    raise FileNotFoundError(f"{root} does not exist.")
  prefix = str(root).rstrip("/")
  bare = prefix.split("://", 1)[-1]  # gcsfs walks without the scheme.
  out = {}
  for dirpath, _, files in root.walk():
    d = str(dirpath).rstrip("/")
    for p in (prefix, bare):
      if d == p or d.startswith(p + "/"):
        rel_dir = d[len(p):].lstrip("/")
        break
    else:
      raise ValueError(f"Walking {root} gave {d}, outside it.")
    for name in files:
      if name and name != ".":  # "" is a placeholder ("dir/") under gcsfs.
        rel = posixpath.join(rel_dir, name) if rel_dir else name
        out[rel] = root / rel
  return dict(sorted(out.items()))


def rmtree(path: PathLike) -> None:
  """Deletes ``path`` and everything under it, if it exists."""
  path = as_path(path)
  if path.is_dir():
    path.rmtree()
  elif path.exists():
    path.unlink()


def move_tree(src: PathLike, dst: PathLike) -> str:
  """Moves the directory ``src`` to ``dst`` (which must not exist), keeping
  every file: a rename on a local disk; on an object store every file is
  copied first and ``src`` deleted only after. Returns ``dst``."""
  src, dst = as_path(src), as_path(dst)
  if is_local(src) and is_local(dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
    return str(dst)
  copy_tree(src, dst)
  rmtree(src)
  return str(dst)


def copy_tree(src: PathLike, dst: PathLike) -> str:
  """Copies every file under ``src`` to the same place under ``dst`` (any
  backends: local to gs:// and back). Returns ``dst``."""
  dst = as_path(dst)
  for rel, f in list_files(src).items():
    target = dst / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(f.read_bytes())
  return str(dst)
