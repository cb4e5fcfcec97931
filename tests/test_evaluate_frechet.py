"""Fréchet distance against scipy.linalg.sqrtm and closed forms (float64)."""

import numpy as np
import pytest
from scipy import linalg

from nifzoo.evaluate import frechet


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / (rank or d) + (0.0 if rank else 0.1) * np.eye(d)


def _scipy_fd(mu1, s1, mu2, s2):
  covmean = linalg.sqrtm(s1 @ s2)
  covmean = np.real(covmean)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("d", [1, 3, 16])
def test_matches_scipy_sqrtm(d):
  rng = np.random.default_rng(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
  np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2),
                             _scipy_fd(mu1, s1, mu2, s2), rtol=1e-8)


def test_commuting_covariances_closed_form():
  # Same eigenbasis: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2,
                                 q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_singular_covariances_and_identity():
  rng = np.random.default_rng(1)
  s1, s2 = _random_cov(rng, 8, rank=3), _random_cov(rng, 8, rank=2)
  mu = rng.normal(size=8)
  fd = frechet.frechet_distance(mu, s1, mu, s2)
  assert np.isfinite(fd) and fd > 0
  # scipy on the singular product needs the usual eps offset; agree loosely.
  eps = 1e-12 * np.eye(8)
  np.testing.assert_allclose(fd, _scipy_fd(mu, s1 + eps, mu, s2 + eps), atol=1e-4)
  assert frechet.frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)


def test_features_converge_to_population_value():
  # Samples of two known Gaussians: the plug-in FD approaches the true one and is
  # biased upwards at small n (the documented small-sample bias).
  rng = np.random.default_rng(2)
  d = 4
  mu1, mu2 = np.zeros(d), np.full(d, 0.5)
  s1, s2 = np.eye(d), np.diag([0.5, 1.0, 2.0, 1.0])
  true = frechet.frechet_distance(mu1, s1, mu2, s2)
  big = frechet.frechet_distance_features(
      rng.multivariate_normal(mu1, s1, 200_000), rng.multivariate_normal(mu2, s2, 200_000))
  np.testing.assert_allclose(big, true, rtol=2e-2)
  small = [frechet.frechet_distance_features(rng.multivariate_normal(mu1, s1, 20),
                                             rng.multivariate_normal(mu1, s1, 20))
           for _ in range(50)]
  assert np.mean(small) > 0.1  # Identical distributions, yet FD(n=20) > 0.


def test_bad_input():
  with pytest.raises(ValueError, match="shape"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="NaN"):
    frechet.frechet_distance_features(np.full((4, 2), np.nan), np.zeros((4, 2)))
  with pytest.raises(ValueError, match=r"\(n, d\)"):
    frechet.gaussian_stats(np.zeros(5))
