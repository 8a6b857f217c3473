"""BBA (buffer-based adaptation, Huang et al. SIGCOMM'14) with the SLO slack as the buffer.

Video BBA maps buffer occupancy to a bitrate: below the reservoir the lowest rate, above
reservoir + cushion the highest, linear in between (Pensieve's `test/bb.py`: reservoir 5 s,
cushion 10 s). A KV fetch has no playback buffer; its slack is the SLO budget left. We normalise
the budget per remaining chunk by the SLO's equal share per chunk, so that "on pace" is 1.0:

    buffer = budget_left_s / (slo_s * chunks_left / n_chunks)

and express reservoir and cushion in the same unit (defaults 0.5 and 0.5: below half the pace
the worst level, at or above pace the best). The levels are the adaptive ladder: the profile's
size-vs-quality frontier sorted by size, so each step up costs bytes and buys quality, as BBA's
bitrate ladder does. BBA looks at no throughput and never picks TEXT.
"""

from __future__ import annotations

import math

from .base import Decision, Observation


class BufferBased:
    def __init__(self, reservoir: float = 0.5, cushion: float = 0.5) -> None:
        if reservoir < 0 or cushion <= 0:
            raise ValueError("reservoir must be >= 0 and cushion > 0")
        self.reservoir = float(reservoir)
        self.cushion = float(cushion)
        self.name = "bba"

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> Decision:
        levels = obs.levels  # the size-sorted frontier, largest (best) first
        pace = obs.slo_s * obs.chunks_left / obs.n_chunks
        buf = obs.budget_left_s / pace
        if buf < self.reservoir:
            return Decision(levels[-1])
        if buf >= self.reservoir + self.cushion:
            return Decision(levels[0])
        steps = len(levels) - 1
        from_worst = math.floor(steps * (buf - self.reservoir) / self.cushion)
        return Decision(levels[steps - from_worst])


def buffer_based(reservoir: float = 0.5, cushion: float = 0.5) -> BufferBased:
    return BufferBased(reservoir, cushion)
