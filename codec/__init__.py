"""kvcast.codec: KV sources, the CacheGen-style codec, the level ladder, baselines.

The codec's public API (contracts.md) is importable from here; it loads lazily so that
importing a light submodule (e.g. the KV sources) does not pull in numba.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "encode_chunk": "kvcast.codec.codec",
    "decode_chunk": "kvcast.codec.codec",
    "chunk_info": "kvcast.codec.codec",
    "EncodeStats": "kvcast.codec.codec",
    "load_ladder": "kvcast.codec.ladder",
    "Ladder": "kvcast.codec.ladder",
    "CorruptChunk": "kvcast.codec.container",
    "ChunkHeader": "kvcast.codec.container",
    "ModelTables": "kvcast.codec.model_tables",
    "ModelTablesMismatch": "kvcast.codec.model_tables",
    "fit_model_tables": "kvcast.codec.model_tables",
    "load_model_tables": "kvcast.codec.model_tables",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kvcast.codec' has no attribute {name!r}")
