"""The requests of one case: arrival times, context lengths and SLO, drawn from the case's seed."""

from __future__ import annotations

import numpy as np

from .engine import Request
from .scenario import WorkloadSpec


def make_requests(spec: WorkloadSpec, slo_s: float, rng: np.random.Generator) -> list[Request]:
    n = spec.requests
    a = spec.arrival
    if a.process == "at_once":
        times = np.full(n, a.start_s)
    elif a.process == "fixed":
        times = a.start_s + a.interval_s * np.arange(n)
    else:  # poisson
        gaps = rng.exponential(1.0 / a.rate_per_s, size=n)
        gaps[0] = 0.0
        times = a.start_s + np.cumsum(gaps)
    c = spec.context_tokens
    if c.kind == "fixed":
        ctx = np.full(n, c.values[0])
    elif c.kind == "uniform":
        ctx = rng.integers(c.values[0], c.values[1] + 1, size=n)
    else:
        ctx = rng.choice(np.array(c.values), size=n)
    return [Request(i, float(times[i]), int(ctx[i]), float(slo_s)) for i in range(n)]
