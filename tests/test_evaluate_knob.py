"""The knob's tuning grid: extended until the optimum is interior or a limit."""

import numpy as np
import pytest

from nifzoo.evaluate import knob


def _bowl(centre, calls):
  """FD over 3 draws of a bowl with its minimum at ``centre`` (brute-force
  oracle: the grid point nearest it)."""
  def fd(v):
    calls.append(v)
    return 5.0 + (v - centre)**2 + np.array([-0.01, 0.0, 0.01])
  return fd


@pytest.mark.parametrize("centre, best, top, status", [
    (0.81, 0.8, 1.2, "interior"),                 # inside the first grid
    (1.56, 1.6, 1.7, "interior"),                 # extended up to 1.7
    (3.0, 2.0, 2.0, "at the upper limit 2"),      # stopped at the stated limit
])
def test_grid_extends_until_interior_or_limit(centre, best, top, status):
  calls = []
  r = knob.tune_grid(_bowl(centre, calls))
  assert r["best"] == pytest.approx(best) and r["tuning"] == status
  assert r["grid"][-1] == pytest.approx(top) and r["grid"][0] == 0.5
  assert sorted(calls) == pytest.approx(r["grid"])  # Each value scored once.
  i = r["grid"].index(r["best"])
  assert r["fd_mean"][i] == min(r["fd_mean"])
  assert r["fd_se"][i] == pytest.approx(0.01 / np.sqrt(3))


def test_grid_extends_down_to_the_lower_limit():
  r = knob.tune_grid(_bowl(-1.0, []))
  assert r["best"] == pytest.approx(0.1) and r["tuning"] == "at the lower limit 0.1"
  with pytest.raises(ValueError, match="within"):
    knob.tune_grid(_bowl(1.0, []), grid=(0.5, 2.5))
