"""`stochastic`: plans on a predicted *distribution* of chunk throughputs for the highest expected
utility (Fugu's idea, a distribution rather than a point estimate, applied to a TTFT deadline).

At each chunk:
1. **Predict.** `bandwidth.fit` learns the link's behaviour from every KV-chunk throughput measured
   on it so far (all requests): its mean level, how much of a chunk's throughput is shared with
   its neighbours, how fast that drifts, and the shape of its tails. `bandwidth.sample_paths`
   draws `paths` possible futures of the remaining chunks' throughputs from it (the same draws for
   every plan, so plans are compared on the same futures).
2. **Plan.** Candidate plans for the remaining chunks: this chunk at any option (every level of
   the adaptive ladder, or TEXT), then `t` chunks as TEXT (0..all; recomputing early overlaps the
   prefill with the transfers that follow), then the rest at one ladder level. Each plan runs
   through the simulator's pipeline (link with the one-way delay, then the GPU behind its queue,
   TEXT prefill, the final decode step) on every sampled future. The GPU work the other requests'
   plans still have to queue is counted ahead of this request's, and a plan that recomputes pays
   for the delay its prefill puts ahead of theirs on the shared FIFO GPU (their chance of meeting
   the SLO lost, times their quality).
3. **Decide.** Utility under the run's objective (`kvcast.objective`) on every future. A first
   step is valued with one step of recourse: the futures are grouped by this chunk's throughput
   (`groups`), the best continuation is taken per group, and the groups' mean is the step's
   expected utility; the best first step is sent (ties: higher probability of meeting the SLO,
   then earlier). With `min_p_on_time` set, in each group the best-quality continuation whose
   probability of meeting the SLO is at least that is preferred when one exists (a chance
   constraint, 1 - epsilon).

Plans are re-made at every chunk with the new measurements, so a plan only has to be right
about its first step. The decision records the bandwidth it expected (the median of its
futures for this chunk), the projected first-token time (mean over futures) and the probability
of meeting the SLO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from kvcast.objective import ON_TIME_TOLERANCE_S, on_time

from .bandwidth import fit, sample_paths
from .base import TEXT, Decision, Observation
from .pipeline import gpu_free_s, option_costs, token_weights
from .registry import register


@njit(cache=True)
def first_token_times(
    now: float,
    gpu_free: float,
    overhead: float,
    delay: float,
    step: float,
    bits: np.ndarray,  # [plans, chunks]
    work: np.ndarray,  # [plans, chunks]
    bw: np.ndarray,  # [paths, chunks]
) -> np.ndarray:  # pragma: no cover (compiled)
    """[plans, paths] first-token time (absolute) of every plan on every sampled future: the
    pipeline of `pipeline.finish_times`, compiled (this is the controller's hot loop)."""
    n_plans, m = bits.shape
    n_paths = bw.shape[0]
    out = np.empty((n_plans, n_paths))
    for p in range(n_plans):
        for k in range(n_paths):
            t = now
            g = gpu_free
            for c in range(m):
                t += overhead + delay + bits[p, c] / bw[k, c]
                if t > g:
                    g = t
                g += work[p, c]
            out[p, k] = g + step
    return out


def candidate_plans(n_levels: int, m: int) -> np.ndarray:
    """[plans, m] option indices (0..n_levels-1: ladder levels, n_levels: TEXT): first chunk any
    option, then t TEXT chunks (0..m-1), then one level for the rest."""
    text = n_levels
    rows = []
    for first in range(n_levels + 1):
        for t in range(m):
            for rest in range(n_levels):
                if t == m - 1 and rest:
                    break  # no chunk left for `rest`: one plan is enough
                rows.append([first] + [text] * t + [rest] * (m - 1 - t))
    return np.array(rows, dtype=np.int64).reshape(-1, m)


@dataclass(frozen=True)
class _Commitment:
    gpu_work_s: float  # GPU seconds its plan still queues
    ends: np.ndarray  # its first-token times over the futures, sorted
    deadline_s: float
    quality: float


@register(
    "stochastic",
    "expected utility over a learned distribution of chunk throughputs (kvcast's own)",
)
class Stochastic:
    def __init__(
        self,
        paths: int = 256,
        window: int = 400,
        groups: int = 8,
        surprise: float = 0.05,
        min_p_on_time: float | None = None,
        prior_bps: float = 1e9,
        seed: int = 0,
    ) -> None:
        if paths < 8 or window < 2 or groups < 1 or prior_bps <= 0:
            raise ValueError("paths >= 8, window >= 2, groups >= 1, prior_bps > 0")
        if min_p_on_time is not None and not (0.0 < min_p_on_time <= 1.0):
            raise ValueError("min_p_on_time must be in (0, 1]")
        self.paths = int(paths)
        self.window = int(window)
        self.groups = int(groups)
        if not 0.0 <= surprise < 1.0:
            raise ValueError("surprise must be in [0, 1)")
        self.surprise = float(surprise)
        self.min_p_on_time = min_p_on_time
        self.prior_bps = float(prior_bps)
        self.seed = int(seed)
        self.name = "stochastic"
        # what each request in flight has committed to: its plan's GPU work still to queue and
        # its first-token times over the futures (to judge what delaying it would cost)
        self._plans: dict[int, _Commitment] = {}

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> Decision:
        m = obs.chunks_left
        levels = list(obs.levels)
        options = [*levels, TEXT]
        nbytes, work = option_costs(obs, options)
        quality = np.array([obs.quality[o] for o in options])
        plans = candidate_plans(len(levels), m)
        cols = np.arange(m)
        plan_q = obs.quality_so_far + (quality[plans] * token_weights(obs)).sum(axis=1)

        # the link's capacity: each sample times the transfers that shared the link with it
        hist = obs.link_history
        t_hist = hist.times_s[-self.window :] if hist is not None else np.empty(0)
        cap_hist = (
            hist.throughputs_bps[-self.window :] * hist.flows[-self.window :]
            if hist is not None
            else np.empty(0)
        )
        f = fit(t_hist, cap_hist, self.prior_bps)
        share = 1.0 + obs.other_transfers  # this request's share, if the others stay
        # when each remaining chunk would be on the link: paced at the mean level's speed
        mid = levels[len(levels) // 2]
        per_chunk = (
            obs.per_chunk_overhead_s
            + obs.link_delay_s
            + (np.asarray(obs.next_sizes[mid], dtype=np.float64) * 8.0 * share / np.exp(f.mu))
        )
        times = obs.now_s + np.cumsum(per_chunk) - per_chunk / 2.0
        rng = np.random.default_rng((self.seed, obs.request_id, obs.chunk_index))
        bw = sample_paths(f, times, self.paths, rng, cap_hist[cap_hist > 0], self.surprise) / share

        end = first_token_times(
            obs.now_s,
            gpu_free_s(obs) + self._others_gpu_s(obs),
            obs.per_chunk_overhead_s,
            obs.link_delay_s,
            obs.decode_step_s,
            np.ascontiguousarray(nbytes[plans, cols] * 8.0),
            np.ascontiguousarray(work[plans, cols]),
            bw,
        )
        arrival = obs.now_s - obs.elapsed_s
        util = obs.objective.utilities(plan_q[:, None], end - arrival, obs.slo_s)
        met = on_time(end - arrival, obs.slo_s)
        # recomputing here queues prefill on the shared GPU ahead of the other requests' chunks
        text_work = np.where(plans == len(levels), work[plans, cols], 0.0).sum(axis=1)
        util = util - self._harm(obs, text_work)[:, None]
        row, p_on = self._pick(plans, util, met, end, bw[:, 0], plan_q)
        self._plans[obs.request_id] = _Commitment(
            float(work[plans[row], cols].sum()),
            np.sort(end[row]),
            obs.deadline_s,
            float(plan_q[row]),
        )
        return Decision(
            options[int(plans[row, 0])],
            est_bandwidth_bps=float(np.median(bw[:, 0])),
            est_ttft_s=float(np.mean(end[row]) - arrival),
            p_on_time=p_on,
        )

    def _others(self, obs: Observation) -> list[_Commitment]:
        """The other requests still in flight (their plans' last first-token time not passed)."""
        self._plans = {
            rid: c
            for rid, c in self._plans.items()
            if c.ends[-1] > obs.now_s or rid == obs.request_id
        }
        return [c for rid, c in self._plans.items() if rid != obs.request_id]

    def _others_gpu_s(self, obs: Observation) -> float:
        """GPU seconds the other requests in flight still plan to queue (their chosen plans'
        chunks not yet sent): on a FIFO GPU that work can land ahead of this request's."""
        return sum(c.gpu_work_s for c in self._others(obs))

    def _harm(self, obs: Observation, delay_s: np.ndarray) -> np.ndarray:
        """Expected utility the other requests in flight lose if their first tokens come
        `delay_s` later (one value per plan): the chance each had of meeting its SLO and would
        lose, times its quality. A plan that recomputes on the shared GPU pays for it."""
        harm = np.zeros_like(delay_s)
        for c in self._others(obs):
            n = c.ends.size
            now = np.searchsorted(c.ends, c.deadline_s + ON_TIME_TOLERANCE_S, side="right")
            later = np.searchsorted(c.ends, c.deadline_s + ON_TIME_TOLERANCE_S - delay_s, "right")
            harm += c.quality * (now - later) / n
        return harm

    def _pick(
        self,
        plans: np.ndarray,
        util: np.ndarray,
        met: np.ndarray,
        end: np.ndarray,
        first_bw: np.ndarray,
        plan_q: np.ndarray,
    ) -> tuple[int, float]:
        """(row of the plan whose first step to take, its probability of meeting the SLO).

        The value of a first step counts what the next decisions will know: the futures are
        grouped by this chunk's throughput (`groups` quantile groups), and within each group the
        best continuation is taken. The later steps are decided afresh after each chunk anyway;
        judging a first step by one fixed continuation for every future would ignore that the
        sender adapts, and make it needlessly cautious."""
        n_groups = min(self.groups, util.shape[1])
        groups = np.array_split(np.argsort(first_bw, kind="stable"), n_groups)
        firsts = plans[:, 0]
        best_row, best_key = -1, (-np.inf, -np.inf, -np.inf)
        for o in np.unique(firsts):
            rows = np.flatnonzero(firsts == o)
            value = hits = lateness = 0.0
            for g in groups:
                u = util[np.ix_(rows, g)].mean(axis=1)
                p = met[np.ix_(rows, g)].mean(axis=1)
                e = end[np.ix_(rows, g)].mean(axis=1)
                ok = (
                    np.flatnonzero(p >= self.min_p_on_time)
                    if self.min_p_on_time is not None
                    else np.empty(0, dtype=np.int64)
                )
                if ok.size:  # chance constraint: the best quality that is safe enough
                    j = int(ok[np.lexsort((-p[ok], -plan_q[rows][ok]))[0]])
                else:  # expected utility; ties: more often on time, then earlier
                    j = int(np.lexsort((e, -p, -u))[0])
                value += u[j] * len(g)
                hits += p[j] * len(g)
                lateness -= e[j] * len(g)
            if (value, hits, lateness) > best_key:
                # the plan reported for this first step: its best single continuation
                mean_u, mean_p = util[rows].mean(axis=1), met[rows].mean(axis=1)
                best_row = int(rows[np.lexsort((end[rows].mean(axis=1), -mean_p, -mean_u))[0]])
                best_key = (value, hits, lateness)
        return best_row, best_key[1] / util.shape[1]
