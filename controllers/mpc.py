"""RobustMPC (Yin et al. SIGCOMM'15, as in Pensieve's `test/mpc.py`) for a first-token deadline.

Throughput prediction exactly as RobustMPC: the harmonic mean of the last `window` throughput
samples on the link, divided by 1 + the largest relative error |predicted - actual| / actual of
the request's last `window` predictions. A request is a session: its prediction errors start
afresh, as a video session's do; the samples are the link's (the sender keeps measuring the same
link, across requests), so a request's first chunk is planned on what the link did last, not on
a constant. `initial_throughput_bps` is used only before the link has ever been measured.

Plans: every choice of option (the adaptive ladder's levels and TEXT) for the next `horizon`
chunks, the last choice held for the chunks beyond (so a plan covers the whole request). Each is
projected through the simulator's own pipeline (`pipeline.finish_times`: link, then GPU, chunk by
chunk, the GPU queue ahead, TEXT prefill, the final decode step) at the robust estimate, and
scored by the run's objective (`kvcast.objective`): with the default, the best quality among the
plans projected to meet the SLO, else the earliest projected first token. The first step of the
best plan is applied. Given the true bandwidth its projected TTFT is the simulator's.
A request's first chunk is never TEXT: every request measures the link with a KV chunk (TEXT
transfers measure nothing, and a link judged slow once would otherwise never be measured again).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .base import TEXT, Decision, Observation
from .pipeline import finish_times, gpu_free_s, option_costs, token_weights


@lru_cache(maxsize=64)
def plan_table(n_options: int, horizon: int, n_chunks: int) -> np.ndarray:
    """[n_options ** horizon, n_chunks] option index per chunk: every choice for the first
    `horizon` chunks, the last one held to the end; plans in C order (chunk 0 slowest)."""
    heads = np.array(list(itertools.product(range(n_options), repeat=horizon)), dtype=np.int64)
    tail = np.repeat(heads[:, -1:], n_chunks - horizon, axis=1)
    out = np.concatenate([heads, tail], axis=1)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=64)
def plan_cells(n_options: int, horizon: int, n_chunks: int) -> np.ndarray:
    """`plan_table` as flat indices into an [option, chunk] table (`np.take` of these gathers
    every plan's per-chunk figures faster than indexing by plan and chunk)."""
    out = plan_table(n_options, horizon, n_chunks) * n_chunks + np.arange(n_chunks)
    out.flags.writeable = False
    return out


def best_plan(
    obs: Observation, options: list[str], bandwidth_bps: float, horizon: int
) -> tuple[int, np.ndarray, float]:
    """(row, plan table, projected first-token time) of the plan of highest utility at a constant
    `bandwidth_bps`; ties: earliest first token, then higher quality."""
    m = obs.chunks_left
    nbytes, work = option_costs(obs, options)
    quality = np.array([obs.quality[o] for o in options])
    plans = plan_table(len(options), min(horizon, m), m)
    cells = plan_cells(len(options), min(horizon, m), m)
    # per option and chunk first, then gathered per plan: the same figures, fewer plan-sized arrays
    link = np.take(obs.link_delay_s + nbytes * 8.0 / bandwidth_bps, cells)
    finish = finish_times(
        obs.now_s,
        gpu_free_s(obs),
        link,
        np.take(work, cells),
        obs.per_chunk_overhead_s,
        obs.decode_step_s,
    )
    gain = quality[:, None] * token_weights(obs)[None, :]
    q = obs.quality_so_far + np.take(gain, cells).sum(axis=1)
    ttft = finish - (obs.now_s - obs.elapsed_s)
    util = obs.objective.utilities(q, ttft, obs.slo_s)
    row = _first_best(util, ttft, q)
    return row, plans, float(ttft[row])


def _first_best(util: np.ndarray, ttft: np.ndarray, q: np.ndarray) -> int:
    """The first plan of highest utility, then earliest first token, then highest quality (what
    `np.lexsort((-q, ttft, -util))[0]` gives, without sorting every plan)."""
    if np.isnan(util).any() or np.isnan(ttft).any() or np.isnan(q).any():
        return int(np.lexsort((-q, ttft, -util))[0])
    cand = np.flatnonzero(util == util.max())
    if cand.size > 1:
        t = ttft[cand]
        cand = cand[t == t.min()]
    if cand.size > 1:
        qq = q[cand]
        cand = cand[qq == qq.max()]
    return int(cand[0])


@dataclass
class _Session:
    """RobustMPC's state for one request (a video session's, in the original)."""

    pred: float | None = None  # the last harmonic-mean prediction
    n_seen: int = 0  # link samples already compared with a prediction
    errors: list[float] = field(default_factory=list)


class RobustMPC:
    def __init__(
        self, horizon: int = 5, window: int = 5, initial_throughput_bps: float = 1e9
    ) -> None:
        if horizon < 1 or window < 1 or initial_throughput_bps <= 0:
            raise ValueError("horizon, window >= 1; initial_throughput_bps > 0")
        self.horizon = int(horizon)
        self.window = int(window)
        self.initial = float(initial_throughput_bps)
        self.name = "mpc"
        self._sessions: dict[int, _Session] = {}

    def reset(self, request_id: int) -> None:
        self._sessions[request_id] = _Session()

    def predict_bps(self, samples: np.ndarray | tuple[float, ...], request_id: int = -1) -> float:
        """Robust estimate from the link's samples so far (oldest first); records the error of the
        request's previous prediction against every sample new since its last call."""
        st = self._sessions.setdefault(request_id, _Session())
        samples = np.asarray(samples, dtype=np.float64)
        if st.pred is not None:
            for actual in samples[st.n_seen :]:
                if actual > 0:
                    st.errors.append(abs(st.pred - actual) / actual)
        st.n_seen = len(samples)
        recent = samples[-self.window :]
        recent = recent[recent > 0]
        if recent.size == 0:
            return self.initial
        hm = recent.size / float(np.sum(1.0 / recent))
        st.pred = hm
        max_err = max(st.errors[-self.window :], default=0.0)
        return hm / (1.0 + max_err)

    def choose(self, obs: Observation) -> Decision:
        samples = obs.link_history.throughputs_bps if obs.link_history is not None else ()
        bw = self.predict_bps(samples, obs.request_id)
        options = list(obs.levels) + ([TEXT] if obs.chunk_index > 0 else [])
        row, plans, ttft = best_plan(obs, options, bw, self.horizon)
        if obs.chunks_left == 1:
            self._sessions.pop(obs.request_id, None)  # the request's last decision
        return Decision(options[int(plans[row, 0])], est_bandwidth_bps=bw, est_ttft_s=ttft)


def robust_mpc(horizon: int = 5, window: int = 5, initial_throughput_bps: float = 1e9) -> RobustMPC:
    return RobustMPC(horizon, window, initial_throughput_bps)
