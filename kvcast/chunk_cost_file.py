"""The chunk-cost file: real encoded sizes and measured decode times of one KV cache's chunks.

It is the bridge for `costing: real_codec`, as the codec profile is for `costing: profile`:
`kvcast.profiling.chunk_costs` encodes a real model's cache at every level and times each
chunk's decode (writing this file); the simulator reads it and never imports the codec. The
format is JSON (docs/profile-format.md, "Chunk-cost file")::

    {"format": "kvcast-chunk-costs", "version": 1,
     "model_id": "...", "kv_elements_per_token": 18432, "device": "cpu",
     "tokens": [1500, 1500, 1500],                       # per chunk
     "levels": {"cachegen-q1": {"bytes": [...], "decode_s": [...]}, ...},
     "provenance": {...}}                                # what was measured, how, by which codec
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvcast.errors import InputError

FORMAT = "kvcast-chunk-costs"
VERSION = 1


@dataclass(frozen=True)
class LevelChunkCosts:
    """One level: bytes and decode seconds per chunk."""

    bytes: tuple[int, ...]
    decode_s: tuple[float, ...]


@dataclass(frozen=True)
class ChunkCostTable:
    model_id: str
    kv_elements_per_token: int
    device: str  # where decode was timed, e.g. "cpu" or "cuda:NVIDIA H200"
    tokens: tuple[int, ...]  # per chunk
    levels: dict[str, LevelChunkCosts]
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the file it was read from, for messages

    @property
    def n_chunks(self) -> int:
        return len(self.tokens)


def table_to_dict(table: ChunkCostTable) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_id": table.model_id,
        "kv_elements_per_token": table.kv_elements_per_token,
        "device": table.device,
        "tokens": list(table.tokens),
        "levels": {
            name: {"bytes": list(lv.bytes), "decode_s": list(lv.decode_s)}
            for name, lv in table.levels.items()
        },
        "provenance": table.provenance,
    }


def write_table(table: ChunkCostTable, path: Path) -> None:
    """Write atomically (a temporary name, then rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table_to_dict(table), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_table(path: Path) -> ChunkCostTable:
    """Read and check a chunk-cost file; errors name the file and the field."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"chunk-cost file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    return table_from_dict(raw, str(path))


def table_from_dict(raw: Any, source: str) -> ChunkCostTable:
    def fail(where: str, what: str) -> InputError:
        return InputError(f"{source}: field {where!r}: {what}")

    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise fail("version", f"expected {VERSION}, got {raw.get('version')!r}")
    tokens = _ints(raw.get("tokens"), "tokens", fail)
    if not tokens:
        raise fail("tokens", "expected at least one chunk")
    levels_raw = raw.get("levels")
    if not isinstance(levels_raw, dict) or not levels_raw:
        raise fail("levels", "expected a non-empty mapping of level name to costs")
    levels = {}
    for name, lv in levels_raw.items():
        where = f"levels.{name}"
        if not isinstance(lv, dict):
            raise fail(where, "expected {bytes: [...], decode_s: [...]}")
        sizes = _ints(lv.get("bytes"), f"{where}.bytes", fail)
        decode = lv.get("decode_s")
        if not isinstance(decode, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
            for x in decode
        ):
            raise fail(f"{where}.decode_s", "expected a list of finite seconds >= 0")
        if len(sizes) != len(tokens) or len(decode) != len(tokens):
            raise fail(where, f"expected {len(tokens)} chunks, as 'tokens' lists")
        levels[str(name)] = LevelChunkCosts(sizes, tuple(float(x) for x in decode))
    kv_elem = raw.get("kv_elements_per_token")
    if not isinstance(kv_elem, int) or isinstance(kv_elem, bool) or kv_elem <= 0:
        raise fail("kv_elements_per_token", "expected an integer > 0")
    for key in ("model_id", "device"):
        if not isinstance(raw.get(key), str):
            raise fail(key, "expected a string")
    provenance = raw.get("provenance", {})
    if not isinstance(provenance, dict):
        raise fail("provenance", "expected a mapping")
    return ChunkCostTable(
        raw["model_id"], kv_elem, raw["device"], tokens, levels, provenance, source
    )


def _ints(value: Any, where: str, fail: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value
    ):
        raise fail(where, "expected a list of integers > 0")
    return tuple(value)
