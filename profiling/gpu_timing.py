"""Decode timing on a GPU with CUDA events: warm-up, median of repeats, fresh inputs.

Why fresh inputs: a chunk decoded twice from the same device buffers finds its payload and
tables in the L2 cache (60 MB on an H200, more than a chunk), which a receiver that decodes
each chunk once never does. Every timed repeat therefore decodes a freshly uploaded copy of the
next chunk (round robin over the chunks given) after overwriting a buffer twice the L2's size.

Signature and fields: see the package docstring (`kvcast.codec.gpu`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from kvcast.codec import container
from kvcast.codec.gpu import decode as gd
from kvcast.codec.model_tables import ModelTables


@dataclass
class DecodeTiming:
    """Medians (milliseconds per chunk) of the timed repeats, and what they were measured on."""

    device: str  # "cuda:<GPU name>"
    level: str
    shape: tuple[int, int, int, int, int]
    n_elements: int  # KV elements (= rANS symbols) per chunk
    chunk_bytes: float  # mean encoded size of the chunks
    dtype: str
    kernel_ms: float  # rANS + dequantization kernels: the receiver's decode time
    entropy_ms: float  # rANS kernel alone
    dequant_ms: float  # dequantization kernel alone
    upload_ms: float  # host -> device copy of the chunk's payload, tables and arguments
    host_ms: float  # CPU: parse and check the container, derive tables (wall clock)
    end_to_end_ms: float  # host + upload + kernels + status check (wall clock)
    warmup: int
    repeats: int
    n_chunks: int
    tile_lanes: int
    samples_kernel_ms: list[float] = field(default_factory=list)

    @property
    def symbols_per_s(self) -> float:
        return self.n_elements / (self.kernel_ms / 1e3)

    @property
    def output_bytes(self) -> int:
        return self.n_elements * torch.finfo(getattr(torch, self.dtype)).bits // 8

    @property
    def output_gb_per_s(self) -> float:
        return self.output_bytes / (self.kernel_ms / 1e3) / 1e9

    @property
    def decode_melem_per_s(self) -> float:
        return self.n_elements / (self.kernel_ms / 1e3) / 1e6

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(symbols_per_s=self.symbols_per_s, output_gb_per_s=self.output_gb_per_s,
                 decode_melem_per_s=self.decode_melem_per_s)  # fmt: skip
        return d


class _L2Flusher:
    """Overwrites a buffer twice the size of the GPU's L2 cache."""

    def __init__(self, device: torch.device) -> None:
        props = torch.cuda.get_device_properties(device)
        size = max(2 * int(getattr(props, "L2_cache_size", 0) or 0), 64 << 20)
        self.buf = torch.empty(size, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self.buf.fill_(1)


def time_decode(
    chunks: Sequence[bytes],
    *,
    model_tables: ModelTables | None = None,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.float16,
    warmup: int = 3,
    repeats: int = 10,
    flush_l2: bool = True,
    tile_lanes: int = gd.TILE_LANES,
) -> DecodeTiming:
    """Time GPU decoding of CacheGen chunks (one level, same shape); see the module docstring."""
    if not chunks:
        raise ValueError("time_decode needs at least one chunk")
    dev = torch.device(device)
    if dev.type == "cpu" and gd.interpreting():
        return _time_interpreted(chunks, model_tables, dtype, repeats, tile_lanes)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"time_decode measures CUDA kernels: no CUDA device for {dev}")
    dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    preps = [gd.prepare(c, model_tables) for c in chunks]
    head0 = preps[0].head
    for p in preps[1:]:
        if p.head.shape != head0.shape or p.head.level != head0.level:
            raise ValueError("time_decode: all chunks must have one shape and one level")
    flush = _L2Flusher(dev) if flush_l2 else (lambda: None)
    stream = torch.cuda.current_stream(dev)

    for k in range(max(0, warmup)):
        on = gd.upload(preps[k % len(preps)], dev, tile_lanes=tile_lanes)
        gd.run(on, dtype)
        gd.check(on)
    torch.cuda.synchronize(dev)

    kernel, ent, deq, up, host, e2e = [], [], [], [], [], []
    for k in range(max(1, repeats)):
        data = chunks[k % len(chunks)]
        flush()
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        prep = gd.prepare(data, model_tables)
        t1 = time.perf_counter()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        ev[0].record(stream)
        on = gd.upload(prep, dev, tile_lanes=tile_lanes)
        ev[1].record(stream)
        gd.run_entropy(on)
        ev[2].record(stream)
        gd.run_dequant(on, dtype)
        ev[3].record(stream)
        gd.check(on)  # synchronizes
        t2 = time.perf_counter()
        torch.cuda.synchronize(dev)
        up.append(ev[0].elapsed_time(ev[1]))
        ent.append(ev[1].elapsed_time(ev[2]))
        deq.append(ev[2].elapsed_time(ev[3]))
        kernel.append(ev[1].elapsed_time(ev[3]))
        host.append((t1 - t0) * 1e3)
        e2e.append((t2 - t0) * 1e3)
        del on

    return _timing(f"cuda:{torch.cuda.get_device_name(dev)}", chunks, head0, dtype, kernel, ent,
                   deq, up, host, e2e, warmup, repeats, tile_lanes)  # fmt: skip


def _timing(device: str, chunks: Sequence[bytes], head: container.ChunkHeader,
            dtype: torch.dtype, kernel: list[float], ent: list[float], deq: list[float],
            up: list[float], host: list[float], e2e: list[float], warmup: int, repeats: int,
            tile_lanes: int) -> DecodeTiming:  # fmt: skip
    """A DecodeTiming of per-repeat samples (ms): medians, and the chunks' description."""
    med = statistics.median
    return DecodeTiming(
        device=device,
        level=head.level,
        shape=tuple(head.shape),
        n_elements=head.n_elements,
        chunk_bytes=sum(len(c) for c in chunks) / len(chunks),
        dtype=str(dtype).removeprefix("torch."),
        kernel_ms=med(kernel),
        entropy_ms=med(ent),
        dequant_ms=med(deq),
        upload_ms=med(up),
        host_ms=med(host),
        end_to_end_ms=med(e2e),
        warmup=warmup,
        repeats=max(1, repeats),
        n_chunks=len(chunks),
        tile_lanes=tile_lanes,
        samples_kernel_ms=kernel,
    )


def _time_interpreted(
    chunks: Sequence[bytes],
    model_tables: ModelTables | None,
    dtype: torch.dtype,
    repeats: int,
    tile_lanes: int,
) -> DecodeTiming:
    """Wall-clock stages under Triton's CPU interpreter: exercises the plumbing, times nothing real."""
    ent, deq, up, host = [], [], [], []
    for k in range(max(1, repeats)):
        t0 = time.perf_counter()
        prep = gd.prepare(chunks[k % len(chunks)], model_tables)
        t1 = time.perf_counter()
        on = gd.upload(prep, "cpu", tile_lanes=tile_lanes)
        t2 = time.perf_counter()
        gd.run_entropy(on)
        t3 = time.perf_counter()
        gd.run_dequant(on, dtype)
        gd.check(on)
        t4 = time.perf_counter()
        host.append((t1 - t0) * 1e3)
        up.append((t2 - t1) * 1e3)
        ent.append((t3 - t2) * 1e3)
        deq.append((t4 - t3) * 1e3)
    head0 = gd.prepare(chunks[0], model_tables).head
    kernel = [a + b for a, b in zip(ent, deq, strict=True)]
    e2e = [h + u + k for h, u, k in zip(host, up, kernel, strict=True)]
    return _timing("cpu:triton-interpreter (not a GPU timing)", chunks, head0, dtype, kernel, ent,
                   deq, up, host, e2e, 0, repeats, tile_lanes)  # fmt: skip
