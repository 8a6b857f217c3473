"""How long the receiver GPU takes: codec decode per level and chunk, TEXT prefill with a prefix,
and the decode step that produces the first token.

Prefill comes from a preset model on preset GPUs (FLOPs model, `presets.GpuTimeModel`) or the
codec profile's measured prefill curve. Decode time has one route, `Receiver.decode_s`, and one
of two sources, each saying where its figures come from: a speed per level (`DecodeRates`: the
codec profile's measured Melem/s, or a scenario's stated estimate) or seconds measured per chunk
(`MeasuredDecode`: a chunk-cost file, `costing: real_codec`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kvcast.chunk_cost_file import ChunkCostTable
from kvcast.profile_format import CodecProfile

from .presets import GpuTimeModel


class PrefillModel(Protocol):
    def prefill_s(self, new_tokens: int, prefix_tokens: int) -> float: ...

    def decode_step_s(self, context_tokens: int) -> float: ...


@dataclass(frozen=True)
class MeasuredPrefill:
    """Prefill from a profile's measured curve: time(n) = n / tokens_per_s(n), interpolated.

    A TEXT chunk of T tokens after P cached tokens costs time(P+T) - time(P); the decode step is
    the marginal cost of one more token, time(n+1) - time(n)."""

    context_tokens: tuple[int, ...]
    tokens_per_s: tuple[float, ...]

    @classmethod
    def from_profile(cls, profile: CodecProfile) -> MeasuredPrefill:
        return cls(
            tuple(p.context_tokens for p in profile.prefill),
            tuple(p.tokens_per_s for p in profile.prefill),
        )

    def _time(self, n: float) -> float:
        if n <= 0:
            return 0.0
        tps = float(np.interp(n, self.context_tokens, self.tokens_per_s))
        return n / tps

    def prefill_s(self, new_tokens: int, prefix_tokens: int) -> float:
        return self._time(prefix_tokens + new_tokens) - self._time(prefix_tokens)

    def decode_step_s(self, context_tokens: int) -> float:
        return self._time(context_tokens + 1) - self._time(context_tokens)


class DecodeTimes(Protocol):
    source: str  # where the figures come from: measured (where, by what) or ASSUMED

    def decode_s(self, level: str, chunk_index: int, elements: int) -> float: ...

    def decode_table(self, levels: Sequence[str], elements: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class DecodeRates:
    """A decode speed per level, in million KV elements per second."""

    melem_per_s: dict[str, float]
    source: str

    def decode_s(self, level: str, chunk_index: int, elements: int) -> float:
        return elements / (self.melem_per_s[level] * 1e6)

    def decode_table(self, levels: Sequence[str], elements: np.ndarray) -> np.ndarray:
        """`decode_s` of every level (rows) and chunk (columns) at once, the same figures."""
        rate = np.array([self.melem_per_s[lv] * 1e6 for lv in levels])
        return elements[None, :] / rate[:, None]


@dataclass(frozen=True)
class MeasuredDecode:
    """Seconds measured for each chunk at each level (a chunk-cost file)."""

    seconds: dict[str, tuple[float, ...]]
    source: str

    @classmethod
    def from_table(cls, table: ChunkCostTable) -> MeasuredDecode:
        return cls(
            {name: lv.decode_s for name, lv in table.levels.items()},
            f"codec decode measured per chunk on {table.device} (chunk-cost file {table.source})",
        )

    def decode_s(self, level: str, chunk_index: int, elements: int) -> float:
        return self.seconds[level][chunk_index]

    def decode_table(self, levels: Sequence[str], elements: np.ndarray) -> np.ndarray:
        return np.array([self.seconds[lv][: elements.size] for lv in levels], dtype=np.float64)


@dataclass(frozen=True)
class Receiver:
    """Everything the GPU lane charges."""

    prefill: PrefillModel | GpuTimeModel
    decode: DecodeTimes
    description: str

    @property
    def decode_source(self) -> str:
        return self.decode.source

    def decode_s(self, level: str, chunk_index: int, elements: int) -> float:
        """Decode time of chunk `chunk_index` (of `elements` KV elements) at `level`."""
        return self.decode.decode_s(level, chunk_index, elements)

    def decode_table(self, levels: Sequence[str], elements: np.ndarray) -> np.ndarray:
        """`decode_s` for every level (rows) and every chunk of a request (columns), the chunks'
        KV elements given in order: one call per request instead of one per level and chunk."""
        return self.decode.decode_table(levels, elements)
