"""One direction of the emulated link: mm-link's delivery semantics on bytes that really arrived.

Everything here is in *trace time* (seconds since the emulation's origin, divided by the
dilation factor); the relay (`emulation.relay`) feeds it the bytes it read from a socket and
writes out what it serves. No sockets here, so it is tested exactly against the trace.

Model (mahimahi's `mm-link`, ravinet/mahimahi `src/frontend/link_queue.cc`; see
../shared/reference/STREAMING-ANCHORS.md, section 2):
- **Capacity** comes from the trace's cumulative bytes `C(t)` (`kvcast.traces.Trace`): for a
  mahimahi trace one MTU per delivery opportunity, looping. Accounting is per byte: bytes that
  arrive at `a` may use only capacity after `a` (opportunities with nothing queued are wasted),
  and a packet's bytes may span opportunities. The link keeps a cursor in `C`: the capacity
  already used or wasted.
- **Service order**: the queue is per connection (flow) and served round robin, one MTU
  (`quantum`) of the flow's queue per turn however its bytes were read (deficit round robin),
  while several flows have bytes queued; everything while one has; when the link was idle the
  earliest-arrived bytes go first. (mm-link has one FIFO and lets TCP's
  congestion control share it; a relay that terminates TCP has no such control loop, so it
  shares fairly itself, the fair sharing the simulator models.)
- **Delay**: the one-way delay is added after a byte leaves the bottleneck (the relay does it).
- **Queue limit** (`queue_bytes`): the relay stops reading a connection while the queue is full,
  so the sender's TCP is held back by flow control (the limit holds to within one socket read
  per connection, at most 256 KiB each, the size asyncio reads at once). mm-link's droptail drops the arriving packet
  instead; a user-space relay cannot drop a byte its own TCP has acknowledged, so drops (and the
  sender's loss recovery) are not emulated (docs/emulation.md).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from kvcast.traces.trace import Trace

MTU_BYTES = 1500


@dataclass
class _Segment:
    arrival_s: float
    cum_at_arrival: float  # C(arrival): capacity before it is not usable by these bytes
    data: bytes
    offset: int = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.offset


@dataclass(frozen=True)
class Departure:
    """Bytes of one flow that left the bottleneck; the last of them at `depart_s` (trace time)."""

    flow: int
    data: bytes
    depart_s: float


class LinkDirection:
    """A trace-driven bottleneck for one direction; `trace=None`: no rate limit (delay only)."""

    def __init__(
        self,
        trace: Trace | None,
        delay_s: float = 0.0,
        queue_bytes: float = math.inf,
        quantum: int = MTU_BYTES,
    ) -> None:
        if not (delay_s >= 0 and math.isfinite(delay_s)):
            raise ValueError(f"delay_s must be a finite number >= 0 (got {delay_s})")
        if not queue_bytes > 0:
            raise ValueError(f"queue_bytes must be > 0 (got {queue_bytes})")
        self.trace = trace
        self.delay_s = float(delay_s)
        self.queue_bytes = float(queue_bytes)
        self.quantum = int(quantum)
        self._queues: dict[int, deque[_Segment]] = {}
        self._order: deque[int] = deque()  # flows with bytes queued, round-robin order
        self._cursor = 0.0  # capacity used or wasted, in C's bytes
        self._turn_flow: int | None = None  # deficit round robin: whose turn, bytes left in it
        self._turn_left = self.quantum
        self.queued_bytes = 0
        self.delivered_bytes = 0

    def room(self) -> float:
        """Bytes the queue can still take."""
        return self.queue_bytes - self.queued_bytes

    def backlogged(self) -> bool:
        return bool(self._order)

    def offer(self, flow: int, data: bytes, arrival_s: float) -> None:
        """Bytes of `flow` that reached the bottleneck at `arrival_s` (the caller respects room)."""
        if not data:
            return
        cum = self.trace.cum_at(arrival_s) if self.trace is not None else 0.0
        q = self._queues.get(flow)
        if q is None:
            q = self._queues[flow] = deque()
        if not q:
            self._order.append(flow)
        q.append(_Segment(arrival_s, cum, bytes(data)))
        self.queued_bytes += len(data)

    def next_departure_s(self) -> float:
        """When the head of the queue would finish leaving if served alone: the relay's next
        wake-up needs no earlier than this (inf when idle)."""
        if not self._order:
            return math.inf
        seg = self._queues[self._order[0]][0]
        if self.trace is None:
            return seg.arrival_s
        start = max(self._cursor, seg.cum_at_arrival)
        return self.trace.time_at_cum(start + min(seg.left, self.quantum))

    def serve(self, now_s: float) -> list[Departure]:
        """Every byte that has left the bottleneck by `now_s`, grouped per flow in departure
        order (one entry per served piece)."""
        out: list[Departure] = []
        if self.trace is None:  # no bottleneck: bytes leave as they arrive
            for flow in list(self._order):
                for seg in self._queues[flow]:
                    out.append(Departure(flow, seg.data[seg.offset :], seg.arrival_s))
                    self.queued_bytes -= seg.left
                    self.delivered_bytes += seg.left
                self._queues[flow].clear()
            self._order.clear()
            return out
        end = self.trace.cum_at(now_s)
        while self._order:
            flow = self._pick()
            if flow != self._turn_flow:  # a new turn: one quantum, across segments
                self._turn_flow, self._turn_left = flow, self.quantum
            q = self._queues[flow]
            seg = q[0]
            start = max(self._cursor, seg.cum_at_arrival)
            room = math.floor(end - start + 1e-9)
            if room <= 0:
                break  # the turn goes on at the next call: no capacity left before now_s
            shared = len(self._order) > 1
            take = min(seg.left, room, self._turn_left if shared else seg.left)
            self._cursor = start + take
            piece = seg.data[seg.offset : seg.offset + take]
            seg.offset += take
            self.queued_bytes -= take
            self.delivered_bytes += take
            out.append(Departure(flow, piece, self.trace.time_at_cum(self._cursor)))
            if seg.left == 0:
                q.popleft()
            self._turn_left = self._turn_left - take if shared else self.quantum
            if not q:
                self._order.remove(flow)
                self._turn_flow = None
            elif shared and self._turn_left <= 0:
                self._order.rotate(-1)
                self._turn_flow = None
        return out

    def _pick(self) -> int:
        """The flow served next: round robin, except after idleness (the cursor behind the head's
        arrival), when the bytes that arrived first go first."""
        head = self._order[0]
        if len(self._order) == 1 or self._queues[head][0].cum_at_arrival <= self._cursor:
            return head
        first = min(self._order, key=lambda f: self._queues[f][0].arrival_s)
        while self._order[0] != first:
            self._order.rotate(-1)
        return first
