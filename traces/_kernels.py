"""numba kernel for `Trace.finish_times` on large query arrays (measured: see `kvcast bench link`).

It performs, per query, the same float operations in the same order as `Trace.cum_at` and
`Trace.time_at_cum` (so the answers are identical), with each binary search narrowed by a
bucket table first (`_BucketIndex`), which avoids most cache misses on large traces.
"""

from __future__ import annotations

import math

import numba
import numpy as np

FUZZ = 1e-12  # must equal trace._fuzz's factor


@numba.njit(cache=True, inline="always")
def _search(keys, left, right, k0, scale, nb, x, side_right):
    b = math.floor((x - k0) * scale)
    if b < 0 or b != b:
        b = 0
    if b > nb - 1:
        b = nb - 1
    bi = int(b)
    lo = left[bi - 1] if bi >= 1 else left[0]
    hi = right[bi + 2] if bi + 2 <= nb else right[nb]
    while lo < hi:
        mid = (lo + hi) >> 1
        if (keys[mid] <= x) if side_right else (keys[mid] < x):
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True)
def finish_kernel(
    kt, kc, slope, t_left, t_right, t_k0, t_scale, t_nb,
    c_left, c_right, c_k0, c_scale, c_nb,
    period, pbytes, loop, nbytes, t0, out,
):  # fmt: skip
    nk = kt.size
    for i in range(nbytes.size):
        n = nbytes[i]
        t = t0[i]
        if n == 0.0:
            out[i] = t
            continue
        # C(t0), as Trace.cum_at
        k = 0.0
        if loop:
            k = math.floor(t / period)
            s = t - k * period
            if s >= period:
                k += 1.0
                s -= period
            if s < 0.0:
                s = 0.0
        else:
            s = t if t < period else period
        x = s + FUZZ * (t + period)
        j = _search(kt, t_left, t_right, t_k0, t_scale, t_nb, x, True) - 1
        if j < 0:
            j = 0
        if j > nk - 1:
            j = nk - 1
        c = k * pbytes + (kc[j] + slope[j] * (s - kt[j]))
        target = c + n
        # earliest time with C >= target, as Trace.time_at_cum
        if pbytes <= 0.0:
            out[i] = math.inf
            continue
        if loop:
            k2 = math.ceil(target / pbytes) - 1.0
            if k2 < 0.0:
                k2 = 0.0
            r = target - k2 * pbytes
            if r > pbytes:
                k2 += 1.0
                r -= pbytes
            elif r <= 0.0 and k2 > 0.0:
                k2 -= 1.0
                r += pbytes
            if r < 5e-324:
                r = 5e-324
            if r > pbytes:
                r = pbytes
        else:
            if target > pbytes:
                out[i] = math.inf
                continue
            k2 = 0.0
            r = target
        m = _search(kc, c_left, c_right, c_k0, c_scale, c_nb, r, False)
        if m < 1:
            m = 1
        if m > nk - 1:
            m = nk - 1
        c0 = kc[m - 1]
        c1 = kc[m]
        ta = kt[m - 1]
        tb = kt[m]
        fin = k2 * period + (ta + (r - c0) / (c1 - c0) * (tb - ta))
        out[i] = fin if fin > t else t


SORT_ABOVE = 100_000  # larger query sets are answered in start-time order (cache locality)


def finish_times_fast(tr, nbytes: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """Run the kernel for Trace `tr` (arrays already validated, same shape, float64).

    Large query sets are processed in order of start time, so that successive searches touch
    nearby table entries (measured ~1.7x faster on 1M queries, sort included); the answers
    are the same, scattered back to the callers' order.
    """
    if nbytes.size >= SORT_ABOVE:
        order = np.argsort(t0.ravel(), kind="stable")
        flat = np.empty(nbytes.size, dtype=np.float64)
        flat[order] = _run(tr, nbytes.ravel()[order], t0.ravel()[order])
        return flat.reshape(nbytes.shape)
    return _run(tr, nbytes, t0)


def _run(tr, nbytes: np.ndarray, t0: np.ndarray) -> np.ndarray:
    ti = tr._index("t")
    ci = tr._index("cum")
    out = np.empty(nbytes.shape, dtype=np.float64)
    finish_kernel(
        tr.knot_t, tr.knot_cum, tr._slope,
        ti.left, ti.right, ti.k0, ti.scale, ti.nb,
        ci.left, ci.right, ci.k0, ci.scale, ci.nb,
        tr.duration_s, tr.period_bytes, tr.loop,
        np.ascontiguousarray(nbytes.ravel()), np.ascontiguousarray(t0.ravel()), out.ravel(),
    )  # fmt: skip
    return out
