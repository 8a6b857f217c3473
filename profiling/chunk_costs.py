"""Measure a chunk-cost file (`costing: real_codec`): the real codec on a real model's KV cache.

A KV source (e.g. `smollm2`) prefills `tokens` tokens of a named context; the cache is cut into
`chunk_tokens` chunks (`kvcast.chunks`) and every chunk is encoded with
`kvcast.codec.encode_chunk` at every level asked for (ladder levels and baselines): the simulator
then sends those exact byte counts. Each encoded chunk is decoded with `decode_chunk` on
`device`, `repeats` times, and the median wall time is the receiver's decode time for that chunk
(CUDA is synchronised before the clock stops). The result is a `kvcast.chunk_cost_file` table,
cached under the user cache keyed by everything it depends on (the codec by its identity,
`kvcast.codec.identity`, not by its source text).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from kvcast import __version__
from kvcast.chunk_cost_file import ChunkCostTable, LevelChunkCosts, read_table, write_table
from kvcast.chunks import chunk_bounds
from kvcast.codec.identity import codec_identity
from kvcast.errors import InputError
from kvcast.paths import cache_dir


@dataclass(frozen=True)
class ChunkCostSpec:
    """What a chunk-cost table is measured on (a scenario's `real_codec:` plus its chunking)."""

    model: str  # a KV source name (kvcast.kv.sources), e.g. "smollm2"
    context: str  # a built-in context (kvcast.kv.contexts)
    tokens: int
    chunk_tokens: int
    levels: tuple[str, ...]
    device: str = "cpu"
    repeats: int = 3  # decode timings: median of this many

    def cache_path(self) -> Path:
        """Where the table is cached: keyed by every field and the codec's identity."""
        key = json.dumps([*astuple(self), codec_identity()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return cache_dir() / "chunk_costs" / f"{digest}.json"


def chunk_costs(spec: ChunkCostSpec, *, progress: bool = True) -> ChunkCostTable:
    """The cached table for `spec`, measured (and cached) first when there is none."""
    path = spec.cache_path()
    if not path.is_file():
        write_table(measure_chunk_costs(spec, progress=progress), path)
    return read_table(path)


def measure_chunk_costs(spec: ChunkCostSpec, *, progress: bool = True) -> ChunkCostTable:
    """Encode every chunk at every level; bytes and median decode seconds per (level, chunk)."""
    import torch  # deferred: torch is heavy and only measuring needs it

    from kvcast.codec.codec import decode_chunk, encode_chunk  # deferred: imports torch

    levels, device, repeats = list(spec.levels), spec.device, spec.repeats
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"real_codec.device {device!r}: torch sees no CUDA GPU here")
    cache, prof = encoding_inputs(spec, levels)
    kv = cache.kv
    bounds = chunk_bounds(spec.tokens, spec.chunk_tokens)
    sizes: dict[str, list[int]] = {lv: [] for lv in levels}
    decode_s: dict[str, list[float]] = {lv: [] for lv in levels}
    cuda = device.startswith("cuda")
    bar = tqdm(
        total=len(bounds) * len(levels),
        desc="real_codec: encode+decode",
        unit="chunk",
        disable=not progress,
    )
    for a, b in bounds:
        chunk = kv[:, :, a:b].contiguous()
        for lv in levels:
            bar.update(1)
            data = encode_chunk(chunk, lv, key_gains=cache.key_gains, context_start=a == 0,
                                model_tables=prof)  # fmt: skip
            sizes[lv].append(len(data))
            decode_chunk(data, device=device, model_tables=prof)  # warm-up
            times = []
            for _ in range(repeats):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                decode_chunk(data, device=device, model_tables=prof)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            decode_s[lv].append(statistics.median(times))
    bar.close()
    meta = cache.meta
    return ChunkCostTable(
        model_id=meta.model_id,
        kv_elements_per_token=int(meta.n_layers * 2 * meta.n_kv_heads * meta.head_dim),
        device=device,
        tokens=tuple(b - a for a, b in bounds),
        levels={lv: LevelChunkCosts(tuple(sizes[lv]), tuple(decode_s[lv])) for lv in levels},
        provenance={
            "model": spec.model,
            "context": spec.context,
            "repeats": repeats,
            "codec": codec_identity(),
            "kvcast_version": __version__,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def encoding_inputs(spec: ChunkCostSpec, levels: list[str]) -> tuple[Any, Any]:
    """The captured KV cache of `spec` and, when `levels` need them (KLT levels), the model tables
    fitted on calibration contexts: what `encode_chunk` takes, the same for costs and payloads."""
    from kvcast.codec.codec import default_ladder  # deferred: imports torch
    from kvcast.kv.sources import capture  # deferred: imports torch
    from kvcast.profiling.calibration import (  # deferred: imports torch
        Calibration,
        calibration_profile,
    )

    ladder = default_ladder()
    prof = None
    if ladder.needing_model_tables(levels):  # KLT levels: bases fitted on calibration contexts
        cal = Calibration(
            spec.model, tokens=spec.tokens, chunk_tokens=spec.chunk_tokens, kinds=(spec.context,)
        )
        prof, _ = calibration_profile(cal, [ladder.get(n) for n in levels])
    cache = capture(spec.model, tokens=spec.tokens, context=spec.context)
    if cache.key_gains is None:
        need = ladder.needing_key_gains(levels)
        if need:
            raise InputError(
                f"real_codec: the codec profile lists query-weighted levels ({', '.join(need)}) "
                f"whose encoding needs the model's key gains, and {cache.meta.label()} records "
                "none (synthetic caches have no queries): use a real model or a profile "
                "without those levels"
            )
    if cache.kv.shape[2] < spec.tokens:
        raise InputError(
            f"real_codec: {spec.model} gave {cache.kv.shape[2]} tokens, {spec.tokens} asked for"
        )
    return cache, prof
