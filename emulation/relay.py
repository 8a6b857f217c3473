"""The link emulator: a TCP relay on loopback whose two directions are `LinkDirection`s.

A sender connects to the relay; the relay connects on to the receiver and carries bytes both
ways: what it reads from one side is offered to that direction's link at the moment it was read,
and written to the other side when the link has delivered it plus the one-way delay. Each
connection is one flow. User space, no root: only loopback sockets.

Time: the link runs in trace time `(time.monotonic() - origin) / dilation`. With dilation k the
trace plays k times slower (rates / k, delays x k) and every byte is the same; the processes
around it report times divided by k (docs/emulation.md says what that preserves).

Run it in its own process (`relay_process`) so the receiver's codec work never delays it; it
reports its listening port, then how late it wrote what the link delivered (its fidelity).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from kvcast.traces.trace import Trace

from .control import child_start, parent_messages, tell_parent
from .link import LinkDirection

FORWARD, REVERSE = 0, 1


@dataclass(frozen=True)
class RelayConfig:
    receiver_port: int
    forward: Trace | None  # sender -> receiver bottleneck (None: no rate limit)
    forward_delay_s: float
    reverse: Trace | None = None  # receiver -> sender (acknowledgements); None: delay only
    reverse_delay_s: float = 0.0
    queue_bytes: float = math.inf  # forward queue limit (flow control beyond it)
    dilation: float = 1.0
    origin: float = 0.0  # time.monotonic() of trace time 0 (sent with "go")


@dataclass
class RelayStats:
    """How well the relay kept up: each delivered piece's write time minus its due time."""

    pieces: int = 0
    bytes: list[int] = field(default_factory=lambda: [0, 0])  # per direction
    late_max_s: float = 0.0
    late_sum_s: float = 0.0
    late_over_1ms: int = 0
    max_queued: int = 0  # the forward queue's high-water mark, bytes

    def add(self, late_s: float) -> None:
        self.pieces += 1
        late_s = max(late_s, 0.0)
        self.late_sum_s += late_s
        self.late_max_s = max(self.late_max_s, late_s)
        self.late_over_1ms += late_s > 1e-3

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_queued_bytes": self.max_queued,
            "pieces": self.pieces,
            "forward_bytes": self.bytes[0],
            "reverse_bytes": self.bytes[1],
            "late_mean_s": self.late_sum_s / self.pieces if self.pieces else 0.0,
            "late_max_s": self.late_max_s,
            "late_over_1ms": self.late_over_1ms,
        }


class _Flow:
    def __init__(self, flow_id: int) -> None:
        self.id = flow_id
        self.sender: asyncio.Transport | None = None
        self.receiver: asyncio.Transport | None = None
        self.to_receiver: list[bytes] = []  # delivered before the receiver side was connected
        self.closed = False


class _Side(asyncio.Protocol):
    """One side of a relayed connection: what it reads goes into `direction`."""

    def __init__(self, relay: Relay, flow: _Flow, direction: int) -> None:
        self.relay, self.flow, self.direction = relay, flow, direction
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.direction == FORWARD:
            self.flow.sender = transport
            self.relay.connect_receiver(self.flow)
        else:
            self.flow.receiver = transport
            for data in self.flow.to_receiver:
                transport.write(data)
            self.flow.to_receiver.clear()

    def data_received(self, data: bytes) -> None:
        self.relay.arrived(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close_flow(self.flow)


class Relay:
    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.links = (
            LinkDirection(cfg.forward, cfg.forward_delay_s, cfg.queue_bytes),
            LinkDirection(cfg.reverse, cfg.reverse_delay_s),
        )
        self.flows: dict[int, _Flow] = {}
        self._ids = itertools.count()
        self._seq = itertools.count()
        self._due: list[
            tuple[float, int, int, int, bytes]
        ] = []  # (real time, seq, dir, flow, data)
        self._paused: list[_Side] = []
        self._wake = asyncio.Event()
        self._connecting: set[asyncio.Task[Any]] = set()
        self.stats = RelayStats()

    def trace_time(self, real: float) -> float:
        return max(real - self.cfg.origin, 0.0) / self.cfg.dilation

    def real_time(self, trace_s: float) -> float:
        return self.cfg.origin + trace_s * self.cfg.dilation

    def new_side(self) -> _Side:
        flow = _Flow(next(self._ids))
        self.flows[flow.id] = flow
        return _Side(self, flow, FORWARD)

    def connect_receiver(self, flow: _Flow) -> None:
        loop = asyncio.get_running_loop()
        coro = loop.create_connection(
            lambda: _Side(self, flow, REVERSE), "127.0.0.1", self.cfg.receiver_port
        )
        task = loop.create_task(coro)
        self._connecting.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._connecting.discard(t)
            if t.cancelled() or t.exception() is not None:
                self.close_flow(flow)  # no receiver: the sender sees its connection close

        task.add_done_callback(done)

    def arrived(self, side: _Side, data: bytes) -> None:
        link = self.links[side.direction]
        link.offer(side.flow.id, data, self.trace_time(time.monotonic()))
        if side.direction == FORWARD:
            self.stats.max_queued = max(self.stats.max_queued, link.queued_bytes)
        if link.room() <= 0 and side.transport is not None:
            side.transport.pause_reading()  # the queue is full: flow control back to the sender
            self._paused.append(side)
        self._wake.set()

    def close_flow(self, flow: _Flow) -> None:
        if flow.closed:
            return
        flow.closed = True
        for t in (flow.sender, flow.receiver):
            if t is not None and not t.is_closing():
                t.close()

    def _write(self, direction: int, flow_id: int, data: bytes) -> None:
        flow = self.flows.get(flow_id)
        if flow is None or flow.closed:
            return
        self.stats.bytes[direction] += len(data)
        if direction == REVERSE:
            if flow.sender is not None:
                flow.sender.write(data)
        elif flow.receiver is None:
            flow.to_receiver.append(data)
        else:
            flow.receiver.write(data)

    async def pump(self) -> None:
        """Serve both directions and write what is due; sleep until the next thing is due."""
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            tau = self.trace_time(now)
            for direction, link in enumerate(self.links):
                for dep in link.serve(tau):
                    due = self.real_time(dep.depart_s + link.delay_s)
                    heapq.heappush(self._due, (due, next(self._seq), direction, dep.flow, dep.data))
            if self._paused and self.links[FORWARD].room() > 0:
                for side in self._paused:
                    if side.transport is not None and not side.transport.is_closing():
                        side.transport.resume_reading()
                self._paused.clear()
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                due, _, direction, flow_id, data = heapq.heappop(self._due)
                self.stats.add(now - due)
                self._write(direction, flow_id, data)
            nxt = min(self.real_time(link.next_departure_s()) for link in self.links)
            if self._due:
                nxt = min(nxt, self._due[0][0])
            self._wake.clear()
            timeout = None if math.isinf(nxt) else max(nxt - time.monotonic(), 0.0)
            if timeout == 0.0:
                await asyncio.sleep(0)
                continue
            waiter = loop.create_task(self._wake.wait())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)


async def _serve(cfg: RelayConfig, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    messages = parent_messages(conn)
    relays: list[Relay] = []

    def side() -> _Side:
        return relays[0].new_side()

    server = await loop.create_server(side, "127.0.0.1", 0)
    tell_parent(conn, ("ready", server.sockets[0].getsockname()[1]))
    msg = await messages.get()  # ("go", origin): trace time 0, set once every process is up
    if msg[0] == "go":
        relays.append(Relay(replace(cfg, origin=float(msg[1]))))
        pump = loop.create_task(relays[0].pump())
        await messages.get()  # anything else: stop
        pump.cancel()
        for flow in relays[0].flows.values():
            relays[0].close_flow(flow)
    server.close()
    tell_parent(conn, ("stats", relays[0].stats.as_dict() if relays else {}))


def relay_process(cfg: RelayConfig, conn: Connection) -> None:
    """Entry point of the relay's process: reports its port, starts the link on ("go", origin),
    serves until the next message (or the parent's end), then reports its stats."""
    child_start()
    asyncio.run(_serve(cfg, conn))
