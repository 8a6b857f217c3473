"""The offline oracle: it KNOWS THE TRACE (the simulator's Foresight) and plans the whole request.

Dynamic programming over chunks. A partial plan's state is (quality so far, time the link is free
for the next chunk, time the GPU finishes the last planned chunk); both times only grow, and a
state that is no better in quality and no earlier on both clocks than another is dropped (exact
Pareto pruning, no discretisation). Plans whose GPU clock already passes the deadline are dropped.
Among complete plans that meet the SLO (finish + one decode step <= arrival + SLO) it takes the
highest token-weighted quality (ties: earliest finish); if none meets it, the earliest finish.

The model of the future is the simulator's own for a request alone: the sender starts each chunk
(after the per-chunk overhead) when the previous one has arrived, the link time comes from the
Foresight, the GPU decodes (or prefills TEXT) chunks in order after they arrive. With one request
at a time this is exact, so the oracle is an upper bound on quality-within-SLO for every
controller choosing among the same options (every profile level and TEXT). When requests share the
link or the GPU, the oracle does not foresee the others: it replans whenever the world departs
from its plan, and is then not a bound (it can lose to simpler rules).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .base import TEXT, NeedsForesight, Observation
from .registry import register

_EPS = 1e-9


class Oracle(NeedsForesight):
    def __init__(self) -> None:
        self.name = "oracle"
        self._plan: dict[int, tuple[str, ...]] = {}
        self._expect: dict[int, tuple[float, float]] = {}

    def reset(self, request_id: int) -> None:
        self._plan.pop(request_id, None)
        self._expect.pop(request_id, None)

    def choose(self, obs: Observation) -> str:
        rid = obs.request_id
        plan = self._plan.get(rid)
        expect = self._expect.get(rid)
        gpu_free = obs.now_s + obs.gpu_queue_s
        if (
            plan is None
            or expect is None
            or abs(expect[0] - obs.now_s) > _EPS
            or abs(expect[1] - gpu_free) > _EPS
            or len(plan) != obs.chunks_left
        ):
            plan = self.plan(obs)
        self._plan[rid] = plan[1:]
        self._expect[rid] = self._expected_after_first(obs, plan[0], gpu_free)
        return plan[0]

    # The state the simulator should be in when the next chunk is decided, if the plan holds.
    def _expected_after_first(
        self, obs: Observation, option: str, gpu_free: float
    ) -> tuple[float, float]:
        link_t, gpu_t = self._step(obs, 0, option, obs.now_s, gpu_free)
        return link_t, gpu_t

    def _step(
        self, obs: Observation, k: int, option: str, link_t: float, gpu_t: float
    ) -> tuple[float, float]:
        start = link_t + obs.per_chunk_overhead_s
        if option == TEXT:
            nbytes, work = obs.text_sizes[k], obs.text_time_s[k]
        else:
            nbytes, work = obs.next_sizes[option][k], obs.decode_time_s[option][k]
        arrive = start + self._fs().transfer_time_s(
            obs.request_id, obs.chunk_index + k, nbytes, start
        )
        return arrive, max(arrive, gpu_t) + work

    def plan(self, obs: Observation) -> tuple[str, ...]:
        deadline = obs.now_s - obs.elapsed_s + obs.slo_s
        plan = self._dp(obs, deadline)
        if plan is None:
            plan = self._dp(obs, None)
        if plan is None:  # the link never delivers again: nothing can finish; send the cheapest
            plan = (obs.levels[-1],) * obs.chunks_left
        return plan

    def _dp(self, obs: Observation, deadline: float | None) -> tuple[str, ...] | None:
        """Forward DP over chunks with exact Pareto pruning; vectorised over states x options."""
        options = [*obs.next_sizes.keys(), TEXT]
        n_opt = len(options)
        m = obs.chunks_left
        cq = obs.chunk_quality or {k: (v,) * m for k, v in obs.quality.items()}
        tokens = obs.chunk_tokens or (1,) * m
        size = np.array(
            [obs.text_sizes if o == TEXT else obs.next_sizes[o] for o in options], dtype=float
        )
        work = np.array(
            [obs.text_time_s if o == TEXT else obs.decode_time_s[o] for o in options], dtype=float
        )
        gain = (
            np.array([cq[o] for o in options], dtype=float) * np.array(tokens, dtype=float)[None, :]
        )
        fs = self._fs()
        q = np.zeros(1)
        link = np.array([obs.now_s])
        gpu = np.array([obs.now_s + obs.gpu_queue_s])
        parents: list[np.ndarray] = []
        choices: list[np.ndarray] = []
        for k in range(m):
            start = np.repeat(link + obs.per_chunk_overhead_s, n_opt)
            nbytes = np.tile(size[:, k], link.size)
            arrive = start + fs.transfer_times_s(obs.request_id, obs.chunk_index + k, nbytes, start)
            g = np.maximum(arrive, np.repeat(gpu, n_opt)) + np.tile(work[:, k], link.size)
            qq = np.repeat(q, n_opt) + np.tile(gain[:, k], link.size)
            keep = np.isfinite(arrive)
            if deadline is not None:
                keep &= g + obs.decode_step_s <= deadline + _EPS
            idx = np.flatnonzero(keep)
            if idx.size == 0:
                return None
            idx = idx[_pareto(qq[idx], arrive[idx], g[idx])]
            parents.append(idx // n_opt)
            choices.append(idx % n_opt)
            q, link, gpu = qq[idx], arrive[idx], g[idx]
        best = (
            int(np.lexsort((gpu, -q))[0]) if deadline is not None else int(np.lexsort((-q, gpu))[0])
        )
        plan = []
        for k in range(m - 1, -1, -1):
            plan.append(options[int(choices[k][best])])
            best = int(parents[k][best])
        return tuple(reversed(plan))


@njit(cache=True)
def _undominated(link: np.ndarray, gpu: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """keep[i]: no kept state before i is no later on both clocks (inputs in priority order)."""
    n = link.size
    keep = np.zeros(n, dtype=np.bool_)
    kl = np.empty(n)
    kg = np.empty(n)
    m = 0
    for i in range(n):
        ok = True
        for j in range(m):
            if kl[j] <= link[i] and kg[j] <= gpu[i]:
                ok = False
                break
        if ok:
            keep[i] = True
            kl[m] = link[i]
            kg[m] = gpu[i]
            m += 1
    return keep


def _pareto(q: np.ndarray, link: np.ndarray, gpu: np.ndarray) -> np.ndarray:
    """Indices of the states no other state beats or ties on quality and on both clocks.

    Visited best quality first (then earliest clocks), a state is dropped when a kept one is no
    later on both clocks (a compiled scan: this is the oracle's hot loop)."""
    order = np.lexsort((gpu, link, -q))
    keep = _undominated(np.ascontiguousarray(link[order]), np.ascontiguousarray(gpu[order]))
    return order[keep]


@register("oracle", "offline optimum that KNOWS THE TRACE: DP for the best quality meeting the SLO")
def _oracle() -> Oracle:
    return Oracle()
