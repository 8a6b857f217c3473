"""The levels a run offers: each level's expected quality, and the adaptive ladder controllers see.

- **Expected quality** of a level is its profile mean (`quality.normalized`), capped at 1.0: no
  lossy level is better than the uncompressed cache (a mean a hair above 1.0 is measurement noise).
  Decisions, request qualities and the bound all use it; per-chunk samples are not used, so a
  lossy level cannot "beat lossless" on a lucky chunk.
- **The adaptive ladder** is the size-vs-quality Pareto frontier of the profile's levels: sorted by
  mean bits per element, a level stays only if its expected quality is strictly higher than every
  smaller level's. A level both larger and no better than another is never offered to an adaptive
  controller (it stays available to `fixed:<level>` and to the bound). A scenario's `levels:`
  restricts the candidates first (e.g. to CacheGen's three levels).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvcast.chunks import TEXT_LEVEL
from kvcast.errors import InputError
from kvcast.profile_format import CodecProfile


def expected_quality(profile: CodecProfile) -> dict[str, float]:
    """Level (and TEXT) -> expected normalized quality, never above 1.0."""
    out = {lv.name: min(1.0, float(lv.quality.normalized)) for lv in profile.levels}
    out[TEXT_LEVEL] = min(1.0, float(profile.text.quality))
    return out


def adaptive_ladder(
    profile: CodecProfile, allowed: Sequence[str] | None = None, where: str = "levels"
) -> tuple[str, ...]:
    """The size-vs-quality frontier of the profile's levels (or of `allowed`), largest first
    (which, on a frontier, is also best quality first)."""
    names = list(profile.level_names)
    if allowed is not None:
        unknown = [n for n in allowed if n not in names]
        if unknown:
            raise InputError(
                f"{where}: level(s) {', '.join(unknown)} not in codec profile "
                f"{profile.name or profile.source} (levels: {', '.join(names)})"
            )
        names = [n for n in names if n in set(allowed)]
    quality = expected_quality(profile)
    bits = {lv.name: float(lv.bits_per_element.mean) for lv in profile.levels}
    frontier: list[str] = []
    best = -1.0
    for name in sorted(names, key=lambda n: (bits[n], -quality[n])):
        if quality[name] > best:
            frontier.append(name)
            best = quality[name]
    return tuple(reversed(frontier))
