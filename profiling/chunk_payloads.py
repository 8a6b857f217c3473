"""The encoded chunks themselves, for emulation: what `costing: real_codec` counts, as bytes.

`kvcast emulate` sends a real KV cache's chunks at each chosen level and the receiver decodes
them. They are encoded once (`encode_chunk`, the same inputs as the chunk-cost measurement,
`chunk_costs.encoding_inputs`) and cached as files under the user cache, keyed by the chunk-cost
spec (which includes the codec's identity); their lengths must equal the chunk-cost table's
bytes, so the simulator and the emulation send the same bytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kvcast.chunk_cost_file import ChunkCostTable
from kvcast.chunks import chunk_bounds
from kvcast.errors import InputError
from kvcast.kv.contexts import get_context
from kvcast.paths import cache_dir

from .chunk_costs import ChunkCostSpec, encoding_inputs

_DONE = "payloads.json"
_TABLES = "model_tables.safetensors"
_TOKENS = "tokens.npy"
_VERSION = 2  # 2: with the context's token ids


@dataclass(frozen=True)
class ChunkPayloads:
    folder: Path
    levels: tuple[str, ...]
    n_chunks: int
    model_tables: Path | None  # the receiver needs them to decode KLT levels

    def path(self, level: str, chunk: int) -> Path:
        return self.folder / f"{level}.{chunk}.kvc"

    def read(self, level: str, chunk: int) -> bytes:
        return self.path(level, chunk).read_bytes()

    def token_ids(self) -> np.ndarray | None:
        """The context's token ids (int32), for TEXT chunks; None for a source without tokens."""
        path = self.folder / _TOKENS
        return np.load(path) if path.is_file() else None


def chunk_payloads(
    spec: ChunkCostSpec, levels: Sequence[str], table: ChunkCostTable, *, progress: bool = True
) -> ChunkPayloads:
    """The encoded chunks of `spec` at `levels` (encoded and cached first when missing), checked
    against the chunk-cost `table` the simulator uses."""
    folder = cache_dir() / "chunk_payloads" / spec.cache_path().stem
    levels = tuple(dict.fromkeys(levels))
    done = folder / _DONE
    info = json.loads(done.read_text()) if done.is_file() else {}
    have: list[str] = info.get("levels", []) if info.get("version") == _VERSION else []
    if not set(levels) <= set(have):
        _encode(spec, tuple(dict.fromkeys([*have, *levels])), folder, progress)
    n_chunks = int(json.loads(done.read_text())["n_chunks"])
    tables = folder / _TABLES
    out = ChunkPayloads(folder, levels, n_chunks, tables if tables.is_file() else None)
    for lv in levels:
        if lv not in table.levels:
            raise InputError(f"chunk-cost file {table.source}: no level {lv!r}")
        sizes = tuple(out.path(lv, i).stat().st_size for i in range(out.n_chunks))
        if sizes != table.levels[lv].bytes:
            raise InputError(
                f"{folder}: {lv} chunks are {sizes} bytes, the chunk-cost file {table.source} "
                f"says {table.levels[lv].bytes}: the codec's output changed since it was "
                "measured; remove both to measure again"
            )
    return out


def _encode(spec: ChunkCostSpec, levels: tuple[str, ...], folder: Path, progress: bool) -> None:
    from kvcast.codec.codec import encode_chunk  # deferred: imports torch

    if folder.exists():
        shutil.rmtree(folder)
    staging = folder.with_name(folder.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    cache, tables = encoding_inputs(spec, list(levels))
    bounds = chunk_bounds(spec.tokens, spec.chunk_tokens)
    bar = tqdm(total=len(bounds) * len(levels), desc="emulate: encode chunks", disable=not progress)
    for i, (a, b) in enumerate(bounds):
        chunk = cache.kv[:, :, a:b].contiguous()
        for lv in levels:
            data = encode_chunk(chunk, lv, key_gains=cache.key_gains, context_start=a == 0,
                                model_tables=tables)  # fmt: skip
            (staging / f"{lv}.{i}.kvc").write_bytes(data)
            bar.update(1)
    bar.close()
    if tables is not None:
        tables.save(staging / _TABLES)
    ids = _token_ids(spec)
    if ids is not None:
        np.save(staging / _TOKENS, np.asarray(ids, dtype=np.int32))
    done = {"version": _VERSION, "levels": list(levels), "n_chunks": len(bounds)}
    (staging / _DONE).write_text(json.dumps(done))
    staging.rename(folder)


def _token_ids(spec: ChunkCostSpec) -> list[int] | None:
    """The token ids the cache was captured from (the same context, tokens and seed as
    `kvcast.kv.sources.capture`), or None for a source that has no text (a saved or synthetic
    cache)."""
    from kvcast.kv.sources import load_model, resolve_model  # deferred: imports torch

    if not resolve_model(spec.model, None).runnable:
        return None
    ctx = get_context(spec.context, spec.tokens, load_model(spec.model), 0)
    return list(ctx.token_ids)
