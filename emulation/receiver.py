"""The emulated receiver: reads chunks from TCP, acknowledges each, decodes it for real.

One process. Its event loop reads the sender's frames (`emulation.wire`); when a chunk's last
byte is in it acknowledges at once (the acknowledgement crosses the link's reverse direction)
and queues the chunk for the "GPU lane": one worker thread that, in arrival order, decodes KV
chunks with kvcast's codec on this machine (`kvcast.codec.codec.decode_chunk`, the real bytes)
and charges TEXT chunks their modelled prefill. After a request's last chunk it runs the
modelled first-token decode step and tells the sender the first token is out.

With dilation k every job takes k times its time (a decode that took d s is followed by a wait
of (k - 1) d), so that the GPU keeps its pace against the slowed link.

Control (from the parent, over a `multiprocessing` pipe): ("unit", dilation) starts a
unit (resets what is recorded), ("collect",) returns the records, ("stop",) ends the process.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .wire import ACK_MAGIC, KIND_KV, TOKEN_MAGIC, ChunkFrame, ChunkReader, WireError, reply


@dataclass(frozen=True)
class ReceiverConfig:
    model_tables: Path | None = None  # for KLT levels (kvcast codec fit-tables)
    device: str = "cpu"
    warmup: tuple[Path, ...] = ()  # encoded chunks decoded once at start (JIT, allocations)


@dataclass(frozen=True)
class ChunkTimes:
    request_id: int
    chunk_index: int
    arrive: float  # monotonic, last byte read
    gpu_start: float
    gpu_end: float
    decode_s: float  # the codec's decode wall time (0 for TEXT)


class GpuLane:
    """The worker thread: jobs in arrival order, one at a time."""

    def __init__(self, decode: Any, on_token: Any) -> None:
        self.decode = decode
        self.on_token = on_token
        self.jobs: queue.Queue[tuple[ChunkFrame, float] | None] = queue.Queue()
        self.dilation = 1.0
        self.times: list[ChunkTimes] = []
        self.tokens: dict[int, float] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._queued_s = 0.0  # expected work queued or running (sender's estimates)
        self._running_until = 0.0
        self.thread = threading.Thread(target=self._run, name="gpu-lane", daemon=True)
        self.thread.start()

    def queue_s(self, now: float) -> float:
        with self._lock:
            # in undilated seconds, as the sender's estimates are
            return self._queued_s + max(self._running_until - now, 0.0) / self.dilation

    def submit(self, frame: ChunkFrame, arrive: float) -> None:
        with self._lock:
            self._queued_s += frame.gpu_s
        self.jobs.put((frame, arrive))

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            frame, arrive = job
            k = self.dilation
            with self._lock:
                self._queued_s -= frame.gpu_s
                start = time.monotonic()
                self._running_until = start + k * frame.gpu_s
            decode_s = 0.0
            try:
                if frame.kind == KIND_KV:
                    self.decode(frame.payload)
                    decode_s = time.monotonic() - start
                    _sleep_until(start + k * decode_s)
                else:
                    _sleep_until(start + k * frame.gpu_s)
            except Exception as exc:  # a chunk the codec refuses: reported, the lane goes on
                self.errors.append(f"request {frame.request_id}, chunk {frame.chunk_index}: {exc}")
            end = time.monotonic()
            self.times.append(
                ChunkTimes(frame.request_id, frame.chunk_index, arrive, start, end, decode_s)
            )
            if frame.chunk_index == frame.n_chunks - 1:
                _sleep_until(end + k * frame.step_s)
                at = time.monotonic()
                self.tokens[frame.request_id] = at
                self.on_token(frame.request_id, at)


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(left)


class _Connection(asyncio.Protocol):
    def __init__(self, lane: GpuLane, loop: asyncio.AbstractEventLoop, conns: dict) -> None:
        self.lane, self.loop, self.conns = lane, loop, conns
        self.reader = ChunkReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.reader.feed(data)
        try:
            frames = self.reader.frames()
        except WireError as exc:
            self.lane.errors.append(str(exc))
            if self.transport is not None:
                self.transport.close()
            return
        for frame in frames:
            self.conns[frame.request_id] = self
            self.send(
                reply(ACK_MAGIC, frame.request_id, frame.chunk_index, now, self.lane.queue_s(now))
            )
            self.lane.submit(frame, now)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def _decoder(cfg: ReceiverConfig) -> Any:
    import torch  # deferred: the codec's decode runs on torch

    from kvcast.codec.codec import decode_chunk  # deferred: imports torch
    from kvcast.codec.model_tables import load_model_tables  # deferred: imports torch

    torch.set_num_threads(1)  # one core for the lane, the other for the link and the sender
    tables = load_model_tables(cfg.model_tables) if cfg.model_tables is not None else None

    def decode(payload: bytes) -> None:
        decode_chunk(payload, device=cfg.device, model_tables=tables)

    for path in cfg.warmup:  # the first decode of a level compiles and allocates: not timed
        decode(path.read_bytes())
    return decode


async def _serve(cfg: ReceiverConfig, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    conns: dict[int, _Connection] = {}

    def on_token(request_id: int, at: float) -> None:  # from the lane's thread
        def send() -> None:
            c = conns.get(request_id)
            if c is not None:
                c.send(reply(TOKEN_MAGIC, request_id, 0, at, 0.0))

        loop.call_soon_threadsafe(send)

    lane = GpuLane(_decoder(cfg), on_token)
    server = await loop.create_server(lambda: _Connection(lane, loop, conns), "127.0.0.1", 0)
    control: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: control.put_nowait(conn.recv()))
    conn.send(("ready", server.sockets[0].getsockname()[1]))
    while True:
        msg = await control.get()
        if msg[0] == "unit":
            lane.dilation = float(msg[1])
            lane.times, lane.tokens, lane.errors = [], {}, []
            conns.clear()
            conn.send(("ok",))
        elif msg[0] == "collect":
            conn.send(("records", list(lane.times), dict(lane.tokens), list(lane.errors)))
        else:
            break
    lane.jobs.put(None)
    server.close()


def receiver_process(cfg: ReceiverConfig, conn: Connection) -> None:
    """Entry point of the receiver's process."""
    sys.setswitchinterval(0.0005)  # the lane's thread yields the interpreter to the socket often
    try:
        asyncio.run(_serve(cfg, conn))
    except Exception:
        conn.send(("failed", traceback.format_exc()))
