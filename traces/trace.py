"""`Trace`: a link's delivery capacity over time, answered by prefix sums and binary search.

Every supported format reduces to one object: the cumulative number of bytes ``c(s)`` the link
can deliver during one period ``s in [0, P]``, stored as *knots* ``(T[k], Cum[k])`` and linearly
interpolated between them.

- A packet trace (mahimahi) has vertical steps: the ``m`` delivery opportunities at one
  millisecond ``u`` become two knots ``(u, c)`` and ``(u, c + m * bytes_per_opportunity)``.
  Between opportunities the function is flat. Answers are therefore exact at packet (byte)
  granularity, with no per-packet loop.
- A rate trace (Pensieve cooked, sabre, CSV, synthetic) is piecewise constant in bits/s, so its
  cumulative function is piecewise linear.

Semantics (all times in seconds, sizes in bytes, rates in bits/s):

- ``C(t)`` counts the bytes of every opportunity at a time ``<= t`` (right-continuous). Bytes
  offered at ``t0`` can use only opportunities strictly after ``t0`` (mm-link consumes the
  opportunities that are due before it enqueues an arriving packet), so
  ``bytes_between(t0, t1) = C(t1) - C(t0)``.
- ``finish_time(n, t0)`` is the earliest ``t >= t0`` with ``C(t) - C(t0) >= n``: the moment the
  last of ``n`` bytes offered at ``t0`` to an otherwise idle link is through the bottleneck.
  It is ``inf`` when the trace never delivers that much (a trace played once, or one with no
  capacity at all); it never loops forever.
- Looping (mm-link's default): period ``P`` and ``C(kP + s) = k * c(P) + c(s)`` for ``s`` in
  ``[0, P)``. For mahimahi, ``P`` is the last timestamp, so an opportunity at ``0`` and one at
  ``P`` both fire at every wrap, as mm-link does (it adds ``schedule.back()`` to its base).
- Played once (``loop=False``): nothing is delivered after ``P``.
- Times before 0 are an error: a trace starts at 0.
- Floating point: a query time within 1e-12 (relative) below a step counts as at the step, so
  `cum_at(finish_time(...))` is consistent after looping; this is far below a microsecond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kvcast.errors import InputError


class _BucketIndex:
    """Bucket table over sorted `keys` for the numba kernel's searches.

    For bucket b (keys in [k0 + b / scale, k0 + (b + 1) / scale)), `left[b]` / `right[b]` are
    np.searchsorted(keys, boundary b, "left" / "right"). A query in bucket b has its answer in
    [left[b - 1], right[b + 2]] (one bucket of slack for rounding), searched by bisection.
    """

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys
        n = keys.size
        self.nb = max(int(n), 1)
        self.k0 = float(keys[0])
        span = float(keys[-1]) - self.k0
        self.scale = self.nb / span if span > 0 else 0.0
        grid = self.k0 + np.arange(self.nb + 1) / self.scale if span > 0 else np.full(2, self.k0)
        if span > 0:
            grid[-1] = keys[-1]
        self.left = np.searchsorted(keys, grid, side="left")
        self.right = np.searchsorted(keys, grid, side="right")
        self.nb = grid.size - 1


_BIG = 1  # query arrays at least this long use the numba kernel: 10-20x faster than the numpy
# path at 1-1,000 queries (measured), so every query but an empty one; numba is imported on first use


def _fuzz(scale):
    """Tolerance for comparing a time with a knot time: 1e-12 relative to the time scale."""
    return 1e-12 * scale


@dataclass(eq=False)
class Trace:
    """Delivery capacity of a link over time (bytes, seconds); see the module docstring."""

    name: str
    knot_t: np.ndarray  # seconds, non-decreasing, starts at 0, ends at duration_s
    knot_cum: np.ndarray  # bytes delivered by the end of knot_t (within one period)
    duration_s: float
    loop: bool = True
    kind: str = "rate"  # "packets" (step function, mahimahi) or "rate" (piecewise linear)
    meta: dict[str, str] = field(default_factory=dict)
    latency_t: np.ndarray | None = None  # start times of latency segments (sabre), seconds
    latency_s: np.ndarray | None = None  # one-way latency of each segment, seconds

    def __post_init__(self) -> None:
        t = np.ascontiguousarray(self.knot_t, dtype=np.float64)
        c = np.ascontiguousarray(self.knot_cum, dtype=np.float64)
        if t.ndim != 1 or t.shape != c.shape or t.size < 2:
            raise InputError(f"trace {self.name!r}: need at least two knots of equal length")
        if not (np.isfinite(t).all() and np.isfinite(c).all()):
            raise InputError(f"trace {self.name!r}: knots must be finite")
        if t[0] != 0.0 or c[0] != 0.0:
            raise InputError(f"trace {self.name!r}: the first knot must be (0 s, 0 bytes)")
        if np.any(np.diff(t) < 0) or np.any(np.diff(c) < 0):
            raise InputError(f"trace {self.name!r}: knot times and bytes must not decrease")
        if not self.duration_s > 0 or t[-1] != self.duration_s:
            raise InputError(
                f"trace {self.name!r}: duration must be > 0 and equal the last knot time "
                f"(got {self.duration_s} and {t[-1]})"
            )
        self.knot_t, self.knot_cum = t, c
        self.duration_s = float(self.duration_s)
        # Slope of the segment that starts at each knot (0 for the last knot and for steps).
        dt = np.diff(t)
        dc = np.diff(c)
        slope = np.zeros_like(t)
        np.divide(dc, dt, out=slope[:-1], where=dt > 0)
        self._slope = slope

    def _index(self, which: str) -> _BucketIndex:
        cache = self.__dict__.setdefault("_indexes", {})
        keys = self.knot_t if which == "t" else self.knot_cum
        idx = cache.get(which)
        if idx is None or idx.keys is not keys:
            idx = cache[which] = _BucketIndex(keys)
        return idx

    # ------------------------------------------------------------------ basic facts
    @property
    def period_bytes(self) -> float:
        """Bytes delivered during one period."""
        return float(self.knot_cum[-1])

    def mean_bps(self) -> float:
        """Mean capacity over one period, bits/s."""
        return self.period_bytes * 8.0 / self.duration_s

    def end_time(self) -> float:
        """Last time the trace can deliver anything: duration_s when played once, else inf."""
        return math.inf if self.loop else self.duration_s

    # ------------------------------------------------------------------ cumulative bytes
    def _check_times(self, t: np.ndarray, what: str) -> None:
        if t.size and not (t >= 0).all():
            bad = t[~(t >= 0)][0]
            raise ValueError(f"trace {self.name!r}: {what} must be >= 0 s (got {bad})")

    def _c_within(self, s: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """c(s) for s in [0, P] (right-continuous at steps).

        A step at u counts for s >= u - eps, eps = 1e-12 * `scale` (the absolute time plus
        the period): `time_at_cum` returns k * P + u, and t - k * P can come back a few ulps
        below u.
        """
        j = np.searchsorted(self.knot_t, s + _fuzz(scale), side="right") - 1
        j = np.clip(j, 0, self.knot_t.size - 1)
        return self.knot_cum[j] + self._slope[j] * (s - self.knot_t[j])

    def cum_bytes(self, t: float | np.ndarray) -> np.ndarray:
        """C(t): bytes deliverable in [0, t] (vectorised)."""
        ta = np.asarray(t, dtype=np.float64)
        self._check_times(ta, "time")
        p = self.duration_s
        if not self.loop:
            return self._c_within(np.minimum(ta, p), ta + p)
        k = np.floor(ta / p)
        s = ta - k * p
        # Guard rounding: s must lie in [0, P).
        over = s >= p
        k = np.where(over, k + 1, k)
        s = np.where(over, s - p, s)
        s = np.maximum(s, 0.0)
        return k * self.period_bytes + self._c_within(s, ta + p)

    def bytes_between(self, t0: float, t1: float) -> float:
        """Bytes the link can deliver in (t0, t1]: C(t1) - C(t0)."""
        if t1 < t0:
            raise ValueError(f"trace {self.name!r}: t1={t1} is before t0={t0}")
        c = self.cum_bytes(np.array([t0, t1]))
        return float(c[1] - c[0])

    # ------------------------------------------------------------------ inverse
    def _s_within(self, r: np.ndarray) -> np.ndarray:
        """Smallest s in [0, P] with c(s) >= r, for 0 < r <= c(P)."""
        cum, t = self.knot_cum, self.knot_t
        k = np.searchsorted(cum, r, side="left")
        k = np.clip(k, 1, cum.size - 1)
        c0, c1 = cum[k - 1], cum[k]
        t0, t1 = t[k - 1], t[k]
        frac = (r - c0) / (c1 - c0)
        return t0 + frac * (t1 - t0)

    def time_of_cum(self, target: np.ndarray) -> np.ndarray:
        """Earliest t with C(t) >= target (inf if never); target > 0 assumed (vectorised)."""
        target = np.asarray(target, dtype=np.float64)
        out = np.full(target.shape, math.inf)
        pb = self.period_bytes
        if pb <= 0:
            return out
        if self.loop:
            k = np.maximum(np.ceil(target / pb) - 1.0, 0.0)
            r = target - k * pb
            # Rounding can leave r just outside (0, pb]; move across the period boundary.
            hi = r > pb
            k = np.where(hi, k + 1, k)
            r = np.where(hi, r - pb, r)
            lo = (r <= 0) & (k > 0)
            k = np.where(lo, k - 1, k)
            r = np.where(lo, r + pb, r)
            r = np.clip(r, np.nextafter(0.0, 1.0), pb)
            return k * self.duration_s + self._s_within(r)
        ok = target <= pb
        out[ok] = self._s_within(target[ok])
        return out

    # Scalar fast paths (the SimPy link calls these once per event).
    def cum_at(self, t: float) -> float:
        """C(t) for one time (same as `cum_bytes`, without array overhead)."""
        if not t >= 0:
            raise ValueError(f"trace {self.name!r}: time must be >= 0 s (got {t})")
        p = self.duration_s
        k = 0.0
        if self.loop:
            k = math.floor(t / p)
            s = t - k * p
            if s >= p:
                k, s = k + 1, s - p
            s = max(s, 0.0)
        else:
            s = min(t, p)
        j = int(self.knot_t.searchsorted(s + _fuzz(t + p), side="right")) - 1
        j = min(max(j, 0), self.knot_t.size - 1)
        within = float(self.knot_cum[j]) + float(self._slope[j]) * (s - float(self.knot_t[j]))
        return k * self.period_bytes + within

    def time_at_cum(self, target: float) -> float:
        """Earliest t with C(t) >= target (> 0); inf if never (scalar `time_of_cum`)."""
        pb = self.period_bytes
        if pb <= 0:
            return math.inf
        if self.loop:
            k = max(math.ceil(target / pb) - 1.0, 0.0)
            r = target - k * pb
            if r > pb:
                k, r = k + 1, r - pb
            elif r <= 0 and k > 0:
                k, r = k - 1, r + pb
            r = min(max(r, 5e-324), pb)
        elif target > pb:
            return math.inf
        else:
            k, r = 0.0, target
        cum, kt = self.knot_cum, self.knot_t
        i = int(cum.searchsorted(r, side="left"))
        i = min(max(i, 1), cum.size - 1)
        c0, c1 = float(cum[i - 1]), float(cum[i])
        t0, t1 = float(kt[i - 1]), float(kt[i])
        return k * self.duration_s + (t0 + (r - c0) / (c1 - c0) * (t1 - t0))

    def finish_times(self, nbytes: np.ndarray, t0: np.ndarray) -> np.ndarray:
        """Vectorised `finish_time`: arrays of sizes and start times (broadcast)."""
        n = np.asarray(nbytes, dtype=np.float64)
        t0a = np.asarray(t0, dtype=np.float64)
        n, t0a = np.broadcast_arrays(n, t0a)
        if n.size and not (n >= 0).all():
            raise ValueError(f"trace {self.name!r}: byte counts must be >= 0")
        self._check_times(t0a, "start time")
        if n.size >= _BIG:
            from kvcast.traces._kernels import finish_times_fast  # deferred: imports numba

            return finish_times_fast(self, n, t0a)
        start = self.cum_bytes(t0a)
        out = np.array(t0a, dtype=np.float64, copy=True)
        pos = n > 0
        if pos.any():
            fin = self.time_of_cum(start[pos] + n[pos])
            out[pos] = np.maximum(fin, t0a[pos])
        return out

    def finish_time(self, nbytes: float, t0: float) -> float:
        """Absolute time at which `nbytes` offered at `t0` are through; inf if never."""
        if not nbytes >= 0:
            raise ValueError(f"trace {self.name!r}: byte counts must be >= 0 (got {nbytes})")
        start = self.cum_at(t0)
        if nbytes == 0:
            return float(t0)
        return max(self.time_at_cum(start + nbytes), float(t0))

    # ------------------------------------------------------------------ plots and stats
    def samples(self, dt: float, t_end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(t, bits/s): the mean rate over each bin [t, t + dt), for plots and statistics.

        Covers one period by default (or [0, t_end)); a packet trace's rate is its opportunity
        bytes per bin, so choose dt well above the spacing of opportunities.
        """
        if not dt > 0:
            raise ValueError(f"samples: dt must be > 0 (got {dt})")
        end = self.duration_s if t_end is None else float(t_end)
        n = max(int(math.ceil(end / dt - 1e-9)), 1)
        edges = np.arange(n + 1, dtype=np.float64) * dt
        edges[-1] = min(edges[-1], end) if n > 1 else end
        c = self.cum_bytes(edges)
        width = np.diff(edges)
        return edges[:-1], np.diff(c) * 8.0 / width

    def latency_at(self, t: float) -> float | None:
        """One-way latency the trace itself prescribes at time t (sabre), else None."""
        if self.latency_s is None or self.latency_t is None:
            return None
        s = t % self.duration_s if self.loop else min(t, self.duration_s)
        j = int(np.searchsorted(self.latency_t, s, side="right")) - 1
        return float(self.latency_s[max(j, 0)])

    def __repr__(self) -> str:
        return (
            f"Trace({self.name!r}, {self.kind}, {self.duration_s:g} s, "
            f"{self.mean_bps() / 1e6:.3f} Mb/s mean, {'loop' if self.loop else 'once'})"
        )


def from_opportunities(
    name: str,
    times_s: np.ndarray,
    bytes_per_opportunity: float,
    duration_s: float | None = None,
    *,
    loop: bool = True,
    meta: dict[str, str] | None = None,
) -> Trace:
    """A packet trace from delivery-opportunity times (seconds, non-decreasing).

    `duration_s` defaults to the last opportunity time (mahimahi's period).
    """
    times = np.asarray(times_s, dtype=np.float64)
    if times.size == 0:
        raise InputError(f"trace {name!r}: no delivery opportunities")
    period = float(times[-1]) if duration_s is None else float(duration_s)
    uniq, counts = np.unique(times, return_counts=True)
    step = counts.astype(np.float64) * float(bytes_per_opportunity)
    after = np.cumsum(step)
    before = after - step
    kt = np.empty(2 * uniq.size)
    kc = np.empty(2 * uniq.size)
    kt[0::2] = uniq
    kt[1::2] = uniq
    kc[0::2] = before
    kc[1::2] = after
    if uniq[0] > 0:
        kt = np.concatenate(([0.0], kt))
        kc = np.concatenate(([0.0], kc))
    if period > uniq[-1]:
        kt = np.concatenate((kt, [period]))
        kc = np.concatenate((kc, [kc[-1]]))
    m = dict(meta or {})
    m.setdefault("bytes_per_opportunity", f"{bytes_per_opportunity:g}")
    return Trace(name, kt, kc, period, loop=loop, kind="packets", meta=m)


def from_rates(
    name: str,
    durations_s: np.ndarray,
    rates_bps: np.ndarray,
    *,
    loop: bool = True,
    meta: dict[str, str] | None = None,
    latency_s: np.ndarray | None = None,
) -> Trace:
    """A piecewise-constant rate trace: segment i lasts durations_s[i] at rates_bps[i]."""
    d = np.asarray(durations_s, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise InputError(f"trace {name!r}: need a non-empty list of segment durations")
    if not (np.isfinite(d).all() and (d >= 0).all()):
        raise InputError(f"trace {name!r}: segment durations must be finite and >= 0")
    times = np.concatenate(([0.0], np.cumsum(d)))
    return from_steps(name, times, rates_bps, loop=loop, meta=meta, latency_s=latency_s)


def from_steps(
    name: str,
    times_s: np.ndarray,
    rates_bps: np.ndarray,
    *,
    loop: bool = True,
    meta: dict[str, str] | None = None,
    latency_s: np.ndarray | None = None,
) -> Trace:
    """A piecewise-constant rate trace: rates_bps[i] holds over [times_s[i], times_s[i + 1]].

    `times_s` has one more entry than `rates_bps`, starts at 0 and does not decrease.
    """
    kt = np.asarray(times_s, dtype=np.float64)
    r = np.asarray(rates_bps, dtype=np.float64)
    if r.ndim != 1 or kt.shape != (r.size + 1,) or r.size == 0:
        raise InputError(f"trace {name!r}: need n + 1 segment boundaries for n rates")
    if not (np.isfinite(r).all() and (r >= 0).all()):
        raise InputError(f"trace {name!r}: rates must be finite and >= 0")
    if not (np.isfinite(kt).all() and kt[0] == 0 and (np.diff(kt) >= 0).all()):
        raise InputError(f"trace {name!r}: segment times must start at 0 and not decrease")
    if not kt[-1] > 0:
        raise InputError(f"trace {name!r}: total duration must be > 0")
    kc = np.concatenate(([0.0], np.cumsum(np.diff(kt) * r / 8.0)))
    lat_t = None
    if latency_s is not None:
        lat_t = kt[:-1].copy()
        latency_s = np.asarray(latency_s, dtype=np.float64)
    return Trace(
        name,
        kt,
        kc,
        float(kt[-1]),
        loop=loop,
        kind="rate",
        meta=dict(meta or {}),
        latency_t=lat_t,
        latency_s=latency_s,
    )
