"""Non-adaptive controllers: one level for every chunk, or TEXT for every chunk."""

from __future__ import annotations

from kvcast.errors import InputError

from .base import TEXT, Decision, Observation


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


def fixed_level(arg: str) -> FixedLevel:
    return FixedLevel(arg)


def all_text() -> FixedLevel:
    return FixedLevel(TEXT)


def raw_fp16() -> FixedLevel:
    return FixedLevel("fp16")


def int8_baseline() -> FixedLevel:
    return FixedLevel("int8")
