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
   TEXT prefill, the final decode step) on every sampled future, with the requests it shares the
   link and the GPU with:
   - the other requests in flight, as their last decisions committed them: the bits their plans
     still have to send share the link fairly with this request's (while one of them sends, it
     takes as many bits as this request does), and their chunks' GPU jobs join the FIFO GPU when
     they are projected to arrive, ahead of this request's jobs that come later;
   - the next request to arrive: its arrival on each future is drawn from the gaps between the
     past arrivals (longer than the wait so far: Poisson arrivals can come any time, arrivals
     every 10 s come 10 s after the last), and it sends and queues what recent requests' first
     plans did (their medians). A plan that ends just before the deadline alone is late when a
     request arrives meanwhile; ignoring that made the planner overconfident wherever requests
     overlap (planned certainly on time, late by a few ms).
   A plan that recomputes pays for the delay its prefill puts ahead of the others' on the shared
   FIFO GPU (their chance of meeting the SLO lost, times their quality).
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

import itertools
from dataclasses import dataclass

import numpy as np
from numba import njit

from kvcast.objective import ON_TIME_TOLERANCE_S, on_time

from .bandwidth import fit, sample_paths
from .base import TEXT, Decision, Observation
from .pipeline import gpu_free_s, option_costs, token_weights

MEMORY = 64  # requests remembered to foresee the next arrival (their gaps and sizes)


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
    other_bits: np.ndarray,  # bits each other request in flight still has to send
    other_release: np.ndarray,  # when the others' GPU jobs reach the GPU, ascending
    other_work: np.ndarray,  # their GPU seconds
    new_t: np.ndarray,  # [paths] when the next request arrives on each future (inf: none)
    new_bits: float,  # what it sends on the link
    new_work: float,  # and queues on the GPU (one job, as it arrives)
) -> np.ndarray:  # pragma: no cover (compiled)
    """[plans, paths] first-token time (absolute) of every plan on every sampled future: the
    pipeline of `pipeline.finish_times`, compiled (this is the controller's hot loop).

    `bw` is the link's capacity. The other requests in flight share it fairly (processor
    sharing): while another still has bits to send it takes as many as this request sends, so
    chunk c's time on the wire is its bits plus the others' bits sent meanwhile, over the
    capacity. Their GPU jobs join the FIFO GPU as one chain (each after the previous one): a
    job that reaches the GPU before one of this request's goes first. A request that arrives
    meanwhile (`new_t`) shares the link from its arrival on and puts its GPU work in the queue
    when it arrives. With no others and no newcomer this is exactly `pipeline.finish_times`."""
    n_plans, m = bits.shape
    n_paths = bw.shape[0]
    n_jobs = other_release.shape[0]
    out = np.empty((n_plans, n_paths))
    for p in range(n_plans):
        for k in range(n_paths):
            t = now
            g = gpu_free  # when the GPU is free
            mine = gpu_free  # when this request's previous job is done
            theirs = gpu_free  # when the others' previous job is done
            sent = 0.0
            j = 0
            new_left = new_bits
            new_ready = new_t[k] + delay
            for c in range(m):
                b = bits[p, c]
                wire = b
                for o in other_bits:
                    if o > sent:
                        wire += min(o, sent + b) - sent
                sent += b
                t += overhead
                if new_left > 0.0 and new_t[k] < t + wire / bw[k, c]:
                    # the newcomer shares the link from its arrival: as many of the bits still
                    # to send then as it has left
                    took = min(new_left, wire - max(new_t[k] - t, 0.0) * bw[k, c])
                    wire += took
                    new_left -= took
                t += delay + wire / bw[k, c]
                ready = t if t > mine else mine
                while j < n_jobs and max(other_release[j], theirs) <= ready:
                    start = max(g, other_release[j], theirs)
                    g = start + other_work[j]
                    theirs = g
                    j += 1
                if new_ready <= ready:  # and its GPU work goes first
                    g = max(g, new_ready) + new_work
                    new_ready = np.inf
                if ready > g:
                    g = ready
                g += work[p, c]
                mine = g
            while j < n_jobs and max(other_release[j], theirs) <= mine:  # before the last step
                g = max(g, other_release[j], theirs) + other_work[j]
                theirs = g
                j += 1
            if new_ready <= mine:
                g = max(g, new_ready) + new_work
            out[p, k] = max(g, mine) + step
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
    """What a request in flight has committed to at its last decision (its chosen plan), as the
    other requests' decisions see it."""

    decided_s: float  # when it decided its current chunk
    bits: np.ndarray  # bits of its remaining chunks (the current one first)
    work_s: np.ndarray  # their GPU seconds
    arrive_s: np.ndarray  # their projected arrivals (median future): when each joins the GPU
    ends: np.ndarray  # its first-token times over the futures, sorted
    deadline_s: float
    quality: float

    def bits_left(self, now_s: float, overhead_s: float) -> float:
        """Bits it still has to send at `now_s`: the chunks not yet projected to have arrived,
        the one on the wire pro rata of its projected time left."""
        left = self.arrive_s > now_s
        if not left.any():
            return 0.0
        i = int(np.argmax(left))
        start = (self.arrive_s[i - 1] if i else self.decided_s) + overhead_s
        span = self.arrive_s[i] - start
        frac = min(1.0, (self.arrive_s[i] - now_s) / span) if span > 0 else 1.0
        return float(self.bits[i] * frac + self.bits[i + 1 :].sum())

    def harm(self, delay_s: np.ndarray) -> np.ndarray:
        """Expected utility it loses if its first token comes `delay_s` later (any shape): the
        chance it had of meeting its SLO and would lose, times its quality."""
        due = self.deadline_s + ON_TIME_TOLERANCE_S
        now = np.searchsorted(self.ends, due, side="right")
        later = np.searchsorted(self.ends, due - delay_s, side="right")
        return self.quality * (now - later) / self.ends.size


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
        # what each request in flight has committed to: its chosen plan's remaining chunks (bits,
        # GPU work, projected arrivals) and its first-token times over the futures (to judge what
        # delaying it would cost)
        self._plans: dict[int, _Commitment] = {}
        # the requests seen so far: when they arrived, and what their first plans sent on the
        # link and queued on the GPU (to foresee the next arrival, which this one will share with)
        self._arrivals: list[float] = []
        self._sizes: list[tuple[float, float]] = []

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
        others = self._others(obs)
        # the link's other transfers, and what the others' plans still have to send on it
        other_bits = np.array(
            [c.bits_left(obs.now_s, obs.per_chunk_overhead_s) for c in others]
            if obs.other_transfers
            else [],
            dtype=np.float64,
        )
        other_bits = other_bits[other_bits > 0]
        share = 1.0 + other_bits.size  # this request's share while they all send
        # when each remaining chunk would be on the link: paced at the mean level's speed
        mid = levels[len(levels) // 2]
        per_chunk = (
            obs.per_chunk_overhead_s
            + obs.link_delay_s
            + (np.asarray(obs.next_sizes[mid], dtype=np.float64) * 8.0 * share / np.exp(f.mu))
        )
        times = obs.now_s + np.cumsum(per_chunk) - per_chunk / 2.0
        rng = np.random.default_rng((self.seed, obs.request_id, obs.chunk_index))
        cap = sample_paths(f, times, self.paths, rng, cap_hist[cap_hist > 0], self.surprise)
        release, jobs = self._others_jobs(obs, others)
        arrival = obs.now_s - obs.elapsed_s
        if obs.chunk_index == 0:
            self._arrivals = [*self._arrivals[-(MEMORY - 1) :], arrival]
        new_t, new_bits, new_work = self._next_arrival(obs.now_s, rng)
        bits = np.ascontiguousarray(nbytes[plans, cols] * 8.0)
        end = first_token_times(
            obs.now_s,
            gpu_free_s(obs),
            obs.per_chunk_overhead_s,
            obs.link_delay_s,
            obs.decode_step_s,
            bits,
            np.ascontiguousarray(work[plans, cols]),
            cap,
            other_bits,
            release,
            jobs,
            new_t,
            new_bits,
            new_work,
        )
        util = obs.objective.utilities(plan_q[:, None], end - arrival, obs.slo_s)
        met = on_time(end - arrival, obs.slo_s)
        # recomputing here queues prefill on the shared GPU ahead of the other requests' chunks
        text_work = np.where(plans == len(levels), work[plans, cols], 0.0).sum(axis=1)
        harm = sum((c.harm(text_work) for c in others), np.zeros(len(plans)))
        util = util - harm[:, None]
        row, p_on = self._pick(plans, util, met, end, cap[:, 0], plan_q)
        # this request's commitment: its chunks' projected arrivals at its share of the link
        wire = obs.per_chunk_overhead_s + obs.link_delay_s + bits[row] * share / cap
        self._plans[obs.request_id] = _Commitment(
            obs.now_s,
            bits[row],
            work[plans[row], cols],
            obs.now_s + np.median(np.cumsum(wire, axis=1), axis=0),
            np.sort(end[row]),
            obs.deadline_s,
            float(plan_q[row]),
        )
        if obs.chunk_index == 0:
            self._sizes = [
                *self._sizes[-(MEMORY - 1) :],
                (float(bits[row].sum()), float(work[plans[row], cols].sum())),
            ]

        return Decision(
            options[int(plans[row, 0])],
            est_bandwidth_bps=float(np.median(cap[:, 0]) / share),
            est_ttft_s=float(np.mean(end[row]) - arrival),
            p_on_time=p_on,
        )

    def _others(self, obs: Observation) -> list[_Commitment]:
        """The other requests in flight: those whose plans' latest first-token time (over the
        futures) has not passed. Until its first token, a request can still be delayed by work
        this one puts on the FIFO GPU ahead of its remaining jobs. With no other transfer on
        the link and nothing queued on the GPU, every other request is done."""
        done = obs.other_transfers == 0 and obs.gpu_queue_s <= 0.0
        self._plans = {
            rid: c
            for rid, c in self._plans.items()
            if rid == obs.request_id or (not done and c.ends[-1] > obs.now_s)
        }
        return [c for rid, c in self._plans.items() if rid != obs.request_id]

    def _next_arrival(
        self, now_s: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, float, float]:
        """When the next request arrives on each future (inf: none foreseen), and what it will
        send and queue on the GPU (the median of the recent requests' first plans). Its gap after
        the last arrival is one of the past gaps longer than the wait so far: Poisson arrivals
        can come any time, arrivals every 10 s exactly 10 s after the last."""
        none = np.full(self.paths, np.inf)
        if len(self._arrivals) < 5 or not self._sizes:
            return none, 0.0, 0.0
        last = self._arrivals[-1]
        gaps = np.diff(np.asarray(self._arrivals))
        gaps = gaps[gaps > now_s - last]
        if gaps.size == 0:
            return none, 0.0, 0.0
        sizes = np.asarray(self._sizes)
        return (
            last + gaps[rng.integers(0, gaps.size, self.paths)],
            float(np.median(sizes[:, 0])),
            float(np.median(sizes[:, 1])),
        )

    @staticmethod
    def _others_jobs(obs: Observation, others: list[_Commitment]) -> tuple[np.ndarray, np.ndarray]:
        """(when, GPU seconds) of the other requests' GPU jobs still to come (their chunks not
        yet arrived), by the time they reach the GPU: on a FIFO GPU the ones that come before
        this request's chunks go first."""
        if not others:
            return np.empty(0), np.empty(0)
        release = np.concatenate([c.arrive_s for c in others])
        jobs = np.concatenate([c.work_s for c in others])
        keep = release > obs.now_s
        order = np.argsort(release[keep], kind="stable")
        return release[keep][order], jobs[keep][order]

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
        order = np.argsort(first_bw, kind="stable")
        # futures in throughput order once, so each group is a slice (the same elements in the
        # same order as gathering the group's columns, so the same means)
        util_o, met_o, end_o = util[:, order], met[:, order], end[:, order]
        bounds = np.cumsum([0, *(len(g) for g in np.array_split(order, n_groups))])
        firsts = plans[:, 0]
        best_row, best_key = -1, (-np.inf, -np.inf, -np.inf)
        for o in np.unique(firsts):
            rows = np.flatnonzero(firsts == o)
            value = hits = lateness = 0.0
            util_r, met_r, end_r = util_o[rows], met_o[rows], end_o[rows]
            for a, b in itertools.pairwise(bounds.tolist()):
                u = util_r[:, a:b].mean(axis=1)
                p = met_r[:, a:b].mean(axis=1)
                e = end_r[:, a:b].mean(axis=1)
                ok = (
                    np.flatnonzero(p >= self.min_p_on_time)
                    if self.min_p_on_time is not None
                    else np.empty(0, dtype=np.int64)
                )
                if ok.size:  # chance constraint: the best quality that is safe enough
                    j = int(ok[np.lexsort((-p[ok], -plan_q[rows][ok]))[0]])
                else:  # expected utility; ties: more often on time, then earlier
                    j = int(np.lexsort((e, -p, -u))[0])
                value += u[j] * (b - a)
                hits += p[j] * (b - a)
                lateness -= e[j] * (b - a)
            if (value, hits, lateness) > best_key:
                # the plan reported for this first step: its best single continuation
                mean_u, mean_p = util[rows].mean(axis=1), met[rows].mean(axis=1)
                best_row = int(rows[np.lexsort((end[rows].mean(axis=1), -mean_p, -mean_u))[0]])
                best_key = (value, hits, lateness)
        return best_row, best_key[1] / util.shape[1]
