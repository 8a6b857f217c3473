"""Seeded synthetic traces: same arguments and seed, same trace.

| generator      | what it models                                                        |
|----------------|-----------------------------------------------------------------------|
| `constant`     | a fixed rate                                                          |
| `steps`        | given rates, each for a given time                                    |
| `markov`       | Markov-modulated rate in the style of Pensieve's synthetic traces:    |
|                | a hidden level (default 10 levels, 0.2-4.3 Mb/s) held for an          |
|                | exponential time of mean `t_level_s`, moving mostly to nearby levels; |
|                | within a level, a sample every `t_sample_s` drawn around it           |
|                | (Gaussian, std = `cov` x level)                                       |
| `gauss_markov` | AR(1) random walk around a mean (correlation time `corr_s`)           |
| `on_off`       | alternating on/off periods of exponential length (outages)            |
| `cachegen`     | CacheGen's artifact setting: an i.i.d. uniform 0.1-10 Gb/s value per  |
|                | chunk (here: per `step_s` of time)                                    |

Rates are in Mbit/s (1e6 bit/s) in arguments and in bits/s inside the trace. `to_opportunities`
turns any trace into mahimahi delivery-opportunity timestamps (ms), and `write_mahimahi`
writes them as a file mm-link can replay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kvcast.errors import InputError
from kvcast.traces.trace import Trace, from_opportunities, from_rates, from_steps


def _pos(x: float, what: str) -> float:
    x = float(x)
    if not (math.isfinite(x) and x > 0):
        raise InputError(f"{what} must be a finite number > 0 (got {x})")
    return x


def _nonneg(x: float, what: str) -> float:
    x = float(x)
    if not (math.isfinite(x) and x >= 0):
        raise InputError(f"{what} must be a finite number >= 0 (got {x})")
    return x


def _grid(duration_s: float, step_s: float) -> np.ndarray:
    """Segment boundaries 0, step, 2 step, ..., duration_s (the last segment may be shorter)."""
    n = int(math.ceil(duration_s / step_s - 1e-9))
    t = np.arange(n + 1, dtype=np.float64) * step_s
    t[-1] = duration_s
    return t


def constant(mbps: float, duration_s: float = 60.0, *, loop: bool = True) -> Trace:
    """A fixed rate."""
    _nonneg(mbps, "constant: mbps")
    d = _pos(duration_s, "constant: duration_s")
    return from_rates(
        f"constant-{mbps:g}Mbps",
        np.array([d]),
        np.array([mbps * 1e6]),
        loop=loop,
        meta={"synthetic": "constant"},
    )


def steps(
    mbps: Sequence[float], durations_s: Sequence[float] | float, *, loop: bool = True
) -> Trace:
    """Rates `mbps[i]` for `durations_s[i]` (or all for the same duration)."""
    r = np.asarray(mbps, dtype=np.float64)
    d = np.broadcast_to(np.asarray(durations_s, dtype=np.float64), r.shape)
    if r.ndim != 1 or r.size == 0:
        raise InputError("steps: mbps must be a non-empty list of rates")
    for i, (x, y) in enumerate(zip(r, d, strict=True)):
        _nonneg(x, f"steps: mbps[{i}]")
        _pos(y, f"steps: durations_s[{i}]")
    return from_rates("steps", np.array(d), r * 1e6, loop=loop, meta={"synthetic": "steps"})


def markov(
    duration_s: float = 320.0,
    *,
    seed: int,
    levels_mbps: Sequence[float] | None = None,
    t_level_s: float = 5.0,
    t_sample_s: float = 1.0,
    cov: float = 0.1,
    switch_decay: float = 0.5,
    loop: bool = True,
) -> Trace:
    """Markov-modulated rate (see the module docstring).

    A switch moves `k` levels away with probability proportional to `switch_decay ** k`
    (so mostly to neighbours); samples are clipped at 0 only where the Gaussian goes below.
    """
    dur = _pos(duration_s, "markov: duration_s")
    tl = _pos(t_level_s, "markov: t_level_s")
    ts = _pos(t_sample_s, "markov: t_sample_s")
    _nonneg(cov, "markov: cov")
    if not 0 < switch_decay <= 1:
        raise InputError(f"markov: switch_decay must be in (0, 1] (got {switch_decay})")
    levels = np.linspace(0.2, 4.3, 10) if levels_mbps is None else np.asarray(levels_mbps, float)
    if levels.ndim != 1 or levels.size < 2 or (levels < 0).any():
        raise InputError("markov: levels_mbps must list at least two rates >= 0")
    rng = np.random.default_rng(seed)
    times = _grid(dur, ts)
    n = times.size - 1
    p_switch = 1.0 - math.exp(-ts / tl)  # memoryless holding time of mean t_level_s
    idx = np.arange(levels.size)
    state = int(rng.integers(levels.size))
    rates = np.empty(n)
    for i in range(n):
        if i and rng.random() < p_switch:
            dist = np.abs(idx - state)
            w = np.where(dist > 0, switch_decay ** dist.astype(float), 0.0)
            state = int(rng.choice(levels.size, p=w / w.sum()))
        lv = levels[state]
        rates[i] = max(rng.normal(lv, cov * lv), 0.0)
    return from_steps(
        f"markov-s{seed}",
        times,
        rates * 1e6,
        loop=loop,
        meta={"synthetic": "markov", "seed": str(seed)},
    )


def gauss_markov(
    duration_s: float = 300.0,
    *,
    seed: int,
    mean_mbps: float = 5.0,
    std_mbps: float = 2.0,
    corr_s: float = 10.0,
    step_s: float = 0.1,
    min_mbps: float = 0.0,
    loop: bool = True,
) -> Trace:
    """AR(1) (Gauss-Markov) random walk: x' = mean + a (x - mean) + noise, a = exp(-step/corr).

    The stationary std is `std_mbps`; values below `min_mbps` are set to `min_mbps`.
    """
    dur = _pos(duration_s, "gauss_markov: duration_s")
    step = _pos(step_s, "gauss_markov: step_s")
    corr = _pos(corr_s, "gauss_markov: corr_s")
    _nonneg(mean_mbps, "gauss_markov: mean_mbps")
    _nonneg(std_mbps, "gauss_markov: std_mbps")
    _nonneg(min_mbps, "gauss_markov: min_mbps")
    rng = np.random.default_rng(seed)
    times = _grid(dur, step)
    n = times.size - 1
    a = math.exp(-step / corr)
    noise = rng.normal(0.0, std_mbps * math.sqrt(1 - a * a), n)
    x = np.empty(n)
    x[0] = mean_mbps + rng.normal(0.0, std_mbps)
    for i in range(1, n):
        x[i] = mean_mbps + a * (x[i - 1] - mean_mbps) + noise[i]
    x = np.maximum(x, min_mbps)
    return from_steps(
        f"gauss-markov-s{seed}",
        times,
        x * 1e6,
        loop=loop,
        meta={"synthetic": "gauss_markov", "seed": str(seed)},
    )


def on_off(
    duration_s: float = 120.0,
    *,
    seed: int,
    on_mbps: float = 10.0,
    off_mbps: float = 0.0,
    mean_on_s: float = 10.0,
    mean_off_s: float = 2.0,
    loop: bool = True,
) -> Trace:
    """Outages: on at `on_mbps` and off at `off_mbps`, exponential durations, starting on."""
    dur = _pos(duration_s, "on_off: duration_s")
    _nonneg(on_mbps, "on_off: on_mbps")
    _nonneg(off_mbps, "on_off: off_mbps")
    m_on = _pos(mean_on_s, "on_off: mean_on_s")
    m_off = _pos(mean_off_s, "on_off: mean_off_s")
    rng = np.random.default_rng(seed)
    ds, rs = [], []
    t, on = 0.0, True
    while t < dur:
        seg = float(rng.exponential(m_on if on else m_off))
        seg = min(max(seg, 1e-6), dur - t)
        ds.append(seg)
        rs.append(on_mbps if on else off_mbps)
        t += seg
        on = not on
    return from_rates(
        f"on-off-s{seed}",
        np.array(ds),
        np.array(rs) * 1e6,
        loop=loop,
        meta={"synthetic": "on_off", "seed": str(seed)},
    )


def cachegen(
    n_steps: int = 100,
    *,
    seed: int,
    step_s: float = 1.0,
    low_gbps: float = 0.1,
    high_gbps: float = 10.0,
    loop: bool = True,
) -> Trace:
    """CacheGen's artifact setting: i.i.d. U(low, high) Gb/s, one value per `step_s`.

    CacheGen draws one bandwidth per chunk, with no time continuity; here each value holds
    for `step_s` seconds (set it near one chunk's transfer time to mimic that).
    """
    if int(n_steps) != n_steps or n_steps < 1:
        raise InputError(f"cachegen: n_steps must be an integer >= 1 (got {n_steps})")
    step = _pos(step_s, "cachegen: step_s")
    lo = _nonneg(low_gbps, "cachegen: low_gbps")
    hi = _pos(high_gbps, "cachegen: high_gbps")
    if lo > hi:
        raise InputError(f"cachegen: low_gbps {lo} > high_gbps {hi}")
    rng = np.random.default_rng(seed)
    g = rng.uniform(lo, hi, int(n_steps))
    return from_steps(
        f"cachegen-s{seed}",
        np.arange(int(n_steps) + 1, dtype=np.float64) * step,
        g * 1e9,
        loop=loop,
        meta={"synthetic": "cachegen", "seed": str(seed)},
    )


GENERATORS = {
    "constant": constant,
    "steps": steps,
    "markov": markov,
    "gauss_markov": gauss_markov,
    "on_off": on_off,
    "cachegen": cachegen,
}


def to_opportunities(tr: Trace, bytes_per_opportunity: float = 1500) -> np.ndarray:
    """mahimahi timestamps (integer ms) for one period of `tr`.

    At each ms m, floor(C(m) / B) - floor(C(m - 1) / B) opportunities: the capacity is
    carried over between ms, as mahimahi's mm-rate-to-events carries a bit reserve.
    """
    b = _pos(bytes_per_opportunity, "bytes_per_opportunity")
    n_ms = int(math.floor(tr.duration_s * 1000 + 1e-9))
    if n_ms < 1:
        raise InputError(f"{tr.name}: shorter than 1 ms; cannot write mahimahi")
    ms = np.arange(n_ms + 1)
    whole = np.floor(tr.cum_bytes(np.minimum(ms / 1000.0, tr.duration_s)) / b + 1e-9)
    counts = np.diff(whole).astype(np.int64)
    return np.repeat(ms[1:], counts)


def mahimahi_trace(tr: Trace, bytes_per_opportunity: float = 1500, *, loop: bool = True) -> Trace:
    """`tr` quantised to mahimahi opportunities (what mm-link would replay)."""
    ts = to_opportunities(tr, bytes_per_opportunity)
    if ts.size == 0:
        raise InputError(f"{tr.name}: carries less than one packet; cannot write mahimahi")
    return from_opportunities(
        f"{tr.name}.mm",
        ts / 1000.0,
        bytes_per_opportunity,
        loop=loop,
        meta=dict(tr.meta, format="mahimahi"),
    )


def write_mahimahi(tr: Trace, path: Path, bytes_per_opportunity: float = 1500) -> Path:
    """Write `tr` as a mahimahi trace file (one opportunity per line); returns the path."""
    ts = to_opportunities(tr, bytes_per_opportunity)
    if ts.size == 0:
        raise InputError(f"{tr.name}: carries less than one packet; cannot write mahimahi")
    path = Path(path)
    path.write_text("\n".join(map(str, ts.tolist())) + "\n")
    return path
