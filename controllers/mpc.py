"""RobustMPC (Yin et al. SIGCOMM'15, as in Pensieve's `test/mpc.py`) for a TTFT deadline.

Throughput prediction exactly as RobustMPC: the harmonic mean of the last 5 throughput samples,
divided by 1 + the largest relative prediction error |predicted - actual| / actual of the last 5
chunks. Then every plan of the next `horizon` chunks (levels and TEXT; 5 by default) is scored

    sum of the planned chunks' quality (token-weighted, in chunks) - miss_penalty * lateness / SLO

where lateness is how far the projected finish overshoots the budget left. The projection is a
two-lane pipeline, since transfers and GPU work overlap: the link lane (the planned chunks' bytes
over the robust estimate, chunks beyond the horizon at the cheapest level) and the GPU lane (the
queue already on the receiver, then each planned chunk's decode or TEXT prefill); the request
ends when the slower lane does, plus the final decode step. The first step of the best plan is
applied. The video reward's rebuffer penalty becomes the deadline penalty, scale-free (default
100 chunks of quality per SLO of lateness: missing by 1% of the SLO outweighs any level change).
Before the first throughput sample TEXT is left out, so that a KV chunk measures the link. Plans
are scored as one vectorised numpy pass (16,807 plans for 6 levels and TEXT).
"""

from __future__ import annotations

import numpy as np

from .base import TEXT, Observation
from .registry import register


def _outer_sum(per_chunk: np.ndarray) -> np.ndarray:
    """[h, n_opt] -> flat [n_opt ** h]: the sum over chunks for every plan, plans in C order."""
    h, n = per_chunk.shape
    total = np.zeros(())
    for k in range(h):
        total = total[..., None] + per_chunk[k].reshape((1,) * k + (n,))
    return total.reshape(-1)


class RobustMPC:
    def __init__(
        self,
        horizon: int = 5,
        window: int = 5,
        miss_penalty: float = 100.0,
        initial_throughput_bps: float = 1e9,
        allow_text: bool = True,
    ) -> None:
        if horizon < 1 or window < 1 or miss_penalty < 0 or initial_throughput_bps <= 0:
            raise ValueError("horizon, window >= 1; miss_penalty >= 0; initial_throughput_bps > 0")
        self.horizon = int(horizon)
        self.window = int(window)
        self.penalty = float(miss_penalty)
        self.initial = float(initial_throughput_bps)
        self.allow_text = bool(allow_text)
        self.name = "mpc"
        self.reset(-1)

    def reset(self, request_id: int) -> None:
        self._pred: float | None = None
        self._n_seen = 0
        self._errors: list[float] = []

    def predict_bps(self, samples: tuple[float, ...]) -> float:
        """Robust throughput estimate; updates the error history with samples new since last call."""
        if len(samples) > self._n_seen and self._pred is not None:
            actual = samples[-1]
            self._errors.append(abs(self._pred - actual) / actual)
        self._n_seen = len(samples)
        recent = [s for s in samples[-self.window :] if s > 0]
        if not recent:
            return self.initial
        hm = len(recent) / sum(1.0 / s for s in recent)
        self._pred = hm
        max_err = max(self._errors[-self.window :], default=0.0)
        return hm / (1.0 + max_err)

    def choose(self, obs: Observation) -> str:
        bw = self.predict_bps(obs.past_throughputs_bps)
        # TEXT only once the link has been measured: a KV chunk must probe it first
        with_text = self.allow_text and bool(obs.past_throughputs_bps)
        options = list(obs.levels) + ([TEXT] if with_text else [])
        h = min(self.horizon, obs.chunks_left)
        nominal = max(obs.chunk_tokens) if obs.chunk_tokens else 1
        weights = (
            np.array(obs.chunk_tokens[:h], dtype=float) / nominal
            if obs.chunk_tokens
            else np.ones(h)
        )
        link = np.empty((h, len(options)))  # time on the link per chunk and option
        gpu = np.empty((h, len(options)))  # time on the receiver GPU
        qual = np.empty((h, len(options)))
        for j, opt in enumerate(options):
            if opt == TEXT:
                sizes = obs.text_sizes[:h] if obs.text_sizes else (0,) * h
                link[:, j] = np.array(sizes, dtype=float) * 8.0 / bw
                gpu[:, j] = obs.text_time_s[:h]
                qual[:, j] = obs.quality[TEXT]
            else:
                link[:, j] = np.array(obs.next_sizes[opt][:h], dtype=float) * 8.0 / bw
                gpu[:, j] = obs.decode_time_s[opt][:h] if obs.decode_time_s else 0.0
                qual[:, j] = obs.quality[opt]
        link += obs.per_chunk_overhead_s
        cheapest = obs.levels[-1]
        rest = obs.chunks_left - h
        tail_link = sum(obs.next_sizes[cheapest][h:]) * 8.0 / bw + obs.per_chunk_overhead_s * rest
        tail_gpu = sum(obs.decode_time_s[cheapest][h:]) if obs.decode_time_s else 0.0
        # every plan at once: axis k of the broadcast sums is chunk k's option (n_opt ** h plans)
        t_link = _outer_sum(link) + tail_link
        t_gpu = obs.gpu_queue_s + _outer_sum(gpu) + tail_gpu
        # transfers and GPU work overlap (pipeline): the request ends when the slower lane does
        total_t = np.maximum(t_link, t_gpu) + obs.decode_step_s
        total_q = _outer_sum(qual * weights[:, None])
        late = np.maximum(0.0, total_t - obs.budget_left_s)
        score = total_q - self.penalty * late / obs.slo_s
        best = int(np.argmax(score))  # C order: the first chunk's option is the slowest axis
        return options[best // len(options) ** (h - 1)]


@register(
    "mpc", "RobustMPC: harmonic-mean throughput / (1 + max recent error), horizon-5 plan search"
)
def _mpc(
    horizon: int = 5,
    window: int = 5,
    miss_penalty: float = 100.0,
    initial_throughput_bps: float = 1e9,
    allow_text: bool = True,
) -> RobustMPC:
    return RobustMPC(horizon, window, miss_penalty, initial_throughput_bps, allow_text)
