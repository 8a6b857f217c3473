"""The SimPy link and the single-flow transfer_time: hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy

from kvcast.errors import InputError
from kvcast.sim.link import Link, transfer_time, transfer_times
from kvcast.traces.trace import from_opportunities, from_rates


def const(mbps: float, duration: float = 10.0, loop: bool = True):
    return from_rates("c", np.array([duration]), np.array([mbps * 1e6]), loop=loop)


def run_transfers(link: Link, env: simpy.Environment, plan):
    """plan: list of (send_time, nbytes, flow); returns arrival times in plan order."""
    out: list[float | None] = [None] * len(plan)

    def sender(i, t0, n, flow):
        yield env.timeout(t0)
        out[i] = yield link.transfer(n, flow=flow)

    for i, (t0, n, flow) in enumerate(plan):
        env.process(sender(i, t0, n, flow))
    env.run()
    return out


def test_single_transfer_constant_rate_with_delay():
    tr = const(8.0)  # 1e6 bytes/s
    env = simpy.Environment()
    link = Link(env, tr, delay_s=0.05)
    (arr,) = run_transfers(link, env, [(1.0, 500_000, None)])
    assert arr == pytest.approx(1.0 + 0.5 + 0.05)
    assert transfer_time(tr, 500_000, 1.0, delay_s=0.05) == pytest.approx(arr)


def test_two_equal_flows_each_get_half():
    tr = const(8.0)
    env = simpy.Environment()
    link = Link(env, tr)
    a, b = run_transfers(link, env, [(0.0, 1_000_000, None), (0.0, 1_000_000, None)])
    assert a == pytest.approx(2.0) and b == pytest.approx(2.0)


def test_flow_joining_late_shares_then_leaves():
    tr = const(8.0)  # 1e6 B/s
    env = simpy.Environment()
    link = Link(env, tr)
    # A: 3e6 B at t=0. B: 1e6 B at t=1. During [1, 3] each gets 0.5e6 B/s: B done at 3,
    # A has 3e6 - 1e6 - 1e6 = 1e6 left at t=3 -> done at 4.
    a, b = run_transfers(link, env, [(0.0, 3_000_000, None), (1.0, 1_000_000, None)])
    assert b == pytest.approx(3.0)
    assert a == pytest.approx(4.0)


def test_same_flow_is_fifo_and_shares_as_one():
    tr = const(8.0)
    env = simpy.Environment()
    link = Link(env, tr)
    # Flow x sends two 1e6 B transfers; flow None sends 1e6 B; all at 0.
    # Two flows share: x's first is done at 2 (0.5e6 B/s), the other at 2 too;
    # then x alone: second done at 3.
    a1, a2, c = run_transfers(
        link, env, [(0.0, 1_000_000, "x"), (0.0, 1_000_000, "x"), (0.0, 1_000_000, None)]
    )
    assert a1 == pytest.approx(2.0) and c == pytest.approx(2.0) and a2 == pytest.approx(3.0)


def test_mahimahi_packet_steps_exact():
    # opportunities at 1, 1, 3, 7 ms; 1500 B each; period 7 ms.
    tr = from_opportunities("m", np.array([1, 1, 3, 7]) / 1000.0, 1500)
    env = simpy.Environment()
    link = Link(env, tr)
    # 3000 B at t=0 -> both opportunities at 1 ms. 3001 B -> needs the one at 3 ms.
    a, b = run_transfers(link, env, [(0.0, 3000, None), (0.010, 3001, None)])
    assert a == pytest.approx(0.001)
    # sent at 10 ms (period 2 starts at 14 ms): the opportunity at 7 ms of period 1 fires at
    # 14 ms (1500 B) and the two at 14 + 1 ms bring 3000 more: done at 15 ms.
    assert b == pytest.approx(0.015)


def test_matches_transfer_time_for_sequential_flows(traces_dir):
    from kvcast.traces.readers import load_trace

    tr = load_trace(traces_dir / "mahimahi" / "ATT-LTE-driving-2016.down")
    env = simpy.Environment()
    link = Link(env, tr, delay_s=0.03)
    rng = np.random.default_rng(1)
    sizes = rng.integers(1_000, 3_000_000, 20)
    out = []

    def proc():
        for n in sizes:
            t0 = env.now
            arr = yield link.transfer(int(n))
            out.append((t0, int(n), arr))
            yield env.timeout(0.5)

    env.process(proc())
    env.run()
    for t0, n, arr in out:
        assert arr == transfer_time(tr, n, t0, delay_s=0.03)


def test_zero_bandwidth_stretch_waits_and_once_never_completes():
    # 1 s at 8 Mb/s, 5 s of nothing, 1 s at 8 Mb/s.
    tr = from_rates("z", np.array([1.0, 5.0, 1.0]), np.array([8e6, 0.0, 8e6]), loop=False)
    assert transfer_time(tr, 1_500_000, 0.0) == pytest.approx(6.5)
    assert transfer_time(tr, 2_500_000, 0.0) == math.inf
    env = simpy.Environment()
    link = Link(env, tr)
    a, b = run_transfers(link, env, [(0.0, 600_000, None), (0.0, 5_000_000, None)])
    # shared at 0.5e6 B/s each: a gets 0.5e6 in [0, 1], waits out the gap, needs 0.2 s more.
    assert a == pytest.approx(6.2)
    assert b is None  # never delivered, and env.run() returned: no endless loop


def test_droptail_drops_and_resends():
    tr = const(8.0)  # 1e6 B/s
    env = simpy.Environment()
    link = Link(env, tr, delay_s=0.1, queue="droptail", queue_packets=100)
    (arr,) = run_transfers(link, env, [(0.0, 1_000_000, None)])
    # 150 kB queue, RTT 0.2 s, 1e6 B/s: BDP 200 kB > queue, so the flow is window-limited.
    assert link.stats.dropped_bytes == pytest.approx(1_000_000 - 150_000)
    # 150 kB per round trip: accepted at 0, 0.2, ..., 1.0 (6 x 150 kB) and 1.2 (the last
    # 100 kB, out at 1.3), plus the 0.1 s delay.
    assert arr == pytest.approx(1.4)
    assert link.stats.retransmissions == 6
    assert link.stats.transfers_done == 1
    # A queue larger than the transfer changes nothing.
    env2 = simpy.Environment()
    link2 = Link(env2, tr, delay_s=0.1, queue="droptail", queue_bytes=2_000_000)
    (arr2,) = run_transfers(link2, env2, [(0.0, 1_000_000, None)])
    assert arr2 == pytest.approx(1.1) and link2.stats.dropped_bytes == 0


def test_pensieve_mode_payload_rtt_and_noise():
    tr = const(8.0)
    assert transfer_time(tr, 950_000, 0.0, mode="pensieve") == pytest.approx(1.0 + 0.08)
    env = simpy.Environment()
    link = Link(env, tr, mode="pensieve", noise=(0.9, 1.1), seed=3)
    (arr,) = run_transfers(link, env, [(0.0, 950_000, None)])
    u = np.random.default_rng(3).uniform(0.9, 1.1)
    # On a constant rate, scaling bytes and RTT by u == Pensieve's delay * u.
    assert arr == pytest.approx(u * 1.08)


def test_vectorised_transfer_times_match_scalar():
    tr = from_opportunities("m", np.array([0, 2, 2, 5, 9, 9, 9]) / 1000.0, 1500)
    n = np.array([1, 1500, 1501, 4500, 9000, 30_000])
    t0 = np.array([0.0, 0.002, 0.0015, 0.004, 0.0, 0.0333])
    vec = transfer_times(tr, n, t0)
    assert list(vec) == [transfer_time(tr, float(a), float(b)) for a, b in zip(n, t0, strict=True)]


def test_bad_link_options_are_rejected():
    env = simpy.Environment()
    with pytest.raises(InputError, match="mode"):
        Link(env, const(1), mode="ns3")
    with pytest.raises(InputError, match="droptail"):
        Link(env, const(1), queue="droptail")
    with pytest.raises(InputError, match="retransmit_s"):
        Link(env, const(1), queue="droptail", queue_packets=10)
    with pytest.raises(InputError, match="queue_bytes"):
        Link(env, const(1), queue_bytes=10_000)


def _pensieve_download(time_s, bw_mbps, ptr, last_t, size):
    """Pensieve's chunk download (sim/fixed_env.py), re-implemented from its documented steps."""
    delay = 0.0
    sent = 0.0
    while True:
        thr = bw_mbps[ptr] * 1e6 / 8.0
        dur = time_s[ptr] - last_t
        payload = thr * dur * 0.95
        if sent + payload > size:
            frac = (size - sent) / thr / 0.95
            delay += frac
            last_t += frac
            break
        sent += payload
        delay += dur
        last_t = time_s[ptr]
        ptr += 1
        if ptr >= len(bw_mbps):
            ptr = 1
            last_t = 0.0
    return delay * 1000.0 + 80.0, ptr, last_t


def test_pensieve_mode_reproduces_pensieve_download_times(traces_dir):
    from kvcast.traces.readers import load_trace

    path = traces_dir / "pensieve" / "fcc_train" / "trace_207336_http---www.amazon.com"
    rows = np.loadtxt(path)
    tr = load_trace(path)
    assert rows[0, 0] == 0.0 and (rows[:, 1] == 0).any()  # has outages
    rng = np.random.default_rng(0)
    ptr, last_t = 1, 0.0
    t_trace = 0.0  # Pensieve's trace clock: advances by transmission time only
    for size in rng.integers(50_000, 3_000_000, 400):
        ref_ms, ptr, last_t = _pensieve_download(rows[:, 0], rows[:, 1], ptr, last_t, size)
        arrival = transfer_time(tr, float(size), t_trace, mode="pensieve")
        assert (arrival - t_trace) * 1000.0 == pytest.approx(ref_ms, rel=1e-9, abs=1e-6)
        t_trace = arrival - 0.08
    assert t_trace > tr.duration_s  # the walk wrapped around the trace at least once


def test_trace_latency_as_delay(tmp_path):
    import json

    from kvcast.traces.readers import load_trace

    p = tmp_path / "net.json"
    p.write_text(
        json.dumps(
            [
                {"duration_ms": 1000, "bandwidth_kbps": 8000, "latency_ms": 20},
                {"duration_ms": 1000, "bandwidth_kbps": 8000, "latency_ms": 200},
            ]
        )
    )
    tr = load_trace(p)
    assert transfer_time(tr, 100_000, 0.0, delay_s="trace") == pytest.approx(0.1 + 0.02)
    assert transfer_time(tr, 100_000, 1.5, delay_s="trace") == pytest.approx(1.6 + 0.2)
    env = simpy.Environment()
    link = Link(env, tr, delay_s="trace")
    a, b = run_transfers(link, env, [(0.0, 100_000, None), (1.5, 100_000, None)])
    assert a == pytest.approx(0.12) and b == pytest.approx(1.8)
    with pytest.raises(InputError, match="carries no latency"):
        Link(simpy.Environment(), const(1), delay_s="trace")
    with pytest.raises(InputError, match="'trace'"):
        transfer_time(tr, 1, 0.0, delay_s="sabre")


def test_sharing_is_work_conserving_on_a_real_trace(traces_dir):
    from kvcast.traces.readers import load_trace

    tr = load_trace(traces_dir / "mahimahi" / "TMobile-LTE-short.down")
    rng = np.random.default_rng(4)
    sizes = [int(x) for x in rng.integers(10_000, 4_000_000, 12)]
    env = simpy.Environment()
    link = Link(env, tr)
    arr = run_transfers(link, env, [(0.0, n, None) for n in sizes])
    # All backlogged from t=0: the link never idles, so the last one ends when the total is out.
    assert max(arr) == pytest.approx(tr.finish_time(sum(sizes), 0.0), abs=1e-9)
    # Processor sharing: smaller transfers finish no later than larger ones.
    order = np.argsort(sizes, kind="stable")
    assert all(np.diff(np.array(arr)[order]) >= -1e-12)
    assert link.stats.bytes_delivered == pytest.approx(sum(sizes))


def _fluid_reference(rate_at, plan, dt):
    """Processor sharing by brute-force time stepping (independent of the Link's algorithm).

    plan: (send_time, nbytes, flow); transfers of one flow are FIFO. Returns finish times.
    """
    remaining = [float(n) for _, n, _ in plan]
    done = [None] * len(plan)
    t = 0.0
    while any(d is None for d in done):
        heads = {}
        for i in sorted(range(len(plan)), key=lambda i: plan[i][0]):  # FIFO by send time
            t0, _, fl = plan[i]
            key = ("anon", i) if fl is None else fl
            if done[i] is None and t0 <= t + 1e-12 and key not in heads:
                heads[key] = i
        cap = rate_at(t) * dt
        active = sorted(heads.values(), key=lambda i: remaining[i])
        left = len(active)
        for i in active:
            give = min(remaining[i], cap / left)
            cap -= give
            left -= 1
            remaining[i] -= give
            if remaining[i] <= 1e-9:
                done[i] = t + dt
        t += dt
        assert t < 100, "reference did not finish"
    return done


def test_sharing_matches_brute_force_processor_sharing():
    durs = np.array([1.0, 0.5, 1.5, 0.7, 2.0])
    rates = np.array([8e6, 0.0, 16e6, 4e6, 8e6])
    tr = from_rates("steps", durs, rates)
    edges = np.concatenate(([0.0], np.cumsum(durs)))

    def rate_at(t):
        s = t % edges[-1]
        return rates[min(np.searchsorted(edges, s, side="right") - 1, rates.size - 1)] / 8.0

    rng = np.random.default_rng(11)
    plan = [
        (float(rng.uniform(0, 3)), int(rng.integers(100_000, 2_000_000)), fl)
        for fl in [None, None, "a", "a", None, "b", "b", None]
    ]
    env = simpy.Environment()
    got = run_transfers(Link(env, tr), env, plan)
    want = _fluid_reference(rate_at, plan, dt=1e-4)
    assert got == pytest.approx(want, abs=1e-3)  # time step 1e-4 s, errors add up per event
