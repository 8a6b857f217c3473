"""`kvcast bench link`: transfer-completion queries by prefix sums vs a per-packet loop.

Queries: start times uniform over two periods (so answers wrap around the loop), sizes
log-uniform between 10 kB and 10 MB (KV-cache chunks). The per-packet loop walks the
mahimahi opportunities one by one from the start time (found by bisection, which only helps
the loop) until the bytes are through; it answers a subset of the queries, and its time is
extrapolated to all of them. Both must give identical answers on that subset.
"""

from __future__ import annotations

import bisect
import math
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import simpy

from kvcast.errors import InputError
from kvcast.sim.link import Link
from kvcast.traces.catalog import resolve_trace
from kvcast.traces.readers import MAHIMAHI_BYTES_PER_OPPORTUNITY, load_trace
from kvcast.traces.synthetic import gauss_markov, write_mahimahi


def per_packet_finish(
    opp_s: list[float], period_s: float, nbytes: float, t0: float, bytes_per_opp: float
) -> float:
    """The straightforward answer: walk delivery opportunities after t0 until n bytes are out."""
    k = math.floor(t0 / period_s)
    s = t0 - k * period_s
    i = bisect.bisect_right(opp_s, s)
    got = 0.0
    n_opp = len(opp_s)
    while True:
        if i == n_opp:
            k += 1
            i = 0
        got += bytes_per_opp
        if got >= nbytes:
            return k * period_s + opp_s[i]
        i += 1


def _bench_trace(trace: str | None, traces_dirs: Sequence[str | Path], tmp: Path) -> Path:
    if trace:
        return resolve_trace(trace, traces_dirs)
    # A reproducible 1000 s mahimahi trace: a seeded Gauss-Markov rate (mean 5 Mb/s, like
    # ATT-LTE-driving) quantised to opportunities and written as mm-link's text format.
    rate = gauss_markov(1000.0, seed=0, mean_mbps=5.0, std_mbps=2.5, corr_s=5.0, step_s=0.05)
    return write_mahimahi(rate, tmp / "synthetic-1000s.down")


def run_link_bench(
    *,
    trace: str | None = None,
    traces_dirs: Sequence[str | Path] = (),
    n_queries: int = 1_000_000,
    n_loop: int = 2_000,
    n_link: int = 10_000,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Run the benchmark; returns the figures (also logged)."""
    if n_queries < 1 or n_loop < 1:
        raise InputError("--queries and --loop-queries must be >= 1")
    with tempfile.TemporaryDirectory() as tmpd:
        path = _bench_trace(trace, traces_dirs, Path(tmpd))
        t_load = time.perf_counter()
        tr = load_trace(path, "mahimahi")
        t_load = time.perf_counter() - t_load
        # The loop's own view of the trace: the file's lines, one opportunity each.
        opp = [int(line) / 1000.0 for line in path.read_text().split()]
        n_lines = len(opp)
    b = float(tr.meta.get("bytes_per_opportunity", MAHIMAHI_BYTES_PER_OPPORTUNITY))
    label = trace or "synthetic gauss-markov 1000 s (seed 0)"
    log(
        f"trace: {label}: {n_lines:,} opportunities, {tr.duration_s:.3f} s period, "
        f"{tr.mean_bps() / 1e6:.2f} Mb/s mean; loaded in {t_load:.3f} s"
    )

    rng = np.random.default_rng(seed)
    t0 = rng.uniform(0.0, 2.0 * tr.duration_s, n_queries)
    nbytes = np.exp(rng.uniform(math.log(1e4), math.log(1e7), n_queries))

    tr.finish_times(nbytes[:50_000], t0[:50_000])  # warm-up: loads the kernel, builds tables
    t = time.perf_counter()
    fast = tr.finish_times(nbytes, t0)
    t_fast = time.perf_counter() - t

    m = min(n_loop, n_queries)
    t = time.perf_counter()
    slow = [per_packet_finish(opp, tr.duration_s, nbytes[i], t0[i], b) for i in range(m)]
    t_slow = time.perf_counter() - t

    t = time.perf_counter()
    scalar = [tr.finish_time(nbytes[i], t0[i]) for i in range(m)]
    t_scalar = time.perf_counter() - t

    link_fig = _simpy_link_figures(tr, n_link, seed) if n_link > 0 else {}

    slow_a = np.array(slow)
    mismatch = int(np.count_nonzero(slow_a != fast[:m]))
    mismatch += int(np.count_nonzero(np.array(scalar) != fast[:m]))
    qps_fast = n_queries / t_fast
    qps_slow = m / t_slow
    res = {
        "trace": label,
        "opportunities": n_lines,
        "period_s": tr.duration_s,
        "queries": n_queries,
        "vectorised_s": round(t_fast, 4),
        "vectorised_queries_per_s": round(qps_fast),
        "scalar_queries_per_s": round(m / t_scalar),
        "per_packet_loop_queries_timed": m,
        "per_packet_loop_s_for_timed": round(t_slow, 4),
        "per_packet_loop_queries_per_s": round(qps_slow),
        "per_packet_loop_s_extrapolated": round(n_queries / qps_slow, 1),
        "speedup_vectorised": round(qps_fast / qps_slow, 1),
        "speedup_scalar": round((m / t_scalar) / qps_slow, 1),
        "mismatches": mismatch,
        "mean_packets_per_query": round(float(np.mean(nbytes[:m])) / b, 1),
        **link_fig,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if link_fig:
        log(
            f"SimPy Link: {link_fig['link_transfers']:,} transfers "
            f"(mean {link_fig['link_mean_concurrent_flows']:.1f} flows at once) at "
            f"{link_fig['link_transfers_per_s']:,.0f} transfers/s"
        )
    log(
        f"prefix sums: {n_queries:,} queries in {t_fast:.3f} s = {qps_fast:,.0f}/s; "
        f"per-packet loop: {m:,} queries in {t_slow:.3f} s = {qps_slow:,.0f}/s "
        f"(extrapolated {n_queries / qps_slow:,.0f} s for all); "
        f"speed-up {qps_fast / qps_slow:,.0f}x; identical answers: {mismatch == 0}"
    )
    return res


def _simpy_link_figures(tr, n_transfers: int, seed: int) -> dict[str, float]:
    """Time the SimPy `Link` itself: Poisson arrivals at 90 % load (several flows share)."""
    rng = np.random.default_rng(seed + 1)
    sizes = np.exp(rng.uniform(math.log(1e4), math.log(1e7), n_transfers))
    mean_tx = float(np.mean(sizes)) * 8.0 / tr.mean_bps()
    gaps = rng.exponential(mean_tx / 0.9, n_transfers)  # load 0.9: ~9 flows at once (M/G/1-PS)
    env = simpy.Environment()
    link = Link(env, tr, delay_s=0.02)
    busy = []

    def send(t0: float, n: float):
        yield env.timeout(t0)
        t_send = env.now
        arrival = yield link.transfer(n)
        busy.append(arrival - 0.02 - t_send)

    for t0, n in zip(np.cumsum(gaps), sizes, strict=True):
        env.process(send(float(t0), float(n)))
    t = time.perf_counter()
    env.run()
    wall = time.perf_counter() - t
    span = float(np.cumsum(gaps)[-1]) or 1.0
    return {
        "link_transfers": n_transfers,
        "link_transfers_per_s": round(n_transfers / wall),
        "link_mean_concurrent_flows": round(float(np.sum(busy)) / span, 2),
    }
