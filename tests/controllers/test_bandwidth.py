"""The stochastic controller's throughput model: what it learns from a link's samples."""

from __future__ import annotations

import numpy as np
import pytest

from kvcast.controllers.bandwidth import fit, sample_paths


def _walk(n: int, seed: int, rho: float, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-throughput samples every 0.1 s: a slow AR(1) level plus per-sample jitter."""
    rng = np.random.default_rng(seed)
    level = np.zeros(n)
    for i in range(1, n):
        level[i] = rho * level[i - 1] + np.sqrt(1 - rho * rho) * rng.standard_normal()
    y = np.log(2e9) + 0.8 * level + jitter * rng.standard_normal(n)
    return np.arange(n) * 0.1, np.exp(y)


def test_learns_how_much_is_shared_between_chunks() -> None:
    t, iid = _walk(300, 0, rho=0.0, jitter=0.6)
    assert fit(t, iid).share <= 0.3  # independent draws: nothing carries over
    t, slow = _walk(300, 1, rho=0.995, jitter=0.05)
    f = fit(t, slow)
    assert f.share >= 0.9 and f.tau_s >= 3.0
    # the next chunk is predicted near the last samples, not the long-run mean
    paths = sample_paths(f, t[-1:] + 0.1, 2000, np.random.default_rng(0))
    assert np.median(paths) == pytest.approx(np.median(slow[-5:]), rel=0.25)


def test_prior_without_samples_and_determinism() -> None:
    f = fit(np.empty(0), np.empty(0), prior_bps=5e8)
    assert f.mu == pytest.approx(np.log(5e8))
    a = sample_paths(f, np.array([0.1, 0.2]), 64, np.random.default_rng(3))
    b = sample_paths(f, np.array([0.1, 0.2]), 64, np.random.default_rng(3))
    assert a.shape == (64, 2) and np.array_equal(a, b)


def test_surprise_draws_from_the_links_own_past() -> None:
    t = np.arange(50) * 0.1
    steady = np.full(50, 4e9)
    f = fit(t, steady)
    past = np.array([1e8])
    paths = sample_paths(f, t[-1:] + 0.1, 4000, np.random.default_rng(1), past, surprise=0.1)
    assert np.mean(paths == 1e8) == pytest.approx(0.1, abs=0.02)
    assert np.all((paths == 1e8) | (paths > 1e9))
