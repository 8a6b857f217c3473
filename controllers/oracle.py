"""The bound: an offline oracle that KNOWS THE TRACE and maximises the run's objective exactly.

It plans the whole request by dynamic programming over chunks. A partial plan's state is (quality
so far, time the link is free for the next chunk, time the GPU finishes the last planned chunk);
both times only grow, and a state that is no better in quality and no earlier on both clocks than
another is dropped (exact Pareto pruning, no discretisation). The objective (`kvcast.objective`)
never rises when a request is later or its quality lower, so the best plan survives the pruning:
among the complete plans it takes the one of highest utility (ties: earliest first token, then
higher quality). With the default objective (a late request is worth 0) states whose GPU clock
already passes the deadline are dropped as they appear, and if no plan meets the SLO the
earliest first token is taken.

Options: every level of the codec profile (not only the adaptive ladder) and TEXT, so the bound
covers every choice any controller can make, `fixed:<level>` included. Decisions use each level's
expected quality, as every controller's do.

The model of the future is the simulator's own for a request alone: the sender starts each chunk
(after the per-chunk overhead) when the previous one has arrived, the link time comes from the
Foresight, the GPU decodes (or prefills TEXT) chunks in order after they arrive. The runner gives
the oracle every request alone on the link and the GPU (kvcast.sim.runner), even in scenarios
where requests share them: contention can only delay a request, so the oracle's utility on each
request is an upper bound on every controller's, shared or not.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kvcast.objective import on_time

from .base import TEXT, Decision, NeedsForesight, Observation
from .importance import importance_outcome, tier_sets
from .pipeline import gpu_free_s, token_weights

_REPLAN_S = 1e-9  # the world departed from the plan by more than this: plan again


class Oracle(NeedsForesight):
    is_bound = True  # the runner gives it every request alone on the link and the GPU

    def __init__(self) -> None:
        self.name = "oracle"
        self._plan: dict[int, tuple[str, ...]] = {}
        self._expect: dict[int, tuple[float, float]] = {}
        self._ttft: dict[int, float] = {}

    def reset(self, request_id: int) -> None:
        self._plan.pop(request_id, None)
        self._expect.pop(request_id, None)
        self._ttft.pop(request_id, None)

    def importance_tiers_for(self, obs: Observation) -> tuple[str, ...] | None:
        """At a request's arrival: stream it by importance tiers if that is worth more than the
        best per-chunk plan (the profile's tier levels, `kvcast.controllers.importance`), so the
        bound covers importance-first streaming too. The plan is kept for `choose`."""
        rid = obs.request_id
        start = obs.now_s - obs.elapsed_s  # the request's arrival
        plan, end = self.plan(obs)
        self._plan[rid] = plan
        self._expect[rid] = (obs.now_s, gpu_free_s(obs))
        self._ttft[rid] = end - start
        sets = tier_sets(list(obs.next_sizes))
        if not sets:
            return None
        fs = self._fs()

        def transfer_s(i: int, nbytes: int, at: float) -> float:
            return fs.transfer_time_s(rid, obs.chunk_index + i, nbytes, at)

        weights = token_weights(obs)
        plan_q = obs.quality_so_far + float(
            sum(w * obs.quality[o] for w, o in zip(weights, plan, strict=True))
        )
        best = (obs.objective.utility(plan_q, end - start, obs.slo_s), -(end - start), None)
        for tiers in sets:
            t_end, q = importance_outcome(obs, tiers, transfer_s)
            cand = (obs.objective.utility(q, t_end - start, obs.slo_s), -(t_end - start), tiers)
            if cand[:2] > best[:2]:
                best = cand
        return best[2]

    def choose(self, obs: Observation) -> Decision:
        rid = obs.request_id
        plan = self._plan.get(rid)
        expect = self._expect.get(rid)
        gpu_free = gpu_free_s(obs)
        if (
            plan is None
            or expect is None
            or abs(expect[0] - obs.now_s) > _REPLAN_S
            or abs(expect[1] - gpu_free) > _REPLAN_S
            or len(plan) != obs.chunks_left
        ):
            plan, end = self.plan(obs)
            self._ttft[rid] = end - (obs.now_s - obs.elapsed_s)
        self._plan[rid] = plan[1:]
        self._expect[rid] = self._step(obs, 0, plan[0], obs.now_s, gpu_free)
        return Decision(plan[0], est_ttft_s=self._ttft[rid])

    def _step(
        self, obs: Observation, k: int, option: str, link_t: float, gpu_t: float
    ) -> tuple[float, float]:
        """(link free, GPU done) after chunk k is sent as `option` (the state the simulator should
        be in when the next chunk is decided, if the plan holds)."""
        start = link_t + obs.per_chunk_overhead_s
        if option == TEXT:
            nbytes, work = obs.text_sizes[k], obs.text_time_s[k]
        else:
            nbytes, work = obs.next_sizes[option][k], obs.decode_time_s[option][k]
        arrive = start + self._fs().transfer_time_s(
            obs.request_id, obs.chunk_index + k, nbytes, start
        )
        # the next decision comes when the sender learns of the arrival
        return arrive + obs.ack_delay_s, max(arrive, gpu_t) + work

    def plan(self, obs: Observation) -> tuple[tuple[str, ...], float]:
        """The plan of highest utility for the remaining chunks, and its first-token time."""
        if obs.objective.late_is_worthless:
            found = self._dp(obs, obs.deadline_s)
            if found is None:  # nothing meets the SLO: every plan is worth 0; the earliest wins
                found = self._dp(obs, None)
        else:
            found = self._dp(obs, None)
        if found is None:  # the link never delivers again: nothing can finish; send the cheapest
            return (obs.levels[-1],) * obs.chunks_left, float("inf")
        return found

    def _dp(self, obs: Observation, deadline: float | None) -> tuple[tuple[str, ...], float] | None:
        """Forward DP over chunks with exact Pareto pruning; vectorised over states x options.
        With a deadline, plans that miss it are dropped as soon as they do."""
        options = [*obs.next_sizes.keys(), TEXT]
        m = obs.chunks_left
        weights = token_weights(obs)
        size = np.array(
            [obs.text_sizes if o == TEXT else obs.next_sizes[o] for o in options], dtype=float
        )
        work = np.array(
            [obs.text_time_s if o == TEXT else obs.decode_time_s[o] for o in options], dtype=float
        )
        gain = np.array([obs.quality[o] for o in options], dtype=float)[:, None] * weights[None, :]
        fs = self._fs()
        q = np.full(1, obs.quality_so_far)
        link = np.array([obs.now_s])
        gpu = np.array([obs.now_s + obs.gpu_queue_s])
        parents: list[np.ndarray] = []
        choices: list[np.ndarray] = []
        for k in range(m):
            opts = _useful_options(size[:, k], work[:, k], gain[:, k])
            n_opt = opts.size
            ack = obs.ack_delay_s if k > 0 else 0.0  # the sender waits to learn of the last arrival
            start = np.repeat(link + ack + obs.per_chunk_overhead_s, n_opt)
            nbytes = np.tile(size[opts, k], link.size)
            arrive = start + fs.transfer_times_s(obs.request_id, obs.chunk_index + k, nbytes, start)
            g = np.maximum(arrive, np.repeat(gpu, n_opt)) + np.tile(work[opts, k], link.size)
            qq = np.repeat(q, n_opt) + np.tile(gain[opts, k], link.size)
            keep = np.isfinite(arrive)
            if deadline is not None:
                keep &= on_time(g + obs.decode_step_s, deadline)
            idx = np.flatnonzero(keep)
            if idx.size == 0:
                return None
            idx = idx[_pareto(qq[idx], arrive[idx], g[idx])]
            parents.append(idx // n_opt)
            choices.append(opts[idx % n_opt])
            q, link, gpu = qq[idx], arrive[idx], g[idx]
        end = gpu + obs.decode_step_s
        ttft = end - (obs.now_s - obs.elapsed_s)
        util = obs.objective.utilities(q, ttft, obs.slo_s)
        best = int(np.lexsort((-q, ttft, -util))[0])
        best_end = float(end[best])
        plan = []
        for k in range(m - 1, -1, -1):
            plan.append(options[int(choices[k][best])])
            best = int(parents[k][best])
        return tuple(reversed(plan)), best_end


def _useful_options(size: np.ndarray, work: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """The options of one chunk that some optimal plan may need: an option with no fewer bytes,
    no less GPU work and no more quality than another is never better (its chunk arrives no
    sooner, the GPU finishes no sooner, the plan's quality is no higher, and the link and GPU
    clocks it leaves the next chunks are no earlier), so it is dropped; of identical options
    the first is kept (as the state pruning would keep it)."""
    n = size.size
    as_good = (size[None, :] <= size[:, None]) & (work[None, :] <= work[:, None])
    as_good &= gain[None, :] >= gain[:, None]  # [o, p]: option p is at least as good as o
    better = (size[None, :] < size[:, None]) | (work[None, :] < work[:, None])
    better |= gain[None, :] > gain[:, None]
    earlier = np.arange(n)[None, :] < np.arange(n)[:, None]
    return np.flatnonzero(~(as_good & (better | earlier)).any(axis=1))


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


def oracle_bound() -> Oracle:
    return Oracle()
