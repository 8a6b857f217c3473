"""The SimPy model of one (case, controller): senders, the path, the shared GPU receiver.

Per request: at its arrival the sender asks the controller for chunk 0's level, waits the
per-chunk overhead, pushes the chunk into the path, and when it has arrived decides and sends
the next one (back to back). Each arrived chunk joins the receiver: one GPU (a FIFO
`simpy.Resource` shared by all requests) that decodes KV chunks or prefills TEXT chunks, in chunk
order within a request (a TEXT chunk needs every earlier chunk's KV as its prefix), so chunk i is
decoded while chunk i+1 is in flight. When the last chunk is done the GPU runs one decode step;
TTFT = that step's end - the request's arrival. A request's quality is the token-weighted expected
quality of its chunks' levels, its utility the run's objective of quality, TTFT and SLO.

A controller with `importance_tiers_for` (importance-first streaming, and the bound when that is
worth more) may instead have a request sent as importance tiers: every chunk's top tokens first,
the receiver proceeding at the deadline with the tiers it has decoded (`by_importance`).

Every finished KV-chunk transfer is a throughput sample (its bytes over its time on the wire, the
path's known one-way delay taken off), kept in one `LinkHistory` that every later decision sees,
whatever the request: the sender keeps measuring the same link.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

from kvcast.controllers.base import TEXT, Controller, Decision, LinkHistory, Observation
from kvcast.controllers.importance import tier_parts, used_tier
from kvcast.errors import InputError
from kvcast.objective import Objective, on_time

from .costs import RequestCosts


@dataclass(frozen=True)
class Request:
    request_id: int
    arrival_s: float
    context_tokens: int
    slo_s: float


@dataclass
class ChunkRecord:
    request_id: int
    chunk_index: int
    level: str
    tokens: int
    bytes: int
    send_start_s: float
    arrive_s: float
    gpu_start_s: float
    gpu_end_s: float
    gpu_kind: str  # "decode" | "prefill"; importance-first parts not used: "skipped", "dropped"
    quality: float  # the level's expected quality (sim.levels)
    # why: the controller's estimate behind the choice (NaN where it has none)
    est_bandwidth_bps: float = math.nan
    est_ttft_s: float = math.nan
    p_on_time: float = math.nan


@dataclass
class RequestRecord:
    request_id: int
    arrival_s: float
    slo_s: float
    ttft_s: float
    met_slo: bool
    quality: float
    utility: float
    bytes_sent: int
    n_chunks: int
    n_text: int


class GpuLane:
    """The shared receiver GPU plus the bookkeeping behind `Observation.gpu_queue_s`."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.resource = simpy.Resource(env, capacity=1)
        self.waiting_work_s = 0.0
        self.busy_until = 0.0

    def queue_s(self) -> float:
        return self.waiting_work_s + max(0.0, self.busy_until - self.env.now)

    def submit(
        self,
        work_s: float,
        after: simpy.Event | None,
        *,
        on_done: Callable[[], None] | None = None,
        skip: Callable[[], bool] | None = None,
    ) -> simpy.Process:
        """Queue a job now (counted in `queue_s` at once); it runs after `after` and the GPU.
        `on_done` runs as it ends, before the GPU takes the next job; a job whose `skip()` is
        true when it gets the GPU takes no time (a part the receiver no longer needs). The
        process's value: (start, end, skipped)."""
        self.waiting_work_s += work_s
        return self.env.process(self._run(work_s, after, on_done, skip))

    def _run(
        self,
        work_s: float,
        after: simpy.Event | None,
        on_done: Callable[[], None] | None,
        skip: Callable[[], bool] | None,
    ) -> Any:
        if after is not None and not after.processed:
            yield after
        with self.resource.request() as req:
            yield req
            self.waiting_work_s -= work_s
            start = self.env.now
            if skip is not None and skip():
                return start, start, True
            self.busy_until = start + work_s
            yield self.env.timeout(work_s)
            if on_done is not None:
                on_done()
        return start, self.env.now, False


class FlowCount:
    """How many transfers the sender has on the link, and its time integral, so a transfer can
    learn how many shared the link with it on average. `clock()` is the current time (the
    simulator's or, in emulation, the sender's)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.n = 0
        self._area = 0.0
        self._t = 0.0

    def _advance(self) -> float:
        now = self.clock()
        self._area += self.n * (now - self._t)
        self._t = now
        return self._area

    def enter(self) -> tuple[float, float]:
        mark = (self.clock(), self._advance())
        self.n += 1
        return mark

    def leave(self, mark: tuple[float, float]) -> float:
        """Mean number of transfers on the link since `mark` (this one included)."""
        t0, area0 = mark
        area = self._advance()
        self.n -= 1
        now = self.clock()
        return (area - area0) / (now - t0) if now > t0 else 1.0


@dataclass
class SenderState:
    """What the sender has learned about one request so far (the observation's history)."""

    past_tp: list[float] = field(default_factory=list)  # KV chunks' throughput samples, bits/s
    past_tt: list[float] = field(default_factory=list)  # their transfer times, s
    quality_sum: float = 0.0  # tokens x expected quality of the chunks sent so far

    def learn(
        self,
        nbytes: int,
        transfer_s: float,
        arrive_s: float,
        sharing: float,
        link_delay_s: float,
        history: LinkHistory,
    ) -> None:
        """A KV chunk's transfer is known (send to arrival, `transfer_s`): a transfer-time sample
        and, with the path's known delay taken off, a throughput sample for the link's history."""
        self.past_tt.append(transfer_s)
        on_wire = transfer_s - link_delay_s  # the sender knows the path's delay (its base RTT)
        if on_wire > 0:
            self.past_tp.append(nbytes * 8.0 / on_wire)
            history.add(arrive_s, self.past_tp[-1], sharing)


def chunk_observation(
    req: Request,
    rc: RequestCosts,
    i: int,
    now_s: float,
    state: SenderState,
    *,
    ladder: tuple[str, ...],
    gpu_queue_s: float,
    per_chunk_overhead_s: float,
    link_delay_s: float,
    ack_delay_s: float,
    history: LinkHistory,
    other_transfers: int,
    objective: Objective,
) -> Observation:
    """What the sender knows when it decides chunk `i` of `req` (simulated or emulated)."""
    elapsed = now_s - req.arrival_s
    request_tokens = sum(rc.tokens)
    return Observation(
        now_s=now_s,
        request_id=req.request_id,
        chunk_index=i,
        n_chunks=rc.n_chunks,
        slo_s=req.slo_s,
        elapsed_s=elapsed,
        budget_left_s=req.slo_s - elapsed,
        levels=ladder,
        quality=rc.quality,
        next_sizes={k: v[i:] for k, v in rc.sizes.items()},
        text_time_s=rc.text_s[i:],
        decode_time_s={k: v[i:] for k, v in rc.decode_s.items()},
        past_throughputs_bps=tuple(state.past_tp),
        past_transfer_times_s=tuple(state.past_tt),
        gpu_queue_s=gpu_queue_s,
        text_sizes=rc.text_sizes[i:],
        chunk_tokens=rc.tokens[i:],
        decode_step_s=rc.decode_step_s,
        per_chunk_overhead_s=per_chunk_overhead_s,
        request_tokens=request_tokens,
        quality_so_far=state.quality_sum / request_tokens,
        link_delay_s=link_delay_s,
        ack_delay_s=ack_delay_s,
        link_history=history,
        other_transfers=other_transfers,
        objective=objective,
    )


def chunk_cost(rc: RequestCosts, level: str, i: int, controller: str) -> tuple[int, float, str]:
    """Bytes, receiver work (s) and kind ("decode" | "prefill") of chunk `i` sent at `level`."""
    if level == TEXT:
        return rc.text_sizes[i], rc.text_s[i], "prefill"
    if level not in rc.sizes:
        raise KeyError(f"controller {controller!r} chose unknown level {level!r}")
    kind = "prefill" if level in rc.text_levels else "decode"
    return rc.sizes[level][i], rc.decode_s[level][i], kind


def chunk_record(
    req: Request,
    rc: RequestCosts,
    i: int,
    level: str,
    cost: tuple[int, float, str],
    start_s: float,
    arrive_s: float,
    decision: Decision,
) -> ChunkRecord:
    """Chunk `i`'s row as sent (`cost` from `chunk_cost`); its GPU times are filled later."""
    nbytes, _, kind = cost
    return ChunkRecord(
        req.request_id,
        i,
        level,
        rc.tokens[i],
        nbytes,
        start_s,
        arrive_s,
        0.0,
        0.0,
        kind,
        rc.quality[level],
        decision.est_bandwidth_bps,
        decision.est_ttft_s,
        decision.p_on_time,
    )


def request_record(
    req: Request,
    rc: RequestCosts,
    rows: Sequence[ChunkRecord],
    ttft: float,
    objective: Objective,
    quality: float | None = None,
) -> RequestRecord:
    """A request's figures once its first token is out (its chunks' rows in `rows`); its quality
    is its chunks' token-weighted one unless given (importance-first: the tiers it used)."""
    request_tokens = sum(rc.tokens)
    if quality is None:
        quality = sum(r.quality * r.tokens for r in rows) / request_tokens
    return RequestRecord(
        req.request_id,
        req.arrival_s,
        req.slo_s,
        ttft,
        bool(on_time(ttft, req.slo_s)),
        quality,
        objective.utility(quality, ttft, req.slo_s),
        sum(r.bytes for r in rows),
        rc.n_chunks,
        sum(1 for r in rows if r.level == TEXT),
    )


@dataclass
class SimResult:
    requests: list[RequestRecord]
    chunks: list[ChunkRecord]
    decisions: int


def simulate(
    requests: Sequence[Request],
    costs: Sequence[RequestCosts],
    controller: Controller,
    make_path: Callable[[simpy.Environment], Any],
    ladder: Sequence[str],
    per_chunk_overhead_s: float = 0.0,
    objective: Objective | None = None,
    on_request_done: Callable[[], None] | None = None,
    ack_delay_s: float = 0.0,
) -> SimResult:
    """Run every request through one controller; returns per-request and per-chunk records.
    `on_request_done` is called as each request gets its first token (progress).
    `ack_delay_s`: how long after a chunk has arrived the sender learns it (the receiver's
    acknowledgement on the way back) and may send the next one; 0: at once."""
    objective = objective or Objective()
    env = simpy.Environment()
    path = make_path(env)
    gpu = GpuLane(env)
    if hasattr(controller, "bind_foresight"):
        controller.bind_foresight(path)
    by_tiers = getattr(controller, "importance_tiers_for", None)  # importance-first streaming
    delay_s = float(getattr(path, "delay_s", 0.0))
    history = LinkHistory()
    flows = FlowCount(lambda: env.now)
    req_records: list[RequestRecord] = []
    chunk_records: list[ChunkRecord] = []
    counter = [0]
    ladder = tuple(ladder)

    def observe(req: Request, rc: RequestCosts, i: int, state: SenderState) -> Observation:
        return chunk_observation(
            req,
            rc,
            i,
            env.now,
            state,
            ladder=ladder,
            gpu_queue_s=gpu.queue_s(),
            per_chunk_overhead_s=per_chunk_overhead_s,
            link_delay_s=delay_s,
            ack_delay_s=ack_delay_s,
            history=history,
            other_transfers=flows.n,
            objective=objective,
        )

    def request_proc(req: Request, rc: RequestCosts) -> Any:
        yield env.timeout(req.arrival_s)
        controller.reset(req.request_id)
        state = SenderState()
        tiers = by_tiers(observe(req, rc, 0, state)) if by_tiers is not None else None
        if tiers:
            yield from by_importance(req, rc, tiers, state)
            return
        prev_gpu: simpy.Event | None = None
        rows: list[ChunkRecord] = []
        for i in range(rc.n_chunks):
            obs = observe(req, rc, i, state)
            decision = controller.choose(obs)
            level = decision.level
            counter[0] += 1
            cost = chunk_cost(rc, level, i, controller.name)
            nbytes, work, _ = cost
            if per_chunk_overhead_s > 0:
                yield env.timeout(per_chunk_overhead_s)
            start = env.now
            shared_from = flows.enter()
            yield path.transfer(req.request_id, i, nbytes)
            arrive = env.now
            state.quality_sum += rc.quality[level] * rc.tokens[i]
            row = chunk_record(req, rc, i, level, cost, start, arrive, decision)
            rows.append(row)
            job = gpu.submit(work, prev_gpu)  # the receiver has the chunk: it queues at once
            job.callbacks.append(_fill(row))
            prev_gpu = job
            if i + 1 == rc.n_chunks:
                step = gpu.submit(rc.decode_step_s, prev_gpu)
            if ack_delay_s > 0:  # the sender learns of the arrival only now
                yield env.timeout(ack_delay_s)
            sharing = flows.leave(shared_from)
            if rc.sends_kv(level):
                state.learn(nbytes, arrive - start, arrive, sharing, delay_s, history)
        first_token = (yield step)[1]
        req_records.append(request_record(req, rc, rows, first_token - req.arrival_s, objective))
        chunk_records.extend(rows)
        if on_request_done is not None:
            on_request_done()

    def by_importance(
        req: Request, rc: RequestCosts, tiers: Sequence[str], state: SenderState
    ) -> Any:
        """A request streamed by importance tiers (kvcast.controllers.importance). The receiver
        decodes a part when the GPU takes it, unless it would end after the deadline (SLO minus
        the first-token step; first-tier parts are always decoded). It proceeds once every part
        is decoded, or at the deadline with the tiers decoded by then (if later: once the first
        tier is); from then on arriving parts are dropped and queued ones skipped."""
        n, who = rc.n_chunks, f"controller {controller.name!r}"
        parts = tier_parts(rc.sizes, rc.decode_s, tiers, who, rc.tokens)
        deadline = req.arrival_s + req.slo_s - rc.decode_step_s
        rows: list[ChunkRecord] = []  # every part sent, in send order
        decoded = [0] * len(tiers)  # parts of each tier decoded
        last_job: list[simpy.Process | None] = [None]
        first_tier, all_done = env.event(), env.event()

        def proceeded() -> bool:
            return all_done.triggered or (env.now >= deadline and decoded[0] == n)

        def skip(m: int, work: float) -> Callable[[], bool]:
            return lambda: proceeded() or (m > 0 and env.now + work > deadline)

        def on_decoded(m: int, last: bool) -> Callable[[], None]:
            def done() -> None:
                decoded[m] += 1
                if m == 0 and decoded[0] == n:
                    first_tier.succeed()
                if last:
                    all_done.succeed()

            return done

        def send() -> Any:
            for k, (m, i, nbytes, work, tokens) in enumerate(parts):
                if per_chunk_overhead_s > 0:
                    yield env.timeout(per_chunk_overhead_s)
                if proceeded():
                    return
                counter[0] += 1
                start = env.now
                level = tiers[m]
                row = chunk_record(req, rc, i, level, (nbytes, work, "decode"), start, math.nan,
                                   Decision(level))  # fmt: skip
                row.tokens = tokens
                rows.append(row)
                shared_from = flows.enter()
                yield path.transfer(req.request_id, i, nbytes)
                arrive = row.arrive_s = env.now
                if proceeded():  # the receiver has moved on: the part is not used
                    row.gpu_kind, row.gpu_start_s, row.gpu_end_s = "dropped", arrive, arrive
                else:
                    done = on_decoded(m, k + 1 == len(parts))
                    job = gpu.submit(work, last_job[0], on_done=done, skip=skip(m, work))
                    job.callbacks.append(_fill(row))
                    last_job[0] = job
                if ack_delay_s > 0:
                    yield env.timeout(ack_delay_s)
                sharing = flows.leave(shared_from)
                state.learn(nbytes, arrive - start, arrive, sharing, delay_s, history)

        env.process(send())
        yield env.any_of([all_done, env.timeout(max(0.0, deadline - env.now))])
        if not first_tier.triggered:
            yield first_tier
        used = used_tier(tiers, decoded, n)  # what is decoded when the receiver proceeds
        first_token = (yield gpu.submit(rc.decode_step_s, last_job[0]))[1]
        quality = rc.quality[used]
        ttft = first_token - req.arrival_s
        req_records.append(request_record(req, rc, rows, ttft, objective, quality))
        chunk_records.extend(rows)  # a part still on the wire gets its arrival later
        if on_request_done is not None:
            on_request_done()

    for req, rc in zip(requests, costs, strict=True):
        env.process(request_proc(req, rc))
    env.run()
    if len(req_records) != len(requests):
        done = {r.request_id for r in req_records}
        stuck = [r.request_id for r in requests if r.request_id not in done]
        raise InputError(
            f"request(s) {stuck[:5]} never got their first token: the link delivers no more bytes "
            "(a trace played once and over, or one without capacity); loop the trace or shorten the workload"
        )
    req_records.sort(key=lambda r: r.request_id)
    chunk_records.sort(key=lambda r: (r.request_id, r.chunk_index))
    return SimResult(req_records, chunk_records, counter[0])


def _fill(row: ChunkRecord) -> Callable[[simpy.Event], None]:
    def cb(ev: simpy.Event) -> None:
        row.gpu_start_s, row.gpu_end_s, skipped = ev.value
        if skipped:
            row.gpu_kind = "skipped"  # an importance-first part the receiver no longer needed

    return cb
