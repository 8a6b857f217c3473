"""CacheGen's adaptation rules: the paper's (SIGCOMM'24) and the released artifact's.

Paper (CACHEGEN.md §3.1): the previous chunk's measured throughput is the estimate for the rest
of the transfer; pick the highest-quality level whose *remaining* bytes fit the remaining SLO
budget; send TEXT when recomputing the chunk is faster than sending it. Before any throughput
sample exists the estimate is `initial_throughput_bps` (the paper's listing does not say; 1 Gbps,
the log-middle of its 0.1-10 Gbps range, is our assumption) and TEXT is not considered: the first
KV chunk measures the link (otherwise a low prior could pick TEXT forever, never measuring).
TEXT transfers (a few KB of token ids) say nothing about bandwidth, so only KV transfers are
sampled (by the simulator).

Artifact (CACHEGEN.md §3.2, `src/utils.py:config_selection`): each chunk gets an equal share
SLO / n_chunks; levels are tried best to worst and the first whose transfer time under the chunk's
**true** bandwidth is below the share wins; if none fits, TEXT. The artifact charged TEXT a fixed
0.2 s; kvcast charges the modelled prefill instead (the receiver model is the same for every
controller). The true bandwidth comes from the simulator's Foresight: this rule sees the future,
as the released code did, and is labelled so.
"""

from __future__ import annotations

import numpy as np

from .base import TEXT, NeedsForesight, Observation
from .registry import register


class CacheGenPaper:
    def __init__(self, initial_throughput_bps: float = 1e9) -> None:
        if initial_throughput_bps <= 0:
            raise ValueError("initial_throughput_bps must be > 0")
        self.initial_throughput_bps = float(initial_throughput_bps)
        self.name = "cachegen"

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> str:
        bw = (
            obs.past_throughputs_bps[-1]
            if obs.past_throughputs_bps
            else self.initial_throughput_bps
        )
        choice = obs.levels[-1]
        for level in obs.levels:
            if sum(obs.next_sizes[level]) * 8.0 / bw <= obs.budget_left_s:
                choice = level
                break
        if not obs.past_throughputs_bps:
            return choice  # no measurement yet: send KV to measure the link before judging TEXT
        send_s = obs.next_sizes[choice][0] * 8.0 / bw
        if obs.text_time_s[0] < send_s:
            return TEXT
        return choice


class CacheGenArtifact(NeedsForesight):
    """Uses the true per-chunk bandwidth (foresight), as the released code did."""

    def __init__(self) -> None:
        self.name = "cachegen-artifact"

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> str:
        share = obs.slo_s / obs.n_chunks
        sizes = np.array([obs.next_sizes[lv][0] for lv in obs.levels], dtype=float)
        start = np.full(sizes.shape, obs.now_s)
        times = self._fs().transfer_times_s(obs.request_id, obs.chunk_index, sizes, start)
        for level, t in zip(obs.levels, times, strict=True):
            if t < share:
                return level
        return TEXT


@register(
    "cachegen",
    "CacheGen paper: last throughput, best level whose remaining bytes fit the budget, TEXT if faster",
)
def _paper(initial_throughput_bps: float = 1e9) -> CacheGenPaper:
    return CacheGenPaper(initial_throughput_bps)


@register(
    "cachegen-artifact",
    "CacheGen released code: SLO/n per chunk, TRUE per-chunk bandwidth (sees the future)",
)
def _artifact() -> CacheGenArtifact:
    return CacheGenArtifact()
