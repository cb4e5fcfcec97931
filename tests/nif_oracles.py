"""Dense float64 oracles shared by the NIF tests (imported, not collected)."""

import numpy as np


def dense_upsampling(shape, factors):
  """A (H·W·C, h·w·C) with A[(i, j, c), (i // rh, j // rw, c)] = 1, row-major."""
  (H, W, C), (rh, rw) = shape, factors
  w = W // rw
  A = np.zeros((H * W * C, (H // rh) * w * C))
  for i in range(H):
    for j in range(W):
      for c in range(C):
        A[(i * W + j) * C + c, ((i // rh) * w + j // rw) * C + c] = 1.0
  return A
