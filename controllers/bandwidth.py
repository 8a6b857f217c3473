"""A distribution of future chunk throughputs, learned online from the link's own samples.

The model (a local-level state-space model of log throughput, fitted to the link as it runs):

    y_i = mu + s(t_i) + e_i          y: log of a KV chunk's measured throughput at time t_i
    s: Ornstein-Uhlenbeck, mean 0, stationary variance a * V, correlation exp(-dt / tau)
    e: white, variance (1 - a) * V, one draw per chunk

so the correlation of two samples dt apart is a * exp(-dt / tau): part of a chunk's throughput is
shared with its neighbours (the slowly drifting state), part is its own (a dip, an outage, the
jitter of a short transfer). Cellular traces scaled to datacenter rates look like this (measured
on the mahimahi traces, docs/decisions.md); CacheGen's i.i.d. per-chunk bandwidth is the case
a = 0. `mu` and `V` are the mean and variance of the recent samples; `a` and `tau` maximise the
Kalman-filter likelihood of those samples over a small grid; the filter then gives the state now.

Future paths are sampled: the state moves on as the OU process from the filter's posterior, and
each chunk's own part is drawn from the filter's standardized innovations (so the tails are the
link's real ones: outages make heavy left tails that a Gaussian would miss), falling back to a
Gaussian until there are enough of them. Before the link has any sample the prior says 1 Gbps
give or take a factor of e (an assumption, `prior_bps`).

Everything is numpy; it is deterministic given the samples and the random generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TAU_GRID_S = np.array([0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
SHARE_GRID = np.array([0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99])
MIN_FIT_SAMPLES = 12  # below this the prior's a and tau are kept
MIN_TAIL_SAMPLES = 40  # standardized innovations needed to sample tails from them


@dataclass(frozen=True)
class Fit:
    mu: float  # mean log throughput (log bits/s)
    var: float  # total variance of log throughput
    share: float  # a: the part of the variance in the slow state
    tau_s: float  # the state's correlation time
    state: float  # the filter's estimate of s at `t_s`
    state_var: float  # its variance
    t_s: float  # time of the last sample
    innovations: np.ndarray  # standardized one-step errors (empirical tail shape)


def _filter(
    t: np.ndarray, y: np.ndarray, mu: float, var: float, share: np.ndarray, tau: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kalman filter over the samples for every (share, tau) pair at once (arrays of equal shape).
    Returns (log-likelihood, final state, final state variance, standardized innovations [n, ...])."""
    q = share * var  # stationary state variance
    r = np.maximum((1.0 - share) * var, 1e-6 * var)  # per-chunk variance
    x = np.zeros_like(share)
    p = q.copy()
    loglik = np.zeros_like(share)
    z = np.empty((len(y), *share.shape))
    for i in range(len(y)):
        if i:
            phi = np.exp(-(t[i] - t[i - 1]) / tau)
            x = phi * x
            p = phi * phi * p + q * (1.0 - phi * phi)
        s = p + r
        resid = y[i] - mu - x
        loglik -= 0.5 * (np.log(s) + resid * resid / s)
        z[i] = resid / np.sqrt(s)
        k = p / s
        x = x + k * resid
        p = (1.0 - k) * p
    return loglik, x, p, z


def fit(
    t_s: np.ndarray,
    throughput_bps: np.ndarray,
    prior_bps: float = 1e9,
    prior_share: float = 0.8,
    prior_tau_s: float = 3.0,
) -> Fit:
    """Fit the model to samples (times ascending; non-positive throughputs ignored)."""
    ok = throughput_bps > 0
    t, y = np.asarray(t_s, dtype=np.float64)[ok], np.log(throughput_bps[ok])
    if y.size == 0:
        return Fit(
            float(np.log(prior_bps)), 1.0, prior_share, prior_tau_s, 0.0, 1.0, 0.0, np.empty(0)
        )
    mu = float(y.mean())
    # spread: at least a 10% jitter; with few samples, no narrower than the prior's factor of e
    var = max(float(y.var()), 0.01) if y.size >= MIN_FIT_SAMPLES else max(float(y.var()), 1.0)
    if y.size >= MIN_FIT_SAMPLES:
        share, tau = np.meshgrid(SHARE_GRID, TAU_GRID_S, indexing="ij")
    else:
        share, tau = np.array([prior_share]), np.array([prior_tau_s])
    loglik, x, p, z = _filter(t, y, mu, var, share, tau)
    best = np.unravel_index(int(np.argmax(loglik)), loglik.shape)
    return Fit(
        mu=mu,
        var=var,
        share=float(share[best]),
        tau_s=float(tau[best]),
        state=float(x[best]),
        state_var=float(p[best]),
        t_s=float(t[-1]),
        innovations=z[(slice(None), *best)].copy(),
    )


def sample_paths(
    f: Fit,
    times_s: np.ndarray,
    n_paths: int,
    rng: np.random.Generator,
    past_bps: np.ndarray | None = None,
    surprise: float = 0.0,
) -> np.ndarray:
    """[n_paths, len(times_s)] throughputs (bits/s) of chunks sent at `times_s` (ascending, after
    the last sample), drawn from the fitted model. With `surprise` > 0 each chunk, with that
    probability, instead takes the throughput of a random one of `past_bps` (the link's own
    samples): whatever the filter believes now, the link may do anything it has done before."""
    m = len(times_s)
    q = f.share * f.var
    r = max((1.0 - f.share) * f.var, 1e-6 * f.var)
    x = f.state + np.sqrt(f.state_var) * rng.standard_normal(n_paths)
    prev = f.t_s
    out = np.empty((n_paths, m))
    tails = f.innovations if f.innovations.size >= MIN_TAIL_SAMPLES else None
    for k in range(m):
        phi = np.exp(-max(times_s[k] - prev, 0.0) / f.tau_s)
        x = phi * x + np.sqrt(q * (1.0 - phi * phi)) * rng.standard_normal(n_paths)
        own = (
            tails[rng.integers(0, tails.size, n_paths)]
            if tails is not None
            else rng.standard_normal(n_paths)
        )
        out[:, k] = np.exp(f.mu + x + np.sqrt(r) * own)
        prev = times_s[k]
    if surprise > 0 and past_bps is not None and past_bps.size:
        jump = rng.random((n_paths, m)) < surprise
        out[jump] = past_bps[rng.integers(0, past_bps.size, int(jump.sum()))]
    return out
