"""The emulated receiver: reads chunks from TCP, acknowledges each, decodes it for real.

One process. Its event loop reads the sender's frames (`emulation.wire`); when a chunk's last
byte is in it acknowledges at once (the acknowledgement crosses the link's reverse direction)
and queues the chunk for the "GPU lane": one worker thread that, in arrival order, decodes KV
chunks with kvcast's codec on this machine (`kvcast.codec.codec.decode_chunk`, the real bytes),
and either charges TEXT chunks their modelled prefill or, with a model (`real_codec.text:
model`), prefills their real tokens after the request's decoded KV. After a request's last chunk
it runs the first-token step (modelled, or the model on one more token over the whole cache)
and tells the sender the first token is out.

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

from .control import child_start, parent_messages, tell_parent
from .wire import ACK_MAGIC, KIND_KV, TOKEN_MAGIC, ChunkFrame, ChunkReader, WireError, reply


@dataclass(frozen=True)
class ReceiverConfig:
    model_tables: Path | None = None  # for KLT levels (kvcast codec fit-tables)
    device: str = "cpu"
    warmup: tuple[Path, ...] = ()  # encoded chunks decoded once at start (JIT, allocations)
    model: str | None = None  # a KV source that runs TEXT chunks and the first-token step


@dataclass(frozen=True)
class ChunkTimes:
    """When the lane ran a chunk's job (monotonic clock)."""

    request_id: int
    chunk_index: int
    gpu_start: float
    gpu_end: float


class ReceiverWork:
    """What the lane does with each job. KV chunks are always decoded with the codec; TEXT chunks
    and the first-token step wait their modelled time (None returned) unless a real model runs
    them (`ModelWork`). Each method returns whether it did real work (else the lane waits the
    modelled seconds)."""

    def __init__(self, decode: Any) -> None:
        self.decode = decode

    def kv_chunk(self, frame: ChunkFrame) -> bool:
        self.decode(frame.payload)
        return True

    def text_chunk(self, frame: ChunkFrame) -> bool:
        return False

    def first_token(self, request_id: int) -> bool:
        return False

    def reset(self) -> None:
        """A new unit: forget what earlier requests left."""


class ModelWork(ReceiverWork):
    """The real model on this CPU: each request's cache is its decoded KV chunks and the KV of
    its TEXT chunks, which the model prefills from their real token ids after everything before
    them; the first-token step runs the model on one more token over the whole cache."""

    def __init__(self, decode: Any, model: Any) -> None:
        super().__init__(decode)
        self.model = model
        self.parts: dict[int, list[Any]] = {}
        self.last_token: dict[int, int] = {}

    def _past(self, request_id: int) -> Any:
        import torch  # deferred: the receiver's process has it loaded already

        parts = self.parts.get(request_id, [])
        return torch.cat(parts, dim=2) if parts else None

    def kv_chunk(self, frame: ChunkFrame) -> bool:
        self.parts.setdefault(frame.request_id, []).append(self.decode(frame.payload))
        return True

    def text_chunk(self, frame: ChunkFrame) -> bool:
        import numpy as np  # deferred: as above

        ids = np.frombuffer(frame.payload, dtype="<i4").astype(np.int64)
        past = self._past(frame.request_id)
        _, kv = self.model.prefill(ids.tolist(), past, logits_to_keep=1)
        start = 0 if past is None else past.shape[2]
        self.parts.setdefault(frame.request_id, []).append(kv[:, :, start:])
        self.last_token[frame.request_id] = int(ids[-1])
        return True

    def first_token(self, request_id: int) -> bool:
        past = self._past(request_id)
        # one more token over the whole cache: the step that produces the first answer token
        self.model.prefill([self.last_token.get(request_id, 0)], past, logits_to_keep=1)
        self.parts.pop(request_id, None)
        self.last_token.pop(request_id, None)
        return True

    def reset(self) -> None:
        self.parts.clear()
        self.last_token.clear()


class GpuLane:
    """The worker thread: one job at a time, first come first served, where a job comes when
    it is ready: a chunk when it has arrived and its request's previous job is done, the
    first-token step when the request's last chunk is done (the simulator's GPU queue)."""

    def __init__(self, work: ReceiverWork, on_token: Any) -> None:
        self.work = work
        self.on_token = on_token
        # (chunk, arrival time), or (a request's last chunk, None): its first-token step
        self.jobs: queue.Queue[tuple[ChunkFrame, float | None] | None] = queue.Queue()
        self.dilation = 1.0
        self.times: list[ChunkTimes] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._queued_s = 0.0  # expected work queued or running (sender's estimates)
        self._running_until = 0.0
        self._busy: set[int] = set()  # requests with a job queued or running
        self._waiting: dict[int, list[tuple[ChunkFrame, float]]] = {}  # arrived, not yet ready
        self.thread = threading.Thread(target=self._run, name="gpu-lane", daemon=True)
        self.thread.start()

    def queue_s(self, now: float) -> float:
        with self._lock:
            # in undilated seconds, as the sender's estimates are
            return self._queued_s + max(self._running_until - now, 0.0) / self.dilation

    def submit(self, frame: ChunkFrame, arrive: float) -> None:
        with self._lock:
            self._queued_s += frame.gpu_s
            rid = frame.request_id
            if rid in self._busy:
                self._waiting.setdefault(rid, []).append((frame, arrive))
                return
            self._busy.add(rid)
        self.jobs.put((frame, arrive))

    def _done(self, frame: ChunkFrame, step: bool) -> None:
        """A job of `frame`'s request is done: queue its next one, if any has arrived."""
        rid = frame.request_id
        with self._lock:
            waiting = self._waiting.get(rid)
            if waiting:
                self.jobs.put(waiting.pop(0))
            elif not step and frame.chunk_index == frame.n_chunks - 1:
                self._queued_s += frame.step_s
                self.jobs.put((frame, None))
            else:
                self._busy.discard(rid)

    def reset(self) -> None:
        """A new unit (the lane is idle between units)."""
        with self._lock:
            self._busy.clear()
            self._waiting.clear()
            self._queued_s = 0.0
        self.work.reset()

    def _job(self, run: Any, modelled_s: float) -> None:
        """Run one job (real work, or the modelled wait), dilated."""
        start = time.monotonic()
        real = run()
        took = time.monotonic() - start
        _sleep_until(start + self.dilation * (took if real else modelled_s))

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            frame, arrive = job
            with self._lock:
                modelled_s = frame.gpu_s if arrive is not None else frame.step_s
                self._queued_s -= modelled_s
                start = time.monotonic()
                self._running_until = start + self.dilation * modelled_s
            if arrive is None:  # the first-token step, queued when the last chunk was done
                self._first_token(frame)
                self._done(frame, step=True)
                continue
            work = self.work.kv_chunk if frame.kind == KIND_KV else self.work.text_chunk
            try:
                self._job(lambda: work(frame), frame.gpu_s)  # noqa: B023
            except Exception as exc:  # a chunk the codec or model refuses: reported, lane goes on
                self.errors.append(f"request {frame.request_id}, chunk {frame.chunk_index}: {exc}")
            end = time.monotonic()
            self.times.append(ChunkTimes(frame.request_id, frame.chunk_index, start, end))
            self._done(frame, step=False)

    def _first_token(self, frame: ChunkFrame) -> None:
        try:
            self._job(lambda: self.work.first_token(frame.request_id), frame.step_s)
        except Exception as exc:
            self.errors.append(f"request {frame.request_id}, first token: {exc}")
        self.on_token(frame.request_id, time.monotonic())


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
            self.lane.submit(frame, now)  # the queue reported includes this chunk's work
            queue_s = self.lane.queue_s(now)
            self.send(reply(ACK_MAGIC, frame.request_id, frame.chunk_index, now, queue_s))

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def _work(cfg: ReceiverConfig) -> ReceiverWork:
    import torch  # deferred: the codec's decode runs on torch

    from kvcast.codec.codec import decode_chunk  # deferred: imports torch
    from kvcast.codec.model_tables import load_model_tables  # deferred: imports torch

    torch.set_num_threads(1)  # one core for the lane, the other for the link and the sender
    tables = load_model_tables(cfg.model_tables) if cfg.model_tables is not None else None

    def decode(payload: bytes) -> Any:
        return decode_chunk(payload, device=cfg.device, model_tables=tables)

    for path in cfg.warmup:  # the first decode of a level compiles and allocates: not timed
        decode(path.read_bytes())
    if cfg.model is None:
        return ReceiverWork(decode)
    from kvcast.kv.sources import load_model  # deferred: imports torch and transformers

    model = load_model(cfg.model)
    model.prefill([0] * 8, None, logits_to_keep=1)  # warm-up, untimed
    return ModelWork(decode, model)


async def _serve(cfg: ReceiverConfig, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    conns: dict[int, _Connection] = {}

    def on_token(request_id: int, at: float) -> None:  # from the lane's thread
        def send() -> None:
            c = conns.get(request_id)
            if c is not None:
                c.send(reply(TOKEN_MAGIC, request_id, 0, at, 0.0))

        loop.call_soon_threadsafe(send)

    lane = GpuLane(_work(cfg), on_token)
    server = await loop.create_server(lambda: _Connection(lane, loop, conns), "127.0.0.1", 0)
    control = parent_messages(conn)
    tell_parent(conn, ("ready", server.sockets[0].getsockname()[1]))
    while True:
        msg = await control.get()
        if msg[0] == "unit":
            lane.dilation = float(msg[1])
            lane.times, lane.errors = [], []
            lane.reset()
            conns.clear()
            tell_parent(conn, ("ok",))
        elif msg[0] == "collect":
            tell_parent(conn, ("records", list(lane.times), list(lane.errors)))
        else:
            break
    lane.jobs.put(None)
    server.close()


def receiver_process(cfg: ReceiverConfig, conn: Connection) -> None:
    """Entry point of the receiver's process."""
    child_start()
    sys.setswitchinterval(0.0005)  # the lane's thread yields the interpreter to the socket often
    try:
        asyncio.run(_serve(cfg, conn))
    except Exception:
        tell_parent(conn, ("failed", traceback.format_exc()))
