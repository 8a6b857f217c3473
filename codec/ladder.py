"""The level ladder: named encodings, defined as data in `ladder.yaml`.

`load_ladder()` returns the CacheGen levels best quality first (the adaptation ladder), the
TEXT fallback, the baselines (fp16, int8, kivi4, kivi2, zstd) and extra named variants (the
released code's behaviour). Every name resolves through `Ladder.get`, so `encode_chunk` takes
any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kvcast.chunks import TEXT_LEVEL as TEXT
from kvcast.errors import InputError
from kvcast.fields import Checker

DEFAULT_LADDER = Path(__file__).with_name("ladder.yaml")
BASELINE_KINDS = ("fp16", "int8", "kivi", "zstd")
# CacheGen's MAX = bins // 2 - 1 must be at least 1: bins 3 would leave one symbol and a
# quantization step s / 0 (every value of those rows would decode to NaN)
MIN_BINS, MAX_BINS = 4, 256


@dataclass(frozen=True)
class LevelSpec:
    """One CacheGen-style level (kind "cachegen")."""

    name: str
    description: str
    k_bins: tuple[tuple[float, int], ...]  # (end fraction of the layers, bins), in order
    v_bins: tuple[tuple[float, int], ...]
    delta_k: bool  # anchor/delta coding of K (paper) or raw per-token quantization (released)
    delta_v: bool  # the same for V
    group: int  # tokens per anchor group
    anchor_bins: int
    tables: str  # "profile": offline model tables; "chunk": tables inside the chunk
    prob_bits: int
    lanes: int
    block_tokens: int
    kind: str = "cachegen"
    k_gain: str = "none"  # "query": keys weighted per channel by the model's query energy
    sink_tokens: int = 0  # a chunk that starts the context keeps its first N tokens in float16
    transform: str = "none"  # "klt": quantize in the model tables' KLT bases

    @property
    def key_gains(self) -> bool:
        """Whether encoding needs the model's key gains (`kvcast.kv.query_gains`)."""
        return self.k_gain == "query"

    def bins(self, n_layers: int) -> np.ndarray:
        """int64 [L, 2]: bins of every (layer, K/V) for a model of n_layers layers."""
        out = np.zeros((n_layers, 2), dtype=np.int64)
        for kv, spec in ((0, self.k_bins), (1, self.v_bins)):
            lo = 0
            for end, bins in spec:
                hi = n_layers if end >= 1.0 else min(n_layers, math.ceil(end * n_layers))
                out[lo:hi, kv] = bins
                lo = max(lo, hi)
        return out

    @property
    def delta(self) -> bool:
        return self.delta_k or self.delta_v

    @property
    def needs_model_tables(self) -> bool:
        """Offline tables or a KLT transform: encoding and decoding need the model tables."""
        return self.tables == "profile" or self.transform != "none"

    @property
    def groups(self) -> tuple[int, int]:
        """Anchor group size for K and for V; 0 where anchor/delta is off."""
        return (self.group if self.delta_k else 0, self.group if self.delta_v else 0)


@dataclass(frozen=True)
class BaselineSpec:
    """A baseline behind the same interface (fp16, int8, kivi, zstd)."""

    name: str
    description: str
    kind: str
    bits: int = 0  # kivi: 2 or 4
    group: int = 0  # kivi: group size
    zstd_level: int = 3


@dataclass(frozen=True)
class Ladder:
    levels: tuple[LevelSpec, ...]  # adaptation ladder, best quality first
    default: str
    text_bytes_per_token: int
    baselines: tuple[BaselineSpec, ...]
    variants: tuple[LevelSpec, ...]
    source: str

    def names(self) -> list[str]:
        """Adaptation levels, best quality first (no TEXT)."""
        return [lv.name for lv in self.levels]

    def all_names(self) -> list[str]:
        return [*self.names(), *(v.name for v in self.variants), *(b.name for b in self.baselines)]

    def needing_key_gains(self, names: list[str]) -> list[str]:
        """The names among `names` whose encoding needs the model's key gains (k_gain: query)."""
        return [n for n in names if getattr(self.get(n), "key_gains", False)]

    def needing_model_tables(self, names: list[str]) -> list[str]:
        """The names among `names` that encode and decode only with model tables (offline
        tables or a KLT transform)."""
        return [n for n in names if getattr(self.get(n), "needs_model_tables", False)]

    def get(self, name: str) -> LevelSpec | BaselineSpec:
        for spec in (*self.levels, *self.variants, *self.baselines):
            if spec.name == name:
                return spec
        if name == TEXT:
            raise InputError(
                "level 'TEXT' is not a KV encoding: the sender ships token ids "
                f"({self.text_bytes_per_token} bytes each) and the receiver recomputes"
            )
        raise InputError(f"unknown level {name!r}; known: {', '.join(self.all_names())}, TEXT")


def _bins_list(check: Checker, raw: Any, where: str) -> tuple[tuple[float, int], ...]:
    if not isinstance(raw, list) or not raw:
        raise check.fail(f"{where}", "expected a list of [end_fraction, bins] pairs")
    out = []
    last = 0.0
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 2):
            raise check.fail(f"{where}[{i}]", f"expected [end_fraction, bins], got {item!r}")
        end, bins = item
        if not isinstance(end, (int, float)) or not last < end <= 1.0:
            raise check.fail(f"{where}[{i}]", f"end fraction {end!r} must increase within (0, 1]")
        if not isinstance(bins, int) or not MIN_BINS <= bins <= MAX_BINS:
            raise check.fail(
                f"{where}[{i}]",
                f"bins {bins!r} must be an integer in {MIN_BINS}..{MAX_BINS} "
                "(MAX = bins // 2 - 1 must be at least 1)",
            )
        out.append((float(end), bins))
        last = float(end)
    if last != 1.0:
        raise check.fail(f"{where}", "the last group must end at 1.0 (all layers)")
    return tuple(out)


def _int(
    check: Checker, raw: dict, key: str, where: str, lo: int, hi: int, default: int | None = None
) -> int:
    return check.integer(raw.get(key, default), f"{where}.{key}", lo=lo, hi=hi)


def _level(check: Checker, raw: Any, where: str, defaults: dict) -> LevelSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise check.fail(f"{where}", "expected a mapping with a 'name'")
    name = raw["name"]
    where = f"{where} ({name})"
    known = {
        "name", "description", "k_bins", "v_bins", "delta", "group", "anchor_bins", "tables",
        "prob_bits", "lanes", "block_tokens", "k_gain", "sink_tokens", "transform",
    }  # fmt: skip
    extra = set(raw) - known
    if extra:
        raise check.fail(f"{where}", f"unknown keys {sorted(extra)}")
    merged = {**defaults, **raw}
    tables = merged.get("tables", "profile")
    if tables not in ("profile", "chunk"):
        raise check.fail(f"{where}.tables", f"expected 'profile' or 'chunk', got {tables!r}")
    delta = merged.get("delta", True)
    if isinstance(delta, bool):
        delta = {"k": delta, "v": delta}
    if not (
        isinstance(delta, dict)
        and set(delta) == {"k", "v"}
        and all(isinstance(v, bool) for v in delta.values())
    ):
        raise check.fail(
            f"{where}.delta", f"expected true, false or {{k: bool, v: bool}}, got {delta!r}"
        )
    k_gain = merged.get("k_gain", "none")
    if k_gain not in ("none", "query"):
        raise check.fail(f"{where}.k_gain", f"expected 'none' or 'query', got {k_gain!r}")
    if k_gain == "query" and delta["k"]:
        raise check.fail(f"{where}", "k_gain 'query' cannot be combined with anchor/delta on K")
    if k_gain == "query" and tables == "profile":
        # offline model tables' tables are fitted on unweighted symbols; they would not
        # describe the weighted ones
        raise check.fail(f"{where}", "k_gain 'query' needs 'tables: chunk' (per-chunk tables)")
    transform = merged.get("transform", "none")
    if transform not in ("none", "klt"):
        raise check.fail(f"{where}.transform", f"expected 'none' or 'klt', got {transform!r}")
    if transform == "klt" and (delta["k"] or delta["v"] or k_gain != "none"):
        # the KLT bases already weight keys by the model's query gains; deltas would be taken
        # between rotated tokens, which the bases were not fitted for
        raise check.fail(
            f"{where}", "transform 'klt' cannot be combined with anchor/delta coding or k_gain"
        )
    sink_tokens = _int(check, merged, "sink_tokens", where, 0, 64, 0)
    if sink_tokens and (delta["k"] or delta["v"]):
        raise check.fail(f"{where}", "sink_tokens cannot be combined with anchor/delta coding")
    return LevelSpec(
        name=name,
        description=str(raw.get("description", "")),
        k_bins=_bins_list(check, raw.get("k_bins"), f"{where}.k_bins"),
        v_bins=_bins_list(check, raw.get("v_bins"), f"{where}.v_bins"),
        delta_k=delta["k"],
        delta_v=delta["v"],
        group=_int(check, merged, "group", where, 2, 255, 10),
        anchor_bins=_int(check, merged, "anchor_bins", where, MIN_BINS, MAX_BINS, 256),
        tables=tables,
        prob_bits=_int(check, merged, "prob_bits", where, 10, 16, 15),
        lanes=_int(check, merged, "lanes", where, 1, 64, 16),
        block_tokens=_int(check, merged, "block_tokens", where, 1, 4096, 256),
        k_gain=k_gain,
        sink_tokens=sink_tokens,
        transform=transform,
    )


def _baseline(check: Checker, raw: Any, where: str) -> BaselineSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise check.fail(f"{where}", "expected a mapping with a 'name'")
    kind = raw.get("kind")
    where = f"{where} ({raw['name']})"
    if kind not in BASELINE_KINDS:
        raise check.fail(f"{where}.kind", f"expected one of {BASELINE_KINDS}, got {kind!r}")
    bits = group = 0
    if kind == "kivi":
        bits = _int(check, raw, "bits", where, 1, 8)
        if bits not in (2, 4, 8):
            raise check.fail(f"{where}.bits", f"KIVI supports 2, 4 or 8 bits, got {bits}")
        group = _int(check, raw, "group", where, 1, 4096, 32)
    return BaselineSpec(
        name=raw["name"],
        description=str(raw.get("description", "")),
        kind=kind,
        bits=bits,
        group=group,
        zstd_level=_int(check, raw, "zstd_level", where, 1, 22, 3) if kind == "zstd" else 3,
    )


def load_ladder(path: str | Path | None = None) -> Ladder:
    """Read a ladder YAML (default: the shipped `codec/ladder.yaml`) and check every field."""
    path = Path(path) if path is not None else DEFAULT_LADDER
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ladder file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML: {exc}") from exc
    check = Checker(str(path))
    if not isinstance(raw, dict) or raw.get("format") != "kvcast-ladder" or raw.get("version") != 1:
        raise check.fail("format", "expected 'format: kvcast-ladder' and 'version: 1'")
    defaults = raw.get("defaults", {}) or {}
    check.mapping(defaults, "defaults", optional=None)
    levels = tuple(
        _level(check, x, f"levels[{i}]", defaults) for i, x in enumerate(raw.get("levels") or [])
    )
    if len(levels) < 1:
        raise check.fail("levels", "at least one level is required")
    variants = tuple(
        _level(check, x, f"variants[{i}]", defaults)
        for i, x in enumerate(raw.get("variants") or [])
    )
    baselines = tuple(
        _baseline(check, x, f"baselines[{i}]") for i, x in enumerate(raw.get("baselines") or [])
    )
    names = [s.name for s in (*levels, *variants, *baselines)]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes or TEXT in names:
        raise InputError(
            f"{path}: duplicate or reserved level names: {sorted(dupes | ({TEXT} & set(names)))}"
        )
    for n in names:
        if not 1 <= len(n.encode()) <= 64:
            raise InputError(f"{path}: level name {n!r} must be 1..64 bytes")
    default = raw.get("default")
    if default not in [lv.name for lv in levels]:
        raise check.fail("default", f"{default!r} is not one of the levels")
    text = raw.get("text") or {}
    return Ladder(
        levels=levels,
        default=default,
        text_bytes_per_token=_int(check, text, "bytes_per_token", "text", 1, 8, 4),
        baselines=baselines,
        variants=variants,
        source=str(path),
    )
