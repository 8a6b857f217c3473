"""Transforms that return new traces: scale, stretch, offset, loop/once, concatenate.

- `scale(tr, k)`: bandwidth x k, same timing (CacheGen's links are 0.1-10 Gbps while cellular
  traces are Mbps; scaling keeps a real trace's dynamics).
- `stretch(tr, k)`: time x k (the same bytes over k times as long, so the rate is / k).
- `offset(tr, start_s)` / `random_offset(tr, seed)`: start at a point of the trace. A looping
  trace is rotated (its period is unchanged); a trace played once is cut.
- `with_loop(tr, loop)`: loop or play once.
- `concat([a, b, ...])`: one after the other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from kvcast.errors import InputError
from kvcast.traces.trace import Trace


def _check_factor(k: float, what: str) -> float:
    k = float(k)
    if not (math.isfinite(k) and k > 0):
        raise InputError(f"{what} factor must be a finite number > 0 (got {k})")
    return k


def scale(tr: Trace, k: float) -> Trace:
    """Bandwidth multiplied by `k`."""
    k = _check_factor(k, "scale")
    meta = dict(tr.meta, scale=f"{float(tr.meta.get('scale', 1)) * k:g}")
    return dataclasses.replace(tr, name=f"{tr.name}*{k:g}", knot_cum=tr.knot_cum * k, meta=meta)


def stretch(tr: Trace, k: float) -> Trace:
    """Time multiplied by `k` (the rate divided by `k`)."""
    k = _check_factor(k, "stretch")
    lat_t = None if tr.latency_t is None else tr.latency_t * k
    return dataclasses.replace(
        tr,
        name=f"{tr.name}~{k:g}",
        knot_t=tr.knot_t * k,
        duration_s=float(tr.knot_t[-1] * k),
        latency_t=lat_t,
        meta=dict(tr.meta, stretch=f"{k:g}"),
    )


def with_loop(tr: Trace, loop: bool) -> Trace:
    """The same trace, looping (mm-link's default) or played once."""
    return dataclasses.replace(tr, loop=bool(loop))


def _window(tr: Trace, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots of C over (a, b] relative to (a, C(a)); a, b within [0, 2P]."""
    p, pb = tr.duration_s, tr.period_bytes
    if tr.loop:  # two periods, so that (a, a + P] is covered
        kt = np.concatenate((tr.knot_t, tr.knot_t[1:] + p))
        kc = np.concatenate((tr.knot_cum, tr.knot_cum[1:] + pb))
    else:
        kt, kc = tr.knot_t, tr.knot_cum
    ca = float(tr.cum_bytes(a))
    cb = float(tr.cum_bytes(b)) if b < 2 * p else 2 * pb
    inside = (kt > a) & (kt < b)
    t = np.concatenate(([a], kt[inside], [b])) - a
    c = np.concatenate(([ca], kc[inside], [cb])) - ca
    # The steps exactly at b belong to the window (C is right-continuous there).
    at_b = kt == b
    if at_b.sum() > 1:
        t = np.concatenate((t[:-1], kt[at_b] - a))
        c = np.concatenate((c[:-1], kc[at_b] - ca))
    c = np.maximum.accumulate(np.maximum(c, 0.0))
    return t, c


def offset(tr: Trace, start_s: float) -> Trace:
    """Start the trace at `start_s`: rotated if it loops, cut if it is played once."""
    start = float(start_s)
    p = tr.duration_s
    if not (math.isfinite(start) and start >= 0):
        raise InputError(f"offset start_s must be >= 0 (got {start_s})")
    if tr.loop:
        start = start % p
        end = start + p
    else:
        if not start < p:
            raise InputError(f"offset start_s={start} is past the end of {tr.name!r} ({p:g} s)")
        end = p
    if start == 0:
        return tr
    t, c = _window(tr, start, end)
    lat_t, lat_s = None, None
    if tr.latency_t is not None and tr.latency_s is not None:
        if tr.loop:
            shifted = (tr.latency_t - start) % p
            lat_t = np.concatenate(([0.0], shifted[shifted > 0]))
            lat_s = np.concatenate(([tr.latency_at(start)], tr.latency_s[shifted > 0]))
            order = np.argsort(lat_t, kind="stable")
            lat_t, lat_s = lat_t[order], lat_s[order]
        else:
            keep = tr.latency_t > start
            lat_t = np.concatenate(([0.0], tr.latency_t[keep] - start))
            lat_s = np.concatenate(([tr.latency_at(start)], tr.latency_s[keep]))
    return dataclasses.replace(
        tr,
        name=f"{tr.name}@{start:g}",
        knot_t=t,
        knot_cum=c,
        duration_s=float(t[-1]),
        latency_t=lat_t,
        latency_s=lat_s,
        meta=dict(tr.meta, offset_s=f"{start:g}"),
    )


def random_offset(tr: Trace, seed: int) -> Trace:
    """Start at a point drawn uniformly over the trace from `seed` (as Pensieve's training)."""
    rng = np.random.default_rng(seed)
    return offset(tr, float(rng.uniform(0.0, tr.duration_s)))


def concat(traces: Sequence[Trace], *, loop: bool = True, name: str | None = None) -> Trace:
    """The traces one after the other (each for one period)."""
    if not traces:
        raise InputError("concat needs at least one trace")
    ts, cs, lts, lss = [np.zeros(1)], [np.zeros(1)], [], []
    t_off = c_off = 0.0
    any_lat = any(tr.latency_s is not None for tr in traces)
    for tr in traces:
        ts.append(tr.knot_t[1:] + t_off)
        cs.append(tr.knot_cum[1:] + c_off)
        if any_lat:
            if tr.latency_t is not None and tr.latency_s is not None:
                lts.append(tr.latency_t + t_off)
                lss.append(tr.latency_s)
            else:
                lts.append(np.array([t_off]))
                lss.append(np.zeros(1))
        t_off += tr.duration_s
        c_off += tr.period_bytes
    kinds = {tr.kind for tr in traces}
    return Trace(
        name or "+".join(tr.name for tr in traces),
        np.concatenate(ts),
        np.concatenate(cs),
        t_off,
        loop=loop,
        kind=kinds.pop() if len(kinds) == 1 else "rate",
        meta={"concat": ",".join(tr.name for tr in traces)},
        latency_t=np.concatenate(lts) if any_lat else None,
        latency_s=np.concatenate(lss) if any_lat else None,
    )
