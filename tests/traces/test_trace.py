"""Trace semantics: deliveries computed by hand on tiny traces, looping, once, transforms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kvcast.errors import InputError
from kvcast.sim.link_bench import per_packet_finish
from kvcast.traces import edit as tf
from kvcast.traces import synthetic as syn
from kvcast.traces.readers import load_trace
from kvcast.traces.trace import from_opportunities, from_rates


def mm(tmp_path: Path, text: str, name: str = "t.down", **opts):
    p = tmp_path / name
    p.write_text(text)
    return load_trace(p, **opts)


def test_mahimahi_repeated_timestamps_and_loop_by_hand(tmp_path):
    # opportunities at 0, 2, 2, 5 ms; period 5 ms; 1500 B each.
    tr = mm(tmp_path, "0\n2\n2\n5\n")
    assert tr.duration_s == 0.005 and tr.period_bytes == 6000
    assert tr.mean_bps() == pytest.approx(6000 * 8 / 0.005)
    # Bytes offered at t can use only opportunities strictly after t.
    assert tr.bytes_between(0.0, 0.002) == 3000
    assert tr.bytes_between(0.0, 0.0019) == 0
    assert tr.bytes_between(0.002, 0.0049) == 0
    assert tr.bytes_between(0.002, 0.005) == 3000
    # At the wrap, mm-link fires the last (5 ms) and the first (0 + 5 ms) opportunities.
    assert tr.bytes_between(0.004, 0.005) == 3000
    assert tr.finish_time(1500, 0.0) == pytest.approx(0.002)
    assert tr.finish_time(3000, 0.0) == pytest.approx(0.002)
    assert tr.finish_time(4500, 0.0) == pytest.approx(0.005)
    assert tr.finish_time(6000, 0.0) == pytest.approx(0.005)
    assert tr.finish_time(6001, 0.0) == pytest.approx(0.007)
    # Many periods later: 10 periods of 6000 B.
    assert tr.finish_time(60_000, 0.0) == pytest.approx(0.050)
    assert tr.bytes_between(0.0, 1.0) == pytest.approx(200 * 6000)
    assert tr.finish_time(0, 0.0033) == 0.0033


def test_mahimahi_late_start_once_and_1504(tmp_path):
    tr = mm(tmp_path, "3\n3\n10\n", loop=False)
    assert tr.bytes_between(0.0, 0.003) == 3000
    assert tr.finish_time(4500, 0.0) == pytest.approx(0.010)
    assert tr.finish_time(4501, 0.0) == math.inf
    assert tr.finish_time(1, 0.010) == math.inf
    assert tr.bytes_between(0.0, 100.0) == 4500
    big = mm(tmp_path, "3\n3\n10\n", name="b.up", bytes_per_opportunity=1504)
    assert big.period_bytes == 3 * 1504
    assert big.finish_time(3008, 0.0) == pytest.approx(0.003)


def test_finish_is_inverse_of_cum_on_real_trace(traces_dir):
    tr = load_trace(traces_dir / "mahimahi" / "ATT-LTE-driving-2016.down")
    rng = np.random.default_rng(0)
    t0 = rng.uniform(0, 3 * tr.duration_s, 300)
    n = rng.integers(1, 5_000_000, 300).astype(float)
    fin = tr.finish_times(n, t0)
    got = tr.cum_bytes(fin) - tr.cum_bytes(t0)
    assert (got >= n).all()
    # Just before the finish (one packet earlier) not enough had been delivered.
    before = tr.cum_bytes(np.maximum(fin - 1e-4, t0)) - tr.cum_bytes(t0)
    assert (before < n).all()


def test_prefix_sums_equal_per_packet_loop(traces_dir):
    path = traces_dir / "mahimahi" / "TMobile-LTE-short.up"  # starts at 7 ms
    tr = load_trace(path)
    opp = [int(x) / 1000.0 for x in path.read_text().split()]
    rng = np.random.default_rng(5)
    t0 = rng.uniform(0, 2.5 * tr.duration_s, 200)
    n = np.exp(rng.uniform(np.log(100), np.log(3e6), 200))
    fast = tr.finish_times(n, t0)
    slow = [per_packet_finish(opp, tr.duration_s, a, b, 1500) for a, b in zip(n, t0, strict=True)]
    assert list(fast) == slow


def test_numba_kernel_matches_numpy_path(monkeypatch):
    import kvcast.traces.trace as trace_mod

    tr = syn.mahimahi_trace(syn.gauss_markov(60.0, seed=2))
    rt = syn.markov(100.0, seed=4)
    rng = np.random.default_rng(1)
    for t in (tr, rt, tf.with_loop(rt, False)):
        n = np.exp(rng.uniform(np.log(10), np.log(2e7), 25_000))
        n[:5] = 0
        t0 = rng.uniform(0, 3 * t.duration_s, 25_000)
        fast = t.finish_times(n, t0)
        monkeypatch.setattr(trace_mod, "_BIG", 10**12)
        slow = t.finish_times(n, t0)
        monkeypatch.setattr(trace_mod, "_BIG", 20_000)
        assert np.array_equal(fast, slow)
        assert [t.finish_time(a, b) for a, b in zip(n[:300], t0[:300], strict=True)] == list(
            fast[:300]
        )


def test_rate_trace_zero_stretch_waits_and_never_loops_forever():
    tr = from_rates("z", np.array([2.0, 3.0]), np.array([0.0, 8e6]))  # 2 s outage, then 1 MB/s
    assert tr.finish_time(1e6, 0.0) == pytest.approx(3.0)
    assert tr.finish_time(4e6, 0.0) == pytest.approx(5.0 + 2.0 + 1.0)
    dead = from_rates("dead", np.array([5.0]), np.array([0.0]))
    assert dead.finish_time(1, 0.0) == math.inf
    assert dead.finish_times(np.array([1.0, 0.0]), np.array([1.0, 2.0])).tolist() == [
        math.inf,
        2.0,
    ]


def test_negative_time_and_bytes_rejected():
    tr = syn.constant(1.0, 10.0)
    with pytest.raises(ValueError, match=">= 0"):
        tr.finish_time(10, -1.0)
    with pytest.raises(ValueError, match=">= 0"):
        tr.finish_time(-1, 0.0)
    with pytest.raises(ValueError, match="before"):
        tr.bytes_between(2.0, 1.0)


def test_samples_and_mean():
    tr = syn.steps([1.0, 3.0], 2.0)
    t, bps = tr.samples(1.0)
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert bps.tolist() == pytest.approx([1e6, 1e6, 3e6, 3e6])
    assert tr.mean_bps() == pytest.approx(2e6)


def test_synthetic_generators_are_seeded():
    for name, gen in syn.GENERATORS.items():
        if name in ("constant", "steps"):
            continue
        a, b, c = gen(seed=1), gen(seed=1), gen(seed=2)
        assert np.array_equal(a.knot_cum, b.knot_cum), name
        assert not np.array_equal(a.knot_cum, c.knot_cum), name
    cg = syn.cachegen(200, seed=3)
    _, bps = cg.samples(1.0)
    assert bps.min() >= 0.1e9 and bps.max() <= 10e9
    oo = syn.on_off(300.0, seed=1)
    _, bps = oo.samples(0.01)
    assert (bps == 0).any() and (bps == 10e6).any()
    mk = syn.markov(600.0, seed=9, cov=0.0)
    _, bps = mk.samples(1.0)
    assert set(np.round(bps / 1e6, 6)) <= set(np.round(np.linspace(0.2, 4.3, 10), 6))
    gm = syn.gauss_markov(2000.0, seed=1, mean_mbps=5, std_mbps=1, corr_s=2)
    assert gm.mean_bps() == pytest.approx(5e6, rel=0.05)
    with pytest.raises(InputError, match="duration_s"):
        syn.constant(1.0, duration_s=0)


def test_to_mahimahi_round_trip(tmp_path):
    rate = syn.constant(12.0, 1.0)  # one 1500 B packet per ms
    p = syn.write_mahimahi(rate, tmp_path / "c.down")
    lines = p.read_text().split()
    assert lines[:3] == ["1", "2", "3"] and len(lines) == 1000
    tr = load_trace(p)
    assert tr.mean_bps() == pytest.approx(12e6)


def test_scale_stretch_offset_concat_loop():
    base = syn.steps([1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    s = tf.scale(base, 1000)
    assert s.mean_bps() == pytest.approx(base.mean_bps() * 1000)
    assert s.finish_time(1e9, 0.3) == pytest.approx(base.finish_time(1e6, 0.3))
    st = tf.stretch(base, 2.0)
    assert st.duration_s == 12.0 and st.bytes_between(0, 12) == pytest.approx(base.period_bytes)
    off = tf.offset(base, 2.5)
    assert off.duration_s == base.duration_s
    for a, b in [(0, 1), (0.5, 3.5), (3.4, 9.9), (1, 20)]:
        assert off.bytes_between(a, b) == pytest.approx(base.bytes_between(2.5 + a, 2.5 + b))
    once = tf.offset(tf.with_loop(base, False), 2.5)
    assert once.duration_s == 3.5 and not once.loop
    assert once.finish_time(1e12, 0) == math.inf
    cat = tf.concat([base, syn.constant(0.0, 4.0), base])
    assert cat.duration_s == 16.0
    assert cat.bytes_between(6, 10) == 0
    assert cat.bytes_between(10, 16) == pytest.approx(base.period_bytes)
    r1, r2 = tf.random_offset(base, 7), tf.random_offset(base, 7)
    assert r1.name == r2.name
    with pytest.raises(InputError, match="past the end"):
        tf.offset(tf.with_loop(base, False), 6.0)
    with pytest.raises(InputError, match="scale"):
        tf.scale(base, 0)


def test_offset_keeps_packet_steps(tmp_path):
    tr = mm(tmp_path, "0\n2\n2\n5\n")
    off = tf.offset(tr, 0.002)  # rotated: the two opportunities at 2 ms are used up at t=0
    assert off.bytes_between(0.0, 0.003) == 3000  # 5 ms and the wrap's 0 ms
    assert off.bytes_between(0.0, 0.005) == 6000
    for a in (0.0, 0.0011, 0.0042):
        assert off.bytes_between(a, a + 0.013) == tr.bytes_between(0.002 + a, 0.015 + a)


def test_from_opportunities_and_knot_checks():
    tr = from_opportunities("x", np.array([0.5, 0.5, 1.0]), 100.0)
    assert tr.bytes_between(0, 0.5) == 200
    with pytest.raises(InputError, match="no delivery opportunities"):
        from_opportunities("x", np.array([]), 100.0)
    with pytest.raises(InputError, match=">= 0"):
        from_rates("x", np.array([1.0]), np.array([-1.0]))


def test_large_query_sets_are_answered_in_callers_order(monkeypatch):
    import kvcast.traces.trace as trace_mod

    tr = syn.mahimahi_trace(syn.gauss_markov(30.0, seed=5))
    rng = np.random.default_rng(2)
    n = rng.uniform(0, 5e6, (400, 300))  # 120,000 queries, 2-D: sorted internally
    t0 = rng.uniform(0, 100.0, (400, 300))
    fast = tr.finish_times(n, t0)
    monkeypatch.setattr(trace_mod, "_BIG", 10**12)
    assert fast.shape == (400, 300) and np.array_equal(fast, tr.finish_times(n, t0))
