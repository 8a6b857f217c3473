"""The emulated sender: serves each request's chunks over TCP, deciding each one live.

Per request, at its arrival: one TCP connection through the relay; for each chunk the
controller decides on what this sender has measured (the same `Observation` the simulator builds,
`sim.engine.chunk_observation`), the chunk's real encoded bytes go out in one frame
(`emulation.wire`), and the next decision waits for the receiver's acknowledgement, which comes
back over the link's reverse direction. The sender measures a chunk's transfer time as the
acknowledgement's time minus the send time minus the reverse delay (it knows the path's delays,
as a sender knows its base RTT); the throughput sample takes the forward delay off as well.

Times handed to controllers and recorded are trace time: (monotonic - origin) / dilation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvcast.controllers.base import TEXT, Controller, LinkHistory
from kvcast.objective import Objective
from kvcast.sim.costs import RequestCosts
from kvcast.sim.engine import (
    ChunkRecord,
    FlowCount,
    Request,
    RequestRecord,
    SenderState,
    chunk_cost,
    chunk_observation,
    chunk_record,
    request_record,
)

from .wire import (
    ACK_MAGIC,
    KIND_KV,
    KIND_TEXT,
    REPLY_BYTES,
    TOKEN_MAGIC,
    ChunkFrame,
    Reply,
    WireError,
    chunk_frame,
    parse_reply,
)


@dataclass(frozen=True)
class SenderClock:
    origin: float  # time.monotonic() of trace time 0
    dilation: float

    def now(self) -> float:
        return (time.monotonic() - self.origin) / self.dilation

    def of(self, monotonic: float) -> float:
        return (monotonic - self.origin) / self.dilation

    async def sleep_until(self, trace_s: float) -> None:
        await asyncio.sleep(max(self.origin + trace_s * self.dilation - time.monotonic(), 0.0))


@dataclass
class SenderRun:
    """One controller's requests through the emulated link."""

    controller: Controller
    ladder: tuple[str, ...]
    payloads: Mapping[str, Sequence[bytes]]  # level -> encoded chunks
    text_payloads: Sequence[bytes]  # each chunk's token ids, as a TEXT chunk carries them
    relay_port: int
    clock: SenderClock
    delay_s: float  # forward one-way delay
    ack_delay_s: float  # reverse one-way delay
    per_chunk_overhead_s: float
    objective: Objective
    on_request_done: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.history = LinkHistory()
        self.flows = FlowCount(self.clock.now)
        self.decisions = 0

    async def run(
        self, requests: Sequence[Request], costs: Sequence[RequestCosts]
    ) -> tuple[list[RequestRecord], list[ChunkRecord]]:
        done = await asyncio.gather(
            *(self._request(r, c) for r, c in zip(requests, costs, strict=True))
        )
        reqs = sorted((r for r, _ in done), key=lambda r: r.request_id)
        chunks = sorted(
            (c for _, rows in done for c in rows), key=lambda c: (c.request_id, c.chunk_index)
        )
        return reqs, chunks

    async def _request(
        self, req: Request, rc: RequestCosts
    ) -> tuple[RequestRecord, list[ChunkRecord]]:
        clock = self.clock
        await clock.sleep_until(req.arrival_s)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.relay_port)
        try:
            self.controller.reset(req.request_id)
            state = SenderState()
            rows: list[ChunkRecord] = []
            queue_s, queue_at = 0.0, clock.now()  # the receiver's last report of its work
            for i in range(rc.n_chunks):
                now = clock.now()
                obs = chunk_observation(
                    req,
                    rc,
                    i,
                    now,
                    state,
                    ladder=self.ladder,
                    gpu_queue_s=max(queue_s - (now - queue_at), 0.0),
                    per_chunk_overhead_s=self.per_chunk_overhead_s,
                    link_delay_s=self.delay_s,
                    ack_delay_s=self.ack_delay_s,
                    history=self.history,
                    other_transfers=self.flows.n,
                    objective=self.objective,
                )
                decision = self.controller.choose(obs)
                self.decisions += 1
                level = decision.level
                cost = chunk_cost(rc, level, i, self.controller.name)
                nbytes, work, _ = cost
                payload = self.text_payloads[i] if level == TEXT else self.payloads[level][i]
                if len(payload) != nbytes:
                    raise WireError(
                        f"chunk {i} at {level}: {len(payload)} bytes, the costs say {nbytes}"
                    )
                if self.per_chunk_overhead_s > 0:
                    await clock.sleep_until(clock.now() + self.per_chunk_overhead_s)
                frame = ChunkFrame(
                    req.request_id,
                    i,
                    rc.n_chunks,
                    KIND_TEXT if level == TEXT else KIND_KV,
                    level,
                    work,
                    rc.decode_step_s,
                    payload,
                )
                start = clock.now()
                mark = self.flows.enter()
                writer.write(chunk_frame(frame))
                await writer.drain()
                ack = await _reply(reader, ACK_MAGIC, req.request_id, i)
                acked = clock.now()
                sharing = self.flows.leave(mark)
                arrived = acked - self.ack_delay_s  # as the sender can tell
                if rc.sends_kv(level):
                    state.learn(
                        nbytes, arrived - start, arrived, sharing, self.delay_s, self.history
                    )
                queue_s, queue_at = ack.gpu_queue_s, clock.of(ack.at)
                state.quality_sum += rc.quality[level] * rc.tokens[i]
                arrive = queue_at  # recorded: when the receiver had the last byte
                rows.append(chunk_record(req, rc, i, level, cost, start, arrive, decision))
            token = await _reply(reader, TOKEN_MAGIC, req.request_id, 0)
            ttft = clock.of(token.at) - req.arrival_s
        finally:
            writer.close()
        if self.on_request_done is not None:
            self.on_request_done()
        return request_record(req, rc, rows, ttft, self.objective), rows


async def _reply(reader: Any, magic: bytes, request_id: int, chunk_index: int) -> Reply:
    try:
        data = await reader.readexactly(REPLY_BYTES)
    except asyncio.IncompleteReadError:
        raise WireError(
            f"request {request_id}: the receiver closed the connection before its "
            f"{'acknowledgement of chunk ' + str(chunk_index) if magic == ACK_MAGIC else 'first token'}"
        ) from None
    rep = parse_reply(data)
    if (rep.magic, rep.request_id, rep.chunk_index) != (magic, request_id, chunk_index):
        raise WireError(
            f"request {request_id}: expected {magic!r} for chunk {chunk_index}, got "
            f"{rep.magic!r} for request {rep.request_id} chunk {rep.chunk_index}"
        )
    return rep
