"""Image grids as PNG files (samples, reconstructions, interpolations)."""

from __future__ import annotations

import math

import numpy as np
from etils import epath
from PIL import Image


def grid(images, ncols: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
  """Float images (N, H, W, C) in [0, 1] -> one uint8 grid (rows*H', cols*W', C).

  Cells are separated by ``pad`` white pixels; each pixel is repeated
  ``scale`` times per axis (small images such as 8x8 digits are easier to see).
  """
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
  n, h, w, c = images.shape
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  out = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, q = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    out[y:y + h, x:x + w] = images[i]
  return (out * 255.0 + 0.5).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> str:
  """Writes a uint8 (H, W, C) image with C in {1, 3} as PNG; returns the path."""
  path = epath.Path(path)  # Local paths and gs:// alike.
  path.parent.mkdir(parents=True, exist_ok=True)
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  with path.open("wb") as f:
    Image.fromarray(image).save(f, format="PNG")
  return str(path)


def save_figure(fig, path: str, dpi: int = 120) -> str:
  """Writes a matplotlib figure as PNG (local or gs://), closes it, returns the path."""
  import io  # pylint: disable=g-import-not-at-top
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  plt.close(fig)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buf.getvalue())
  return str(path)
