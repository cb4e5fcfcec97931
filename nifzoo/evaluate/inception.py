"""Inception-v3 pool3 features for FID, TTUR-compatible, in Flax NNX.

The network is the FID variant of Inception-v3 used by TTUR (Heusel et al.
2017) and ported to PyTorch by pytorch-fid (``FIDInceptionA/C/E``: average
pools that do not count padding, a max pool in the last block's pool branch),
with BatchNorm eps 1e-3 and the 2048-d output of the final average pool
("pool3"). Preprocessing as pytorch-fid: images in [0, 1], grey images
repeated to 3 channels, bilinear resize to 299x299 (half-pixel centres, no
antialiasing), then 2y − 1.

Weights: this project cannot download them. Supply pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` (TTUR's weights) converted once to
``.npz`` with the same key names, e.g. on a machine with torch::

    import numpy as np, torch
    sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
    np.savez("pt_inception.npz", **{k: v.numpy() for k, v in sd.items()})

and pass it as ``load_inception("pt_inception.npz")`` (``launch/evaluate.py
--evals=fid --inception_weights=...``). Keys the network does not use (the
``fc`` classifier, ``num_batches_tracked``) are ignored; a missing key or a
wrong shape is an error naming it. FIDs from different resize or compression
pipelines differ by several points: compare only numbers made the same way.
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nifzoo import checks
from nifzoo import fileio
from nifzoo.evaluate import programs

BN_EPS = 1e-3
FID_SIZE = 299
FEATURE_DIM = 2048


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
  """conv (no bias) -> BatchNorm (inference, eps 1e-3) -> ReLU, NHWC.

  Parameters map to pytorch-fid's ``<name>.conv.weight`` (OIHW, stored here as
  HWIO ``kernel``) and ``<name>.bn.{weight,bias,running_mean,running_var}``.
  """

  def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, *,
               rng: np.random.Generator | None):
    kh, kw = _pair(kernel)
    self.stride, self.padding = _pair(stride), _pair(padding)
    shape = (kh, kw, cin, cout)
    if rng is None:  # To be overwritten by loaded weights.
      kernel = np.zeros(shape, np.float32)
    else:  # He-normal, drawn on the host (numpy): no per-layer jax programs.
      kernel = rng.normal(0.0, np.sqrt(2.0 / (kh * kw * cin)), shape)
    self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
    self.scale = nnx.Param(jnp.ones((cout,)))
    self.bias = nnx.Param(jnp.zeros((cout,)))
    self.mean = nnx.BatchStat(jnp.zeros((cout,)))
    self.var = nnx.BatchStat(jnp.ones((cout,)))

  def __call__(self, x):
    (ph, pw) = self.padding
    y = jax.lax.conv_general_dilated(
        x, self.kernel[...], self.stride, [(ph, ph), (pw, pw)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = (y - self.mean[...]) * jax.lax.rsqrt(self.var[...] + BN_EPS)
    return jax.nn.relu(y * self.scale[...] + self.bias[...])


def max_pool(x, window=3, stride=2, pad=0):
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
      ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def avg_pool_exclude_pad(x, window=3, pad=1):
  """3x3 stride-1 average pool that divides by the number of real pixels
  (PyTorch ``count_include_pad=False``, TF's "SAME" average pool)."""
  dims, strides = (1, window, window, 1), (1, 1, 1, 1)
  padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, padding)
  count = jax.lax.reduce_window(jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None],
                                0.0, jax.lax.add, dims, strides, padding)
  return total / count


class InceptionA(nnx.Module):
  def __init__(self, cin, pool_features, *, rng):
    C = lambda *a, **k: BasicConv2d(*a, **k, rng=rng)
    self.branch1x1 = C(cin, 64, 1)
    self.branch5x5_1 = C(cin, 48, 1)
    self.branch5x5_2 = C(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = C(cin, 64, 1)
    self.branch3x3dbl_2 = C(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = C(96, 96, 3, padding=1)
    self.branch_pool = C(cin, pool_features, 1)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(avg_pool_exclude_pad(x))], axis=-1)


class InceptionB(nnx.Module):
  def __init__(self, cin, *, rng):
    C = lambda *a, **k: BasicConv2d(*a, **k, rng=rng)
    self.branch3x3 = C(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = C(cin, 64, 1)
    self.branch3x3dbl_2 = C(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = C(96, 96, 3, stride=2)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        max_pool(x)], axis=-1)


class InceptionC(nnx.Module):
  def __init__(self, cin, c7, *, rng):
    C = lambda *a, **k: BasicConv2d(*a, **k, rng=rng)
    self.branch1x1 = C(cin, 192, 1)
    self.branch7x7_1 = C(cin, c7, 1)
    self.branch7x7_2 = C(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = C(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = C(cin, c7, 1)
    self.branch7x7dbl_2 = C(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = C(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = C(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = C(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = C(cin, 192, 1)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
      d = layer(d)
    return jnp.concatenate([self.branch1x1(x), b7, d,
                            self.branch_pool(avg_pool_exclude_pad(x))], axis=-1)


class InceptionD(nnx.Module):
  def __init__(self, cin, *, rng):
    C = lambda *a, **k: BasicConv2d(*a, **k, rng=rng)
    self.branch3x3_1 = C(cin, 192, 1)
    self.branch3x3_2 = C(192, 320, 3, stride=2)
    self.branch7x7x3_1 = C(cin, 192, 1)
    self.branch7x7x3_2 = C(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = C(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = C(192, 192, 3, stride=2)

  def __call__(self, x):
    b7 = x
    for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                  self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7,
                            max_pool(x)], axis=-1)


class InceptionE(nnx.Module):
  """``pool="avg"``: FIDInceptionE_1 (Mixed_7b); ``"max"``: FIDInceptionE_2 (7c)."""

  def __init__(self, cin, pool: str, *, rng):
    C = lambda *a, **k: BasicConv2d(*a, **k, rng=rng)
    self.pool = pool
    self.branch1x1 = C(cin, 320, 1)
    self.branch3x3_1 = C(cin, 384, 1)
    self.branch3x3_2a = C(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = C(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = C(cin, 448, 1)
    self.branch3x3dbl_2 = C(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = C(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = C(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = C(cin, 192, 1)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = (avg_pool_exclude_pad(x) if self.pool == "avg"
              else max_pool(x, 3, 1, 1))
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch3x3_2a(b3), self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
        self.branch_pool(pooled)], axis=-1)


class InceptionV3FID(nnx.Module):
  """Images y (B, H, W, C) in [0, 1], C ∈ {1, 3} -> pool3 features (B, 2048).

  ``resize`` is the side the images are resized to (299 for FID; tests use the
  network's minimum, 75, to stay fast). ``seed``: random He-normal weights
  (tests); None: zeros, to be overwritten by :func:`load_inception`.
  """

  def __init__(self, *, resize: int = FID_SIZE, seed: int | None = 0):
    rng = None if seed is None else np.random.default_rng(seed)
    if resize < 75:
      raise ValueError(f"Inception-v3 needs inputs of at least 75x75, got {resize}.")
    self.resize = int(resize)
    C = lambda *a, **k: BasicConv2d(*a, **k, rng=rng)
    self.Conv2d_1a_3x3 = C(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = C(32, 32, 3)
    self.Conv2d_2b_3x3 = C(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = C(64, 80, 1)
    self.Conv2d_4a_3x3 = C(80, 192, 3)
    self.Mixed_5b = InceptionA(192, 32, rng=rng)
    self.Mixed_5c = InceptionA(256, 64, rng=rng)
    self.Mixed_5d = InceptionA(288, 64, rng=rng)
    self.Mixed_6a = InceptionB(288, rng=rng)
    self.Mixed_6b = InceptionC(768, 128, rng=rng)
    self.Mixed_6c = InceptionC(768, 160, rng=rng)
    self.Mixed_6d = InceptionC(768, 160, rng=rng)
    self.Mixed_6e = InceptionC(768, 192, rng=rng)
    self.Mixed_7a = InceptionD(768, rng=rng)
    self.Mixed_7b = InceptionE(1280, "avg", rng=rng)
    self.Mixed_7c = InceptionE(2048, "max", rng=rng)

  def __call__(self, y):
    y = checks.check_float(y, "y")
    if y.ndim != 4 or y.shape[-1] not in (1, 3):
      raise ValueError(f"y must be (B, H, W, C) with C in {{1, 3}}, got {y.shape}.")
    if y.shape[-1] == 1:
      y = jnp.repeat(y, 3, axis=-1)
    y = jax.image.resize(y.astype(jnp.float32),
                         (y.shape[0], self.resize, self.resize, 3),
                         method="bilinear", antialias=False)
    x = 2.0 * y - 1.0
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool(x)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = max_pool(x)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                  self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                  self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------ weights

_TORCH_NAMES = {"kernel": "conv.weight", "scale": "bn.weight", "bias": "bn.bias",
                "mean": "bn.running_mean", "var": "bn.running_var"}


def _convs(model):
  """(pytorch prefix, BasicConv2d) for every conv of the network."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, BasicConv2d):
      yield ".".join(str(p) for p in path), node


def torch_state_dict(model) -> dict[str, np.ndarray]:
  """The network's weights under pytorch-fid's names and layouts (OIHW)."""
  out = {}
  for prefix, conv in _convs(model):
    for attr, tname in _TORCH_NAMES.items():
      v = np.asarray(getattr(conv, attr)[...])
      out[f"{prefix}.{tname}"] = v.transpose(3, 2, 0, 1) if attr == "kernel" else v
  return out


def load_inception(path: str, *, resize: int = FID_SIZE) -> InceptionV3FID:
  """The FID network with weights from a user-supplied ``.npz`` (module docstring)."""
  if not path or not fileio.as_path(path).exists():
    raise FileNotFoundError(
        f"Inception-v3 FID weights not found at {path!r}. This project cannot "
        "download them: convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
        "to .npz as described in nifzoo/evaluate/inception.py and pass its path.")
  try:
    weights = dict(np.load(io.BytesIO(fileio.as_path(path).read_bytes())))
  except Exception as e:  # A truncated or non-npz file.
    raise ValueError(f"Could not read Inception weights from {path}: {e}") from e
  model = InceptionV3FID(resize=resize, seed=None)
  missing, wrong = [], []
  for prefix, conv in _convs(model):
    for attr, tname in _TORCH_NAMES.items():
      key = f"{prefix}.{tname}"
      var = getattr(conv, attr)
      want = tuple(var.shape)
      if key not in weights:
        missing.append(key)
        continue
      w = np.asarray(weights[key], np.float32)
      if attr == "kernel":
        w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w
      if w.shape != want:
        wrong.append(f"{key}: {w.shape} (HWIO) != {want}")
        continue
      var[...] = jnp.asarray(w)
  if missing or wrong:
    raise ValueError(
        f"{path} is not a pytorch-fid Inception-v3 state dict: "
        + (f"{len(missing)} missing keys (e.g. {missing[:3]})" if missing else "")
        + ("; " if missing and wrong else "")
        + (f"{len(wrong)} wrong shapes (e.g. {wrong[:3]})" if wrong else "") + ".")
  return model


def feature_fn(model: InceptionV3FID, mesh=None):
  """A compiled ``y (B,H,W,C) in [0,1] -> pool3 (B, 2048)`` for the Fréchet
  distance (replicated on ``mesh``)."""
  return programs.on_mesh(InceptionV3FID.__call__, model, mesh)
