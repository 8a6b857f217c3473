"""CacheGen's adaptation rules: the paper's (SIGCOMM'24) and the released artifact's.

Paper (../shared/reference/CACHEGEN.md §3.1), and the choices kvcast makes where it is silent:

- **Estimate.** The measured throughput of the previous chunk, assumed for the rest of the
  transfer. For a request's first chunk, the last throughput measured on the link by earlier
  requests (the sender keeps measuring the same link); only before the link has ever been
  measured, `initial_throughput_bps` (an assumption: 1 Gbps, the log-middle of the paper's
  0.1-10 Gbps range). TEXT transfers (a few KB of token ids) say nothing about bandwidth, so only
  KV transfers are sampled.
- **Fit check.** The paper's constraint is delay <= SLO. kvcast checks it on the whole pipeline
  the receiver runs (`pipeline.finish_times`): every remaining chunk sent at the level at that
  estimate plus the one-way delay, each decoded after it arrives, behind the GPU queue, then the
  final decode step. The paper's listing counts transfer time only; on a GPU whose decoding hides
  behind the transfer both agree.
- **Level.** The highest-quality level of the adaptive ladder (the size-vs-quality frontier) whose
  remaining chunks fit.
- **TEXT.** When recomputing this chunk from text finishes the request sooner than sending it at
  that level (the rest at that level), TEXT. Never for a request's first chunk: the estimate is
  the previous chunk's throughput, so every request sends a KV chunk first and measures the link
  (TEXT transfers measure nothing; without this, one slow sample followed by TEXT everywhere
  would never be revised).
- **Nothing fits.** The paper does not say. kvcast takes whichever of the cheapest level and TEXT
  (for this chunk, the rest at the cheapest level) projects the earlier first token: once the
  deadline cannot be met at the estimate, the best chance of meeting it is to finish as early as
  possible.

Artifact (CACHEGEN.md §3.2, `src/utils.py:config_selection`): each chunk gets an equal share
SLO / n_chunks; levels are tried best to worst and the first whose transfer time under the chunk's
**true** bandwidth is below the share wins; if none fits, TEXT. The artifact charged TEXT a fixed
0.2 s; kvcast charges the modelled prefill instead (the receiver model is the same for every
controller). The true bandwidth comes from the simulator's Foresight: this rule sees the future,
as the released code did, and is labelled so.
"""

from __future__ import annotations

import math

import numpy as np

from .base import TEXT, Decision, NeedsForesight, Observation
from .pipeline import finish_times, gpu_free_s, option_costs


def last_throughput_bps(obs: Observation) -> float | None:
    """The last KV-chunk throughput measured on the link (this request's, else earlier ones')."""
    if obs.past_throughputs_bps:
        return obs.past_throughputs_bps[-1]
    if obs.link_history is not None and len(obs.link_history):
        return float(obs.link_history.throughputs_bps[-1])
    return None


class CacheGenPaper:
    def __init__(self, initial_throughput_bps: float = 1e9) -> None:
        if initial_throughput_bps <= 0:
            raise ValueError("initial_throughput_bps must be > 0")
        self.initial_throughput_bps = float(initial_throughput_bps)
        self.name = "cachegen"

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> Decision:
        measured = last_throughput_bps(obs)
        bw = measured if measured is not None else self.initial_throughput_bps
        may_text = obs.chunk_index > 0  # a request's first chunk measures the link
        levels = list(obs.levels)
        options = [*levels, TEXT]
        nbytes, work = option_costs(obs, options)
        link = obs.link_delay_s + nbytes * 8.0 / bw  # [option, chunk]
        arrival = obs.now_s - obs.elapsed_s
        gpu_free = gpu_free_s(obs)

        def ttft(first: np.ndarray, rest: np.ndarray) -> np.ndarray:
            """Projected first-token times of plans: this chunk as option `first[p]`, the
            others as `rest[p]` (one projection for every plan)."""
            lk = np.concatenate([link[first, :1], link[rest, 1:]], axis=1)
            gp = np.concatenate([work[first, :1], work[rest, 1:]], axis=1)
            end = finish_times(
                obs.now_s, gpu_free, lk, gp, obs.per_chunk_overhead_s, obs.decode_step_s
            )
            return end - arrival

        text = len(options) - 1
        every_level = np.arange(len(levels))
        fits = np.flatnonzero(ttft(every_level, every_level) <= obs.slo_s)  # best quality first
        # nothing fits: whichever of the cheapest level and TEXT gives the earliest first token
        chosen = int(fits[0]) if fits.size else len(levels) - 1
        at_level, as_text = (float(t) for t in ttft(np.array([chosen, text]), np.full(2, chosen)))
        if may_text and as_text < at_level:
            return Decision(TEXT, est_bandwidth_bps=bw, est_ttft_s=as_text)
        return Decision(levels[chosen], est_bandwidth_bps=bw, est_ttft_s=at_level)


class CacheGenArtifact(NeedsForesight):
    """Uses the true per-chunk bandwidth (foresight), as the released code did."""

    def __init__(self) -> None:
        self.name = "cachegen-artifact"

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> Decision:
        share = obs.slo_s / obs.n_chunks
        sizes = np.array([obs.next_sizes[lv][0] for lv in obs.levels], dtype=float)
        start = np.full(sizes.shape, obs.now_s)
        times = self._fs().transfer_times_s(obs.request_id, obs.chunk_index, sizes, start)
        for level, size, t in zip(obs.levels, sizes, times, strict=True):
            if t < share:
                bw = size * 8.0 / t if t > 0 else math.inf
                return Decision(level, est_bandwidth_bps=bw)
        return Decision(TEXT)


def cachegen_paper(initial_throughput_bps: float = 1e9) -> CacheGenPaper:
    return CacheGenPaper(initial_throughput_bps)


def cachegen_artifact() -> CacheGenArtifact:
    return CacheGenArtifact()
