"""Standard errors, paired and independent differences, verdicts.

Oracles: the textbook formulas written out with Python's ``statistics``, and
known distributions (coverage of the 95 % interval, the test's false-positive
rate under the null).
"""

import math
import statistics

import numpy as np
import pytest

from nifzoo.evaluate import stats


def test_mean_se_of_images_by_draws_averages_each_image_first():
  v = np.array([[1.0, 3.0], [2.0, 2.0], [5.0, 9.0], [0.0, 4.0]])
  per_image = [2.0, 2.0, 7.0, 2.0]
  mean, se = stats.mean_se(v)
  assert mean == pytest.approx(statistics.fmean(per_image))
  assert se == pytest.approx(statistics.stdev(per_image) / 2.0)
  assert stats.mean_se(per_image) == pytest.approx((mean, se))


def test_paired_difference_is_the_difference_per_image():
  rng = np.random.default_rng(0)
  common = rng.normal(size=(50, 3)) * 10   # Shared by both: cancels when paired.
  a, b = common + 0.3, common + rng.normal(scale=0.1, size=(50, 3))
  d = stats.paired_difference(a, b)
  per = (a - b).mean(axis=1).tolist()
  assert d["diff"] == pytest.approx(statistics.fmean(per))
  assert d["se"] == pytest.approx(statistics.stdev(per) / math.sqrt(50))
  assert d["df"] == 49 and d["n"] == 50
  unpaired = stats.independent_difference(a, b)
  assert unpaired["se"] > 20 * d["se"]  # Pairing removes the shared noise.
  with pytest.raises(ValueError, match="equal shapes"):
    stats.paired_difference(a, b[:49])


def test_independent_difference_is_welch():
  a, b = [5.1, 6.0, 5.5, 6.3, 5.9], [7.0, 7.7, 6.8, 7.4, 8.1, 7.9, 7.2]
  va, vb = statistics.variance(a) / 5, statistics.variance(b) / 7
  d = stats.independent_difference(a, b)
  assert d["diff"] == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
  assert d["se"] == pytest.approx(math.sqrt(va + vb))
  assert d["df"] == pytest.approx((va + vb)**2 / (va**2 / 4 + vb**2 / 6))


def test_verdicts_on_separated_and_overlapping_draws():
  rng = np.random.default_rng(1)
  low, high = rng.normal(5.0, 0.3, 20), rng.normal(7.0, 0.3, 20)
  overlap = rng.normal(5.05, 0.3, 20)
  assert stats.compare(stats.independent_difference(low, high))["verdict"] == "better"
  assert stats.compare(stats.independent_difference(high, low))["verdict"] == "worse"
  assert stats.compare(stats.independent_difference(low, overlap))["verdict"] == "inconclusive"
  # Higher is better (e.g. a probe's accuracy): the direction flips.
  assert stats.verdict(0.5, 0.1, 30, lower_is_better=False) == "better"
  # The threshold is the stated t quantile: df = 10 -> 2.228, normal -> 1.960.
  assert stats.verdict(-2.2 * 0.1, 0.1, 10) == "inconclusive"
  assert stats.verdict(-2.25 * 0.1, 0.1, 10) == "better"
  assert stats.verdict(1.97 * 0.1, 0.1) == "worse"
  with pytest.raises(ValueError, match="finite"):
    stats.verdict(float("nan"), 0.1)


def test_interval_covers_the_true_mean_95_percent_of_the_time():
  """Known distribution: N(3, 2²); 4,000 experiments of n = 10: the 95 %
  t interval (t_{0.975, 9} = 2.262) covers 3 within 3 binomial sd of 0.95,
  the normal one (1.96) at P(|t_9| < 1.96) = 0.918."""
  rng = np.random.default_rng(2)
  x = rng.normal(3.0, 2.0, size=(4000, 10))
  est = np.array([stats.mean_se(row) for row in x])
  sd = math.sqrt(0.95 * 0.05 / 4000)
  assert abs(np.mean(abs(est[:, 0] - 3.0) <= 2.262 * est[:, 1]) - 0.95) < 3 * sd
  assert abs(np.mean(abs(est[:, 0] - 3.0) <= 1.96 * est[:, 1]) - 0.918) < 3 * sd


def test_the_test_rejects_a_true_null_at_its_level():
  """Two models drawn from the same distribution: a 'better' or 'worse'
  verdict in about alpha = 5 % of 4,000 comparisons."""
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2, 4000, 20))
  wrong = [stats.compare(stats.independent_difference(x, y))["verdict"] != "inconclusive"
           for x, y in zip(a, b)]
  assert abs(np.mean(wrong) - 0.05) < 3 * math.sqrt(0.05 * 0.95 / 4000)


def test_bad_input_is_refused_with_its_name():
  with pytest.raises(ValueError, match="n >= 2"):
    stats.mean_se([1.0])
  with pytest.raises(ValueError, match="non-finite"):
    stats.mean_se([1.0, float("inf")])
  assert stats.mean_sd([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
  assert stats.fmt(1.23456, 0.0123, 3) == "1.235 ± 0.012"
