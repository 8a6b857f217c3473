"""Context-reduction levels: their names and what each one sends (docs/reduction.md).

A reduction level shrinks a chunk before (or instead of) the codec:

- ``h2o-<pct>[+<codec level>]``: the chunk's KV reduced to the H2O heavy hitters and recent
  window (`kvcast.kv.h2o`), `pct` percent of its tokens, sent as *importance tiers* (the top 25%,
  the next 25%, the other 50%), each tier encoded on its own at the codec level (fp16 without
  one). ``h2o-100[+<level>]`` is every token, in tiers: what importance-first streaming sends in
  full. Budgets are the tier bounds, 25, 50 or 100.
- ``lingua-<pct>``: the chunk's text pruned to `pct` percent of its tokens by surprisal
  (`kvcast.kv.lingua`), sent as token ids and prefilled by the receiver (a shorter TEXT).
- ``lingua-<pct>+<codec level>``: the KV of the pruned text, encoded at the codec level.

Their bits per element are per element of the *original* chunk, so every level of a profile
compares on the same scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvcast.errors import InputError

H2O = "h2o"
LINGUA = "lingua"
TIER_PERCENTS = (25, 50, 100)  # H2O importance tiers: the top 25%, the next 25%, the rest

_NAME = re.compile(r"^(h2o|lingua)-(\d{1,3})(?:\+([A-Za-z0-9_.-]+))?$")


@dataclass(frozen=True)
class Reduction:
    """One reduction level, parsed from its name."""

    method: str  # "h2o" | "lingua"
    percent: int  # tokens kept, percent of the chunk's
    codec: str | None  # the codec level after the reduction (None: fp16 for H2O, text for lingua)

    @property
    def keep(self) -> float:
        return self.percent / 100.0

    @property
    def payload(self) -> str:
        """What goes on the wire: "kv" (a KV cache) or "text" (token ids, prefilled)."""
        return "text" if self.method == LINGUA and self.codec is None else "kv"

    @property
    def name(self) -> str:
        return f"{self.method}-{self.percent}" + (f"+{self.codec}" if self.codec else "")

    @property
    def tier_percents(self) -> tuple[int, ...]:
        """The H2O tiers this level sends (percent bounds), e.g. (25, 50) for h2o-50."""
        return tuple(p for p in TIER_PERCENTS if p <= self.percent)


def parse_reduction(name: str) -> Reduction:
    """The reduction level called `name`; a clear error otherwise."""
    m = _NAME.match(name)
    if not m:
        raise InputError(
            f"reduction level {name!r}: expected h2o-<25|50|100>[+<codec level>] or "
            "lingua-<percent>[+<codec level>]"
        )
    method, pct, codec = m.group(1), int(m.group(2)), m.group(3)
    if method == H2O and pct not in TIER_PERCENTS:
        raise InputError(
            f"reduction level {name!r}: H2O keeps 25, 50 or 100 percent (its importance tiers)"
        )
    if not 0 < pct < 100 and method == LINGUA:
        raise InputError(f"reduction level {name!r}: LLMLingua keeps 1 to 99 percent")
    return Reduction(method, pct, codec)


def is_reduction(name: str) -> bool:
    return bool(_NAME.match(name))


def kept_tokens(n_tokens: int, keep: float) -> int:
    """How many of a chunk's `n_tokens` tokens a reduction keeping `keep` of them keeps:
    round(keep x n), at least one (the rule of H2O's budget and LLMLingua's ratio here)."""
    if not 0.0 < keep <= 1.0:
        raise InputError(f"a reduction keeps a share in (0, 1] of the tokens, got {keep}")
    return max(1, min(n_tokens, round(keep * n_tokens)))


def importance_tiers(codec: str | None) -> tuple[str, ...]:
    """The levels whose cumulative bytes make importance-first streaming's tiers at `codec`
    (None or "fp16": uncompressed): h2o-25[+codec], h2o-50[+codec], h2o-100[+codec]."""
    codec = None if codec == "fp16" else codec
    return tuple(Reduction(H2O, p, codec).name for p in TIER_PERCENTS)
