"""Non-adaptive controllers: one level for every chunk, or TEXT for every chunk."""

from __future__ import annotations

from kvcast.errors import InputError

from .base import TEXT, Decision, Observation
from .registry import register


class FixedLevel:
    """Every chunk at one level (a ladder level or a baseline such as `fp16`)."""

    def __init__(self, level: str) -> None:
        self.level = level
        self.name = f"fixed:{level}"

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> Decision:
        if self.level != TEXT and self.level not in obs.next_sizes:
            known = ", ".join(obs.next_sizes)
            raise InputError(
                f"controller {self.name!r}: the codec profile has no level {self.level!r} (levels: {known})"
            )
        return Decision(self.level)


@register("fixed", "every chunk at the named level: fixed:<level>")
def _fixed(arg: str) -> FixedLevel:
    return FixedLevel(arg)


@register("text", "recompute everything: every chunk sent as token ids and prefilled")
def _text() -> FixedLevel:
    return FixedLevel(TEXT)


@register("raw", "uncompressed fp16 KV (the profile's 'fp16' baseline)")
def _raw() -> FixedLevel:
    return FixedLevel("fp16")


@register("int8", "CacheGen's 8-bit per-token quantization baseline (the profile's 'int8')")
def _int8() -> FixedLevel:
    return FixedLevel("int8")
