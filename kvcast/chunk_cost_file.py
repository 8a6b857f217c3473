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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvcast.errors import InputError
from kvcast.fields import Checker

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
    check = Checker(source)
    top = check.mapping(
        raw,
        "",
        ("format", "version", "model_id", "kv_elements_per_token", "device", "tokens", "levels"),
        ("provenance",),
    )
    if top["format"] != FORMAT:
        raise check.fail("format", f"expected {FORMAT!r}, got {top['format']!r}")
    if top["version"] != VERSION:
        raise check.fail("version", f"expected {VERSION}, got {top['version']!r}")
    tokens = check.integers(top["tokens"], "tokens", lo=1)
    if not tokens:
        raise check.fail("tokens", "expected at least one chunk")
    levels_raw = check.mapping(top["levels"], "levels", optional=None)
    if not levels_raw:
        raise check.fail("levels", "expected at least one level")
    levels = {}
    for name, lv in levels_raw.items():
        where = f"levels.{name}"
        lv = check.mapping(lv, where, ("bytes", "decode_s"))
        sizes = check.integers(lv["bytes"], f"{where}.bytes", lo=1)
        decode = check.numbers(lv["decode_s"], f"{where}.decode_s", lo=0.0)
        if len(sizes) != len(tokens) or len(decode) != len(tokens):
            raise check.fail(where, f"expected {len(tokens)} chunks, as 'tokens' lists")
        levels[str(name)] = LevelChunkCosts(sizes, decode)
    return ChunkCostTable(
        model_id=check.string(top["model_id"], "model_id"),
        kv_elements_per_token=check.integer(
            top["kv_elements_per_token"], "kv_elements_per_token", lo=1
        ),
        device=check.string(top["device"], "device"),
        tokens=tokens,
        levels=levels,
        provenance=dict(check.mapping(top.get("provenance", {}), "provenance", optional=None)),
        source=source,
    )
