"""The bottleneck link: a trace-driven, fairly shared queue with a one-way delay.

Two entry points:

``Link(env, trace, ...)`` (SimPy)
    ``link.transfer(nbytes, flow=None) -> simpy.Event``. The event's value is the arrival time
    at the receiver: the send time, plus queueing and transmission through the bottleneck
    (driven by the trace), plus the one-way delay. Use it as
    ``arrived_at = yield link.transfer(n)``.

``transfer_time(trace, nbytes, t0, ...) -> float`` (no SimPy)
    The same answer for one transfer alone on an idle link, in O(log n) from the trace's
    prefix sums; ``transfer_times`` is its vectorised form (the oracle controller uses these).
    A ``Link`` carrying one flow at a time gives exactly these answers.

Model
-----
- **Capacity** comes from the trace (``Trace.cum_bytes``): bytes offered at ``t0`` use the
  trace's opportunities after ``t0``. For a mahimahi trace this is mm-link's per-byte
  accounting (opportunities with nothing queued are wasted, a packet may span opportunities),
  so a backlogged transfer finishes exactly when mm-link would deliver its last byte.
- **Fair sharing**: flows that have bytes queued share the capacity equally (processor
  sharing, a fluid idealisation of fair queueing at byte granularity). Transfers of the same
  ``flow`` key are served in FIFO order within that flow's share (one connection);
  ``flow=None`` gives every transfer its own flow. The link keeps a virtual time (bytes each
  active flow has received) and a heap of the flows' next completions in it; when a flow
  joins or leaves, the next completion is found by one search in the trace's prefix sums:
  O(log flows) per event and no per-packet events.
- **Delay**: ``delay_s`` is added once per transfer after its last byte leaves the bottleneck
  (bytes reach the bottleneck queue at their send time; propagation is placed after it).
  ``delay_s="trace"`` takes each transfer's delay from the trace's own latency at its send
  time (sabre traces carry ``latency_ms``; sabre charges it once per download, as here).
- **Queue**: ``queue="infinite"`` (default, mm-link's default) or ``"droptail"`` with
  ``queue_bytes`` and/or ``queue_packets`` (``packet_bytes`` each). A transfer is a burst of
  packets offered at its send time; the packets that do not fit are dropped (whole packets,
  as mm-link's droptail drops the arriving packet). Dropped bytes are **retransmitted**: the
  sender resends them ``retransmit_s`` later (default one round trip, ``2 * delay_s``, the
  time a sender needs to learn of the loss), paced to the queue's free space (as a sender
  whose window tracks the queue would), every round trip until all are in. So each byte is
  dropped at most once, and a queue smaller than the bandwidth-delay product caps a flow
  near ``queue / RTT``, as it caps TCP. ``link.stats.dropped_bytes`` counts the drops. If
  the queue can never drain again (a trace played once, past its end) resending stops, and
  the transfer never completes.
- **Modes**: ``mode="mahimahi"`` (default): payload factor 1, ``delay_s`` default 0.
  ``mode="pensieve"`` reproduces Pensieve's download model: payload factor 0.95 (a transfer
  of n bytes needs n / 0.95 of trace capacity), one RTT per download (``delay_s`` default
  0.080 s, Pensieve's LINK_RTT), and optional multiplicative noise ``noise=(0.9, 1.1)``
  drawn per transfer from ``seed``. Pensieve multiplies the whole download delay by the
  noise; kvcast scales the transfer's bytes and its RTT by it instead, which is the same on
  a constant-rate stretch and keeps the link causal when flows share it.
- A transfer that can never finish (trace played once, or one with no capacity) never
  triggers its event; nothing loops forever.
- Observability: ``link.stats`` (``LinkStats``: transfers, bytes delivered, drops,
  resends), ``link.active_flows``, ``link.backlog_bytes()``.

Exactness: one backlogged flow (or flows one after another) gets mm-link's packet-exact
answer. Several flows at once get processor sharing, which mm-link's single FIFO only
approximates (its flows share through their congestion control).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import simpy

from kvcast.errors import InputError
from kvcast.traces.trace import Trace

MODES = ("mahimahi", "pensieve")
PENSIEVE_PAYLOAD_FACTOR = 0.95
PENSIEVE_RTT_S = 0.080
PACKET_BYTES = 1500

__all__ = [
    "Link",
    "LinkStats",
    "transfer_time",
    "transfer_times",
    "MODES",
    "PENSIEVE_PAYLOAD_FACTOR",
    "PENSIEVE_RTT_S",
]


def _trace_delays(trace: Trace, t: np.ndarray) -> np.ndarray:
    """The trace's own one-way latency at each send time (sabre traces carry one)."""
    if trace.latency_s is None or trace.latency_t is None:
        raise InputError(
            f"link delay_s='trace': trace {trace.name!r} carries no latency (only sabre does)"
        )
    p = trace.duration_s
    s = np.mod(t, p) if trace.loop else np.minimum(t, p)
    j = np.clip(np.searchsorted(trace.latency_t, s, side="right") - 1, 0, None)
    return trace.latency_s[j]


def _mode_defaults(mode: str, delay_s: float | str | None, payload_factor: float | None):
    if mode not in MODES:
        raise InputError(f"link mode {mode!r}: expected one of {', '.join(MODES)}")
    if delay_s == "trace":
        delay_s = math.nan  # resolved per transfer from the trace
    elif isinstance(delay_s, str):
        raise InputError(f"link delay_s must be a number of seconds or 'trace' (got {delay_s!r})")
    if delay_s is None:
        delay_s = PENSIEVE_RTT_S if mode == "pensieve" else 0.0
    if payload_factor is None:
        payload_factor = PENSIEVE_PAYLOAD_FACTOR if mode == "pensieve" else 1.0
    if not (math.isnan(delay_s) or (math.isfinite(delay_s) and delay_s >= 0)):
        raise InputError(f"link delay_s must be a finite number >= 0 (got {delay_s})")
    if not (0 < payload_factor <= 1):
        raise InputError(f"link payload_factor must be in (0, 1] (got {payload_factor})")
    return float(delay_s), float(payload_factor)


def transfer_times(
    trace: Trace,
    nbytes: np.ndarray | float,
    t0: np.ndarray | float,
    *,
    mode: str = "mahimahi",
    delay_s: float | str | None = None,
    payload_factor: float | None = None,
    noise_factor: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Arrival times of transfers each alone on an idle link (vectorised `transfer_time`)."""
    delay, pf = _mode_defaults(mode, delay_s, payload_factor)
    u = np.asarray(noise_factor, dtype=np.float64)
    wire = np.asarray(nbytes, dtype=np.float64) * u / pf
    done = trace.finish_times(wire, t0)
    if math.isnan(delay):
        return done + _trace_delays(trace, np.asarray(t0, dtype=np.float64)) * u
    return done + delay * u


def transfer_time(
    trace: Trace,
    nbytes: float,
    t0: float,
    *,
    mode: str = "mahimahi",
    delay_s: float | str | None = None,
    payload_factor: float | None = None,
    noise_factor: float = 1.0,
) -> float:
    """Arrival time at the receiver of `nbytes` sent at `t0` on an idle link; inf if never.

    Same model and defaults as `Link` (see the module docstring); `noise_factor` is the
    Pensieve-mode multiplier for this transfer (1.0: none).
    """
    return float(
        transfer_times(
            trace,
            np.array([nbytes]),
            np.array([t0]),
            mode=mode,
            delay_s=delay_s,
            payload_factor=payload_factor,
            noise_factor=noise_factor,
        )[0]
    )


@dataclass(eq=False)
class _Transfer:
    size: float  # payload bytes the caller asked for
    wire: float  # trace bytes it needs (size * noise / payload factor)
    t_send: float
    event: simpy.Event
    delay: float
    flow: _Flow
    queued: float = 0.0  # bytes in the bottleneck queue
    pending: float = 0.0  # dropped bytes waiting to be resent
    done: bool = False


@dataclass(eq=False)
class _Flow:
    key: Hashable
    transfers: deque = field(default_factory=deque)
    backlog: float = 0.0  # sum of its transfers' queued bytes, exact at virtual time v_ref
    v_ref: float = 0.0  # the link's virtual time when `backlog` and `queued` were last exact
    active: bool = False  # has queued bytes: counted among the flows sharing the link
    version: int = 0  # invalidates older heap entries


@dataclass
class LinkStats:
    """Counters a run can report."""

    transfers_started: int = 0
    transfers_done: int = 0
    bytes_delivered: float = 0.0  # trace bytes used by transfers (wire bytes)
    dropped_bytes: float = 0.0
    retransmissions: int = 0


class Link:
    """A trace-driven bottleneck shared by concurrent flows (see the module docstring)."""

    def __init__(
        self,
        env: simpy.Environment,
        trace: Trace,
        *,
        delay_s: float | str | None = None,
        mode: str = "mahimahi",
        queue: str = "infinite",
        queue_bytes: float | None = None,
        queue_packets: int | None = None,
        packet_bytes: float = PACKET_BYTES,
        retransmit_s: float | None = None,
        payload_factor: float | None = None,
        noise: tuple[float, float] | None = None,
        seed: int = 0,
        name: str = "link",
    ) -> None:
        self.env = env
        self.trace = trace
        self.mode = mode
        self.name = name
        self.delay_s, self.payload_factor = _mode_defaults(mode, delay_s, payload_factor)
        self.limit_bytes = self._queue_limit(queue, queue_bytes, queue_packets, packet_bytes)
        self.packet_bytes = float(packet_bytes)
        self._trace_delay = math.isnan(self.delay_s)
        if self._trace_delay:
            _trace_delays(trace, np.zeros(1))  # fails early if the trace has no latency
        if retransmit_s is None:
            lat = float(np.max(trace.latency_s)) if self._trace_delay else self.delay_s
            retransmit_s = 2.0 * lat  # type: ignore[arg-type]
        if math.isfinite(self.limit_bytes) and not retransmit_s > 0:
            raise InputError(
                "link: a droptail queue needs retransmit_s > 0 (default 2 * delay_s; "
                "delay_s is 0 here, so set retransmit_s)"
            )
        self.retransmit_s = float(retransmit_s)
        if noise is not None:
            lo, hi = float(noise[0]), float(noise[1])
            if not (0 < lo <= hi):
                raise InputError(f"link noise must be (low, high) with 0 < low <= high: {noise}")
            self.noise: tuple[float, float] | None = (lo, hi)
        else:
            self.noise = None
        self._rng = np.random.default_rng(seed)
        self._flows: dict[Hashable, _Flow] = {}
        self._anon = itertools.count()
        self._t = float(env.now)
        self._c = trace.cum_at(self._t)
        # Processor sharing in virtual time: every active flow has received V - v_ref bytes
        # since its v_ref; a flow's next event (a transfer completes, or it drains) is at the
        # virtual time in its heap entry. N active flows; A = sum(backlog + v_ref) over them,
        # so the queue holds A - N * V bytes.
        self._V = 0.0
        self._N = 0
        self._A = 0.0
        self._heap: list[tuple[float, int, int, _Flow]] = []
        self._seq = itertools.count()
        self._wake_gen = 0
        self.stats = LinkStats()

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _queue_limit(queue, queue_bytes, queue_packets, packet_bytes) -> float:
        if not packet_bytes > 0:
            raise InputError(f"link packet_bytes must be > 0 (got {packet_bytes})")
        if queue == "infinite":
            if queue_bytes is not None or queue_packets is not None:
                raise InputError("link: queue_bytes/queue_packets need queue='droptail'")
            return math.inf
        if queue != "droptail":
            raise InputError(f"link queue {queue!r}: expected 'infinite' or 'droptail'")
        limits = []
        if queue_bytes is not None:
            if not queue_bytes >= packet_bytes:
                raise InputError(
                    f"link queue_bytes={queue_bytes} must hold at least one packet "
                    f"({packet_bytes} bytes)"
                )
            limits.append(float(queue_bytes))
        if queue_packets is not None:
            if int(queue_packets) != queue_packets or queue_packets < 1:
                raise InputError(f"link queue_packets must be an integer >= 1: {queue_packets}")
            limits.append(float(queue_packets) * float(packet_bytes))
        if not limits:
            raise InputError("link queue='droptail' needs queue_bytes and/or queue_packets")
        return min(limits)

    # ------------------------------------------------------------------ public API
    def transfer(self, nbytes: float, flow: Hashable | None = None) -> simpy.Event:
        """Send `nbytes` now; the event's value is the arrival time at the receiver."""
        if not (math.isfinite(nbytes) and nbytes >= 0):
            raise ValueError(f"link {self.name}: nbytes must be a finite number >= 0: {nbytes}")
        now = float(self.env.now)
        u = float(self._rng.uniform(*self.noise)) if self.noise else 1.0
        self._advance(now)
        key = ("anon", next(self._anon)) if flow is None else ("flow", flow)
        fl = self._flows.get(key)
        if fl is None:
            fl = self._flows[key] = _Flow(key)
        ev = self.env.event()
        tr = _Transfer(
            size=float(nbytes),
            wire=float(nbytes) * u / self.payload_factor,
            t_send=now,
            event=ev,
            delay=(
                float(_trace_delays(self.trace, np.array([now]))[0])
                if self._trace_delay
                else self.delay_s
            )
            * u,
            flow=fl,
        )
        fl.transfers.append(tr)
        self.stats.transfers_started += 1
        if tr.wire <= 0:
            self._complete(tr, self._t)
        else:
            self._offer(tr, tr.wire, now)
        self._reschedule()
        return ev

    @property
    def active_flows(self) -> int:
        """Flows with bytes in the bottleneck queue now."""
        return self._N

    def backlog_bytes(self) -> float:
        """Bytes waiting in the bottleneck queue (as of the last update)."""
        return max(self._A - self._N * self._V, 0.0)

    # ------------------------------------------------------------------ internals
    def _tol(self) -> float:
        return 1e-9 * max(self._c, 1.0) + 1e-6

    def _sync(self, fl: _Flow) -> None:
        """Make `fl`'s queued bytes exact at the current virtual time (FIFO service)."""
        if not fl.active:
            fl.v_ref = self._V
            return
        served = self._V - fl.v_ref
        if served > 0:
            for tr in fl.transfers:
                if served <= 0:
                    break
                take = min(tr.queued, served)
                tr.queued -= take
                served -= take
        self._A -= fl.backlog + fl.v_ref
        fl.backlog = sum(tr.queued for tr in fl.transfers)
        fl.v_ref = self._V
        self._A += fl.backlog + fl.v_ref

    @staticmethod
    def _need(fl: _Flow) -> float:
        """Bytes `fl` must still receive before its next transfer completes or it drains."""
        acc = 0.0
        for tr in fl.transfers:
            acc += tr.queued
            if tr.pending <= 0:
                break
        return acc

    def _retag(self, fl: _Flow) -> None:
        """After `fl` changed (synced): (de)activate it and push its next event."""
        fl.version += 1
        need = self._need(fl)
        if need > 0:
            if not fl.active:
                fl.active = True
                fl.v_ref = self._V
                self._N += 1
                self._A += fl.backlog + fl.v_ref
            heapq.heappush(self._heap, (self._V + need, next(self._seq), fl.version, fl))
            return
        if fl.active:
            fl.active = False
            self._N -= 1
            self._A -= fl.backlog + fl.v_ref
            fl.backlog = 0.0
            if self._N == 0:
                self._A = 0.0  # drop rounding residue
        if not fl.transfers:
            self._flows.pop(fl.key, None)

    def _enqueue(self, tr: _Transfer, amount: float) -> None:
        fl = tr.flow
        self._sync(fl)
        tr.queued += amount
        if fl.active:
            self._A += amount
        fl.backlog += amount
        self._retag(fl)

    def _fit(self, amount: float) -> float:
        """How much of `amount` the queue accepts now (whole packets when it does not all fit)."""
        free = self.limit_bytes - self.backlog_bytes()
        if amount <= free:
            return amount
        return max(math.floor(max(free, 0.0) / self.packet_bytes) * self.packet_bytes, 0.0)

    def _offer(self, tr: _Transfer, amount: float, now: float) -> None:
        """A burst of `amount` bytes reaches the queue; droptail drops what does not fit."""
        take = self._fit(amount)
        lost = amount - take
        if lost > 0:
            tr.pending += lost
            self.stats.dropped_bytes += lost
            self.env.process(self._resend(tr, now + self.retransmit_s))
        if take > 0:
            self._enqueue(tr, take)

    def _resend(self, tr: _Transfer, t_retry: float):
        """Re-offer `tr`'s dropped bytes, paced to the queue's free space, until all are in."""
        while tr.pending > 0:
            yield self.env.timeout(max(t_retry - float(self.env.now), 0.0))
            now = max(float(self.env.now), self._t)
            self._advance(now)
            take = self._fit(tr.pending)
            if take > 0:
                self.stats.retransmissions += 1
                tr.pending -= take
                self._enqueue(tr, take)
                self._finish_done(tr.flow)
                self._reschedule()
            if tr.pending <= 0:
                return
            # Wait one more round trip, and at least until a packet's worth of space frees up.
            excess = self.backlog_bytes() - (self.limit_bytes - min(tr.pending, self.packet_bytes))
            t_space = self.trace.finish_time(excess, now) if excess > 0 else now
            if not math.isfinite(t_space):
                return  # the queue never drains again: the transfer never completes
            t_retry = max(now + self.retransmit_s, t_space)

    def _top(self) -> tuple[float, _Flow] | None:
        """The earliest valid (virtual time, flow) event, dropping stale heap entries."""
        heap = self._heap
        while heap:
            tag, _, version, fl = heap[0]
            if version == fl.version and fl.active:
                return tag, fl
            heapq.heappop(heap)
        return None

    def _due(self, fl: _Flow) -> None:
        """`fl` has received its need: complete what is done, then schedule its next event."""
        heapq.heappop(self._heap)
        self._sync(fl)
        # Rounding: the transfers up to its first completable one are exactly served.
        for tr in fl.transfers:
            self._A -= tr.queued
            fl.backlog -= tr.queued
            tr.queued = 0.0
            if tr.pending <= 0:
                break
        fl.backlog = max(fl.backlog, 0.0)
        self._finish_done(fl)
        self._retag(fl)

    def _advance(self, now: float) -> None:
        """Serve the capacity that arrived in (self._t, now] to the active flows (equal shares;
        a flow that needs less than its share completes and the rest goes to the others)."""
        if now <= self._t:
            return
        c_now = self.trace.cum_at(now)
        d = c_now - self._c
        self._t, self._c = now, c_now
        if d <= 0:
            return
        tol = self._tol()
        used = 0.0
        while d > 0 and self._N > 0:
            top = self._top()
            if top is None:
                break
            tag, fl = top
            gap = max(tag - self._V, 0.0) * self._N
            if gap <= d + tol:
                g = min(gap, d)
                d -= g
                used += g
                self._V = max(self._V, tag)
                self._due(fl)
            else:
                self._V += d / self._N
                used += d
                d = 0.0
        self.stats.bytes_delivered += used

    def _finish_done(self, fl: _Flow) -> None:
        """Complete `fl`'s transfers that have nothing left to send (FIFO; resends may wait)."""
        done = []
        for tr in fl.transfers:
            if tr.pending > 0:
                continue  # waits for its resend; later transfers may still finish
            if tr.queued > 0:
                break
            done.append(tr)
        for tr in done:
            self._complete(tr, self._t)

    def _complete(self, tr: _Transfer, now: float) -> None:
        tr.done = True
        fl = tr.flow
        fl.transfers.remove(tr)
        if not fl.transfers and not fl.active:
            self._flows.pop(fl.key, None)
        self.stats.transfers_done += 1
        arrival = now + tr.delay
        if tr.delay <= 0:
            tr.event.succeed(arrival)
        else:
            t = self.env.timeout(max(arrival - float(self.env.now), 0.0))
            t.callbacks.append(lambda _e, ev=tr.event, a=arrival: ev.succeed(a))

    def _next_time(self) -> float:
        top = self._top()
        if top is None:
            return math.inf
        tag, _ = top
        return self.trace.time_at_cum(self._c + max(tag - self._V, 0.0) * self._N)

    def _reschedule(self) -> None:
        """Schedule a wake-up at the next completion or drain, assuming no new arrivals."""
        self._wake_gen += 1
        t_next = self._next_time()
        if not math.isfinite(t_next):
            return  # the trace never delivers that much: the transfers never finish
        gen = self._wake_gen
        ev = self.env.timeout(max(t_next - float(self.env.now), 0.0))
        ev.callbacks.append(lambda _e, g=gen, t=t_next: self._wake(g, t))

    def _wake(self, gen: int, t: float) -> None:
        if gen != self._wake_gen:
            return  # superseded by a later join/leave
        self._advance(max(t, float(self.env.now)))
        # Rounding guard: an event the trace puts at or before now is due now.
        while True:
            top = self._top()
            if top is None or self._next_time() > self._t:
                break
            tag, fl = top
            self._V = max(self._V, tag)
            self._due(fl)
        self._reschedule()
