"""The knob's tuning grid: extended until the optimum is interior or a limit."""

import numpy as np
import pytest

from nifzoo.evaluate import knob
from nifzoo.evaluate import metrics


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


def test_nif_tunes_s_at_t1_then_t_at_s_star():
  """A NIF's two stages on a separable bowl with its minimum at (s, T) =
  (0.81, 1.36): s* = 0.8 (the grid point nearest 0.81, at T = 1), then T at
  s* extended up to 1.5 with T* = 1.4; the NF's temperature is one stage."""
  calls = []

  def fd(knobs):
    calls.append(dict(knobs))
    s, t = knobs.get("noise_scale", 1.0), knobs.get("temperature", 1.0)
    return 5.0 + (s - 0.81)**2 + (t - 1.36)**2 + np.array([-0.01, 0.01])

  r = knob.tune_knobs(fd, "noise_scale")
  assert r["knobs"] == pytest.approx({"noise_scale": 0.8, "temperature": 1.4})
  assert r["tune"]["tuning"] == r["tune_temperature"]["tuning"] == "interior"
  assert r["tune_temperature"]["grid"][-1] == pytest.approx(1.5)
  first = [c for c in calls if "temperature" not in c]
  second = [c for c in calls if "temperature" in c]
  assert len(first) == len(r["tune"]["grid"]) == 8
  assert len(second) == len(r["tune_temperature"]["grid"]) == 11
  assert all(c["noise_scale"] == 0.8 for c in second)
  assert metrics.knob_label(r["knobs"]) == "s = 0.8, T = 1.4"

  calls.clear()
  r = knob.tune_knobs(fd, "temperature")
  assert r["knobs"] == pytest.approx({"temperature": 1.4})
  assert r["tune_temperature"] is None and all(list(c) == ["temperature"] for c in calls)
