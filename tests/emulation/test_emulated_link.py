"""The emulated link direction against the trace's own answer (no sockets: exact)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvcast.emulation.link import LinkDirection
from kvcast.sim.link import transfer_time
from kvcast.traces.trace import from_opportunities, from_steps


def _packet_trace():
    """A mahimahi-like packet trace: bursts and gaps, 1500 B per opportunity (TEST DATA)."""
    rng = np.random.default_rng(1)
    ms = np.sort(rng.integers(0, 400, size=900)).astype(float)
    ms[-1] = 400.0
    return from_opportunities("burst", ms / 1000.0, 1500.0)


def _serve_all(link: LinkDirection, until: float, step: float) -> list:
    out, t = [], 0.0
    while t <= until:
        out += link.serve(t)
        t += step
    return out


@pytest.mark.parametrize("step", [0.0007, 0.003, 0.05])
@pytest.mark.parametrize(
    "make", [_packet_trace, lambda: from_steps("s", [0, 0.1, 0.3], [8e6, 2e6])]
)
def test_one_transfer_leaves_when_the_trace_says(step: float, make) -> None:
    """However often the relay serves it and however the bytes arrive (in socket-read pieces),
    the last byte leaves exactly when the simulator's link model says."""
    trace = make()
    link = LinkDirection(trace, delay_s=0.02)
    nbytes, t0 = 300_000, 0.0123
    for _ in range(3):  # three socket reads at the same moment
        link.offer(7, b"x" * (nbytes // 3), t0)
    deps = _serve_all(link, 5.0, step)
    assert sum(len(d.data) for d in deps) == nbytes
    assert all(d.flow == 7 for d in deps)
    last = max(d.depart_s for d in deps)
    assert last + link.delay_s == pytest.approx(
        transfer_time(trace, nbytes, t0, delay_s=0.02), abs=1e-9
    )
    assert link.queued_bytes == 0 and link.delivered_bytes == nbytes


def test_capacity_before_an_arrival_is_wasted() -> None:
    trace = from_steps("c", [0, 1], [8e6])  # 1 MB/s
    link = LinkDirection(trace)
    assert link.serve(0.5) == []
    link.offer(1, b"y" * 100_000, 0.5)
    deps = _serve_all(link, 2.0, 0.01)
    assert max(d.depart_s for d in deps) == pytest.approx(0.6)


def test_two_flows_share_round_robin() -> None:
    """Two backlogged flows get equal shares, one MTU per turn; a lone flow gets it all."""
    trace = from_steps("c", [0, 1], [8e6])  # 1 MB/s
    link = LinkDirection(trace)
    link.offer(1, b"a" * 150_000, 0.0)
    link.offer(2, b"b" * 50_000, 0.0)
    deps = _serve_all(link, 1.0, 0.001)
    done = {f: max(d.depart_s for d in deps if d.flow == f) for f in (1, 2)}
    assert done[2] == pytest.approx(0.100, abs=0.002)  # 50 kB each while both are queued
    assert done[1] == pytest.approx(0.200, abs=1e-9)  # then flow 1 alone: all 200 kB by 0.2 s
    served = {1: 0, 2: 0}
    for d in deps:  # while both are queued, neither is ever more than one MTU ahead
        served[d.flow] += len(d.data)
        if served[2] < 50_000:
            assert abs(served[1] - served[2]) <= 1500, served


def test_a_link_without_a_trace_delays_only() -> None:
    link = LinkDirection(None, delay_s=0.05)
    link.offer(3, b"ack", 1.25)
    (dep,) = link.serve(1.25)
    assert (dep.flow, dep.data, dep.depart_s) == (3, b"ack", 1.25)


def test_queue_room_and_bad_settings() -> None:
    link = LinkDirection(from_steps("c", [0, 1], [8e6]), queue_bytes=10_000)
    link.offer(1, b"z" * 9_000, 0.0)
    assert link.room() == 1_000 and link.backlogged()
    assert math.isfinite(link.next_departure_s())
    with pytest.raises(ValueError, match="delay_s"):
        LinkDirection(None, delay_s=-1)
    with pytest.raises(ValueError, match="queue_bytes"):
        LinkDirection(None, queue_bytes=0)


def test_round_robin_is_fair_however_the_bytes_were_read() -> None:
    """One MTU per turn from each flow's queue, whether a flow's bytes came as many small socket
    reads or one big one, and whenever the relay happens to serve (deficit round robin)."""
    trace = from_steps("c", [0, 1], [8e6])  # 1 MB/s
    link = LinkDirection(trace)
    for _ in range(1000):
        link.offer(1, b"s" * 150, 0.0)  # 150 kB in small reads
    link.offer(2, b"B" * 150_000, 0.0)  # 150 kB in one read
    got = {1: 0, 2: 0}
    t = 0.0
    while t < 0.1:  # serve at uneven moments for 100 ms (100 kB of capacity)
        t += 0.0003 + 0.0009 * ((t * 1e4) % 1.0)
        for dep in link.serve(t):
            got[dep.flow] += len(dep.data)
    assert abs(got[1] - got[2]) <= 1500, got
