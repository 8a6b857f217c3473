"""How long the receiver GPU takes: codec decode per level, TEXT prefill with a prefix, and the
decode step that produces the first token. Two sources: a preset model on preset GPUs (FLOPs
model, `presets.GpuTimeModel`) or the codec profile's own measured prefill curve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kvcast.codec.profile_format import CodecProfile

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


@dataclass(frozen=True)
class Receiver:
    """Everything the GPU lane charges. `decode_melem_per_s` maps level -> codec decode speed."""

    prefill: PrefillModel | GpuTimeModel
    decode_melem_per_s: dict[str, float]
    description: str
    decode_source: str = ""  # where the decode speed comes from: measured (where) or ASSUMED

    def decode_s(self, level: str, elements: int) -> float:
        return elements / (self.decode_melem_per_s[level] * 1e6)
