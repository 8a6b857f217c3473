"""Run a scenario: every case x every controller, then the run folder (docs/contracts.md).

Per case (trace x SLO x seed) the workload, the chunk costs and the per-chunk bandwidths are drawn
once from the case's seed and shared by every controller, so that controllers differ only by their
decisions. Random streams come from `numpy.random.SeedSequence(seed)`; nothing else is random.
"""

from __future__ import annotations

import heapq
import multiprocessing
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from kvcast import __version__
from kvcast.chunk_cost_file import ChunkCostTable
from kvcast.chunks import TEXT_LEVEL
from kvcast.controllers.registry import get_controller
from kvcast.errors import InputError, KvcastError
from kvcast.objective import BOUND_CONTROLLER, display_name
from kvcast.profile_format import CodecProfile, load_profile, profile_to_dict
from kvcast.run_schema import REQUEST_COLUMNS, write_run_files

from . import presets
from .costs import MeasuredCoster, ProfileCoster, RequestCosts
from .engine import ChunkRecord, Request, RequestRecord, SimResult, simulate
from .levels import adaptive_ladder
from .limits import check_fits
from .network import PerChunkPath, TraceLinkPath
from .receiver import DecodeRates, DecodeTimes, MeasuredDecode, MeasuredPrefill, Receiver
from .scenario import Case, Scenario
from .traceref import build_trace
from .workload import make_requests

BOUND_NOTE = (
    "oracle = the bound: it knows the trace and plans each request alone on the link and the GPU "
    "(contention can only delay a request), so no controller can beat it on any request. "
    "cachegen-artifact uses each chunk's true bandwidth, as CacheGen's released code did."
)


@dataclass
class Setup:
    """What every case of a scenario shares: the profile, the receiver and the chunk coster."""

    profile: CodecProfile
    receiver: Receiver
    coster: ProfileCoster | MeasuredCoster  # request_costs(context_tokens, rng)
    ladder: tuple[str, ...]  # the adaptive ladder (sim.levels), largest first
    warnings: tuple[str, ...] = ()  # where the profile is used outside what it measured
    traces: dict[str, Any] = field(default_factory=dict)  # trace ref -> Trace, built once


def build_setup(sc: Scenario, chunk_costs: ChunkCostTable | None = None) -> Setup:
    """Profile, receiver and coster of a scenario; `costing: real_codec` needs `chunk_costs`
    (a chunk-cost file's table: `kvcast run` measures it with kvcast.profiling.chunk_costs)."""
    try:
        profile = load_profile(sc.profile)
    except InputError as exc:
        raise InputError(f"{sc.source}: field 'profile': {exc}") from None
    on_gpu_preset = sc.model != "profile"
    decode: DecodeTimes
    if sc.costing == "real_codec":
        if chunk_costs is None:
            raise InputError(
                f"{sc.source}: field 'costing': real_codec needs the measured chunk costs: run it "
                "with `kvcast run`, which measures them (kvcast.profiling.chunk_costs) first"
            )
        ctx = sc.workload.context_tokens
        if ctx.kind != "fixed" or ctx.values[0] != sum(chunk_costs.tokens):
            raise InputError(
                f"{sc.source}: field 'workload.context_tokens': with 'costing: real_codec' every "
                f"request is the captured context: expected {sum(chunk_costs.tokens)} "
                "(real_codec.tokens)"
            )
        decode = MeasuredDecode.from_table(chunk_costs)
    elif sc.receiver.decode_melem_per_s == "profile":
        measured_on = profile.device.name
        if on_gpu_preset and not measured_on.lower().startswith("cuda"):
            raise InputError(
                f"{sc.source}: field 'receiver.decode_melem_per_s': 'profile' would take the codec "
                f"decode speed measured on {measured_on!r} (profile {profile.name}) for a "
                f"{sc.gpu} receiver; give a GPU codec profile (kvcast profile --device cuda) or "
                "a number of million elements per second (an estimate, reported as assumed)"
            )
        decode = DecodeRates(
            {lv.name: lv.decode_melem_per_s for lv in profile.levels},
            f"codec decode measured on {measured_on} (profile {profile.name})",
        )
    else:
        decode = DecodeRates(
            {lv.name: float(sc.receiver.decode_melem_per_s) for lv in profile.levels},
            f"codec decode ASSUMED {sc.receiver.decode_melem_per_s:g} Melem/s "
            "(scenario estimate, not measured)",
        )
    dec_src = decode.source
    if sc.model == "profile":
        prefill: Any = MeasuredPrefill.from_profile(profile)
        kv_elem = profile.model.kv_elements_per_token
        desc = f"{profile.model.id} on {profile.device.name}, prefill measured; {dec_src}"
    else:
        model = presets.get_model(sc.model)
        gpu = presets.get_gpu(sc.gpu)
        prefill = presets.GpuTimeModel(
            model,
            gpu,
            sc.receiver.gpu_count,
            sc.receiver.prefill_efficiency,
            sc.receiver.memory_efficiency,
        )
        kv_elem = model.kv_elements_per_token
        desc = (
            f"{model.name} on {sc.receiver.gpu_count}x {gpu.name}, prefill from FLOPs at "
            f"{sc.receiver.prefill_efficiency:g} of peak; {dec_src}"
        )
    receiver = Receiver(prefill, decode, desc)
    coster: ProfileCoster | MeasuredCoster
    if chunk_costs is not None and sc.costing == "real_codec":
        coster = MeasuredCoster(chunk_costs, profile, receiver, f"{sc.source}: field 'real_codec'")
    else:
        coster = ProfileCoster(profile, kv_elem, receiver, sc.chunk_tokens)
    traces = {}
    if sc.link.kind == "trace":
        for ref in sc.link.traces:  # built once; a bad trace fails here, before any case runs
            try:
                traces[ref] = build_trace(sc.link, ref)
            except InputError as exc:
                raise InputError(f"{sc.source}: field {exc}") from None
    ladder = adaptive_ladder(profile, sc.levels, f"{sc.source}: field 'levels'")
    for i, name in enumerate(sc.controllers):
        kind, _, level = name.partition(":")
        if kind == "fixed" and level != TEXT_LEVEL and level not in profile.level_names:
            raise InputError(
                f"{sc.source}: field 'controllers[{i}]': {name!r}: codec profile "
                f"{profile.name or sc.profile} has no level {level!r} "
                f"(levels: {', '.join(profile.level_names)})"
            )
    return Setup(profile, receiver, coster, ladder, profile_mismatches(sc, profile), traces)


def profile_mismatches(sc: Scenario, profile: CodecProfile) -> tuple[str, ...]:
    """Where the scenario uses the codec profile beyond what it measured: said in the table and
    the report, since the figures then rest on an extrapolation."""
    out = []
    if sc.costing == "profile" and sc.chunk_tokens != profile.chunk_tokens:
        out.append(
            f"the codec profile {profile.name} was measured on {profile.chunk_tokens}-token "
            f"chunks and this scenario cuts {sc.chunk_tokens}-token chunks: its bits per element "
            "and qualities are taken as they are"
        )
    ctx = sc.workload.context_tokens
    longest = ctx.values[-1] if ctx.kind == "uniform" else max(ctx.values)
    measured = max((p.context_tokens for p in profile.prefill), default=0)
    if sc.model == "profile" and longest > measured:
        out.append(
            f"contexts reach {longest} tokens but the profile measured prefill only up to "
            f"{measured}: TEXT prefill beyond that assumes its last measured speed"
        )
    return tuple(out)


@dataclass
class CaseInputs:
    case: Case
    requests: list[Request]
    costs: list[RequestCosts]
    make_path: Callable[[Any], Any]
    trace: Any | None


def case_inputs(sc: Scenario, setup: Setup, case: Case) -> CaseInputs:
    ss = np.random.SeedSequence(case.seed)
    wl_rng, cost_rng, bw_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    requests = make_requests(sc.workload, case.slo_s, wl_rng)
    costs = [setup.coster.request_costs(r.context_tokens, cost_rng) for r in requests]
    link = sc.link
    if link.kind == "per_chunk":
        bws = [
            (bw_rng.uniform(link.low_gbps, link.high_gbps, size=c.n_chunks) * 1e9).tolist()
            for c in costs
        ]
        delay = link.delay_s
        return CaseInputs(case, requests, costs, lambda env: PerChunkPath(env, bws, delay), None)

    trace = setup.traces[case.trace]
    opts: dict[str, Any] = {"mode": link.mode, "delay_s": link.delay_s, "queue": link.queue}
    if link.queue_bytes is not None:
        opts["queue_bytes"] = link.queue_bytes
    if link.queue_packets is not None:
        opts["queue_packets"] = link.queue_packets
    return CaseInputs(case, requests, costs, lambda env: TraceLinkPath(env, trace, **opts), trace)


def run_controller(
    sc: Scenario,
    setup: Setup,
    ci: CaseInputs,
    ctrl: Any,
    on_request_done: Callable[[], None] | None = None,
) -> SimResult:
    """One controller on one case. A bound (the oracle) runs every request alone on the link and
    the GPU: contention can only delay a request, so what it reaches alone bounds every
    controller's result on that request, whether or not requests share the link."""
    run = partial(
        simulate,
        controller=ctrl,
        make_path=ci.make_path,
        ladder=setup.ladder,
        per_chunk_overhead_s=sc.workload.per_chunk_overhead_s,
        objective=sc.objective,
        on_request_done=on_request_done,
    )
    if not getattr(ctrl, "is_bound", False):
        return run(ci.requests, ci.costs)
    parts = [run([r], [c]) for r, c in zip(ci.requests, ci.costs, strict=True)]
    return SimResult(
        [r for p in parts for r in p.requests],
        [c for p in parts for c in p.chunks],
        sum(p.decisions for p in parts),
    )


@dataclass
class RunResult:
    scenario: Scenario
    profile: CodecProfile
    requests: pd.DataFrame
    chunks: pd.DataFrame
    traces: pd.DataFrame
    summary: dict[str, Any]
    decisions: int
    sim_wall_s: float


def _case_inputs_once(
    memo: dict[Any, CaseInputs], key: Any, sc: Scenario, setup: Setup, case: Case
) -> CaseInputs:
    """`case_inputs`, drawn once while `memo` holds this case (it holds one case at a time:
    a case's units run one after another)."""
    if key not in memo:
        memo.clear()
        memo[key] = case_inputs(sc, setup, case)
    return memo[key]


_REQUEST_FIELDS = tuple(f.name for f in fields(RequestRecord))
_CHUNK_FIELDS = tuple(f.name for f in fields(ChunkRecord))
_request_values = attrgetter(*_REQUEST_FIELDS)
_chunk_values = attrgetter(*_CHUNK_FIELDS)


@dataclass
class UnitResult:
    """One controller on one case: its rows, ready to be joined in the run's order."""

    request_rows: list[dict[str, Any]]
    chunks: pd.DataFrame
    decisions: int
    wall_s: float


def _run_unit(
    sc: Scenario,
    setup: Setup,
    ci: CaseInputs,
    name: str,
    tick: Callable[[], None] | None = None,
) -> UnitResult:
    case = ci.case
    swept = {"trace": trace_label(case), "slo_s": case.slo_s, "seed": case.seed}
    ctrl = get_controller(name, **sc.controller_params.get(name, {}))
    t0 = time.perf_counter()
    res = run_controller(sc, setup, ci, ctrl, tick)
    wall = time.perf_counter() - t0
    rows = []
    for r in res.requests:
        row = dict(zip(_REQUEST_FIELDS, _request_values(r), strict=True))
        row.update(case=case.label, controller=name, **swept)
        rows.append(row)
    # flat records: attribute access, not dataclasses.asdict's recursive copy (a third of the
    # simulation's time in `kvcast bench sim`)
    cf = pd.DataFrame([_chunk_values(c) for c in res.chunks], columns=_CHUNK_FIELDS)
    cf.insert(0, "controller", name)
    cf.insert(0, "case", case.label)
    return UnitResult(rows, cf, res.decisions, wall)


EXECUTORS = ("local", "ray")

# A worker process's inputs of the case it ran last, keyed by (run token, case index): units of
# one case mostly land on the same worker in turn, and a case's inputs are drawn only once there.
_WORKER_CASE: dict[Any, CaseInputs] = {}
# What forked local workers inherit: (run token, scenario, setup) of the run in progress.
_FORKED: tuple[str, Scenario, Setup] | None = None


def _unit_in_worker(shared: tuple[str, Scenario, Setup], unit: tuple[int, str]) -> UnitResult:
    """One unit in a worker process; a failure names the unit it happened in."""
    token, sc, setup = shared
    index, name = unit
    case = sc.cases()[index]
    try:
        ci = _case_inputs_once(_WORKER_CASE, (token, index), sc, setup, case)
        return _run_unit(sc, setup, ci, name)
    except KvcastError as exc:
        raise InputError(f"{case.label} ({trace_label(case)}), controller {name}: {exc}") from None
    except Exception as exc:
        exc.add_note(f"in {case.label} ({trace_label(case)}), controller {name}")
        raise


def _worker_signals() -> None:
    """A forked worker must not inherit the CLI's SIGTERM handler (the pool stops its workers
    with SIGTERM, which would then raise KeyboardInterrupt in each and print a traceback), and
    leaves Ctrl-C to the parent, which terminates the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _forked_unit(unit: tuple[int, str]) -> UnitResult:
    assert _FORKED is not None
    return _unit_in_worker(_FORKED, unit)


def _run_units_elsewhere(
    sc: Scenario,
    setup: Setup,
    units: list[tuple[int, str]],
    workers: int,
    executor: str,
    address: str | None,
    bar: Any,
) -> Iterator[UnitResult]:
    """The units on `workers` local processes (forked) or on Ray (`address`: an existing
    cluster, else a local one started and stopped here); results in the units' order."""
    global _FORKED
    token = uuid.uuid4().hex
    if executor == "ray":
        yield from _run_units_on_ray((token, sc, setup), units, workers, address, bar)
        return
    _FORKED = (token, sc, setup)
    try:
        with multiprocessing.get_context("fork").Pool(workers, _worker_signals) as pool:
            for unit in pool.imap(_forked_unit, units):
                if bar is not None:
                    bar.update(len(unit.request_rows))
                yield unit
    finally:
        _FORKED = None


def _run_units_on_ray(
    shared: tuple[str, Scenario, Setup],
    units: list[tuple[int, str]],
    workers: int,
    address: str | None,
    bar: Any,
) -> Iterator[UnitResult]:
    try:
        import ray  # deferred: an optional extra (pip install 'kvcast[ray]'), slow to import
    except ModuleNotFoundError:
        raise InputError(
            "--executor ray needs Ray: pip install 'kvcast[ray]' (or use --executor local)"
        ) from None
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, **options)
    try:
        remote = ray.remote(_unit_in_worker)
        shared_ref = ray.put(shared)
        refs = [remote.remote(shared_ref, unit) for unit in units]
        for ref in refs:
            unit = ray.get(ref)
            if bar is not None:
                bar.update(len(unit.request_rows))
            yield unit
    finally:
        if started:
            ray.shutdown()


def run_scenario(
    sc: Scenario,
    controllers: Sequence[str] | None = None,
    progress: bool = False,
    setup: Setup | None = None,
    chunk_costs: ChunkCostTable | None = None,
    memory_limit: bool = True,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
) -> RunResult:
    """Simulate every case with every controller; tables and summary in memory.

    `chunk_costs`: the measured chunk-cost table that `costing: real_codec` needs.
    `memory_limit`: refuse a run whose memory estimate exceeds what is available (sim.limits).
    `workers`: processes simulating (case, controller) units side by side, on this machine
    (`executor="local"`) or on Ray (`"ray"`, `address` of a cluster, else a local Ray); the
    results are the same tables whatever the executor and the number (each unit draws its
    inputs from its case's seed)."""
    if executor not in EXECUTORS:
        raise InputError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    names = list(controllers or sc.controllers)
    if memory_limit:
        check_fits(sc, len(names))
    setup = setup or build_setup(sc, chunk_costs)
    cases = sc.cases()
    req_rows: list[dict[str, Any]] = []
    chunk_frames: list[pd.DataFrame] = []
    trace_frames: list[pd.DataFrame] = []
    decisions = 0
    ctrl_wall: dict[str, float] = {}
    ctrl_decisions: dict[str, int] = {}
    bar = None
    if progress:
        # one tick per request-run: a single long case still shows its progress and ETA
        total = len(cases) * len(names) * sc.workload.requests
        bar = tqdm(total=total, desc=sc.name, unit="request", leave=False, mininterval=0.5)
    tick = (lambda: bar.update(1)) if bar is not None else None
    t0 = time.perf_counter()
    units = [(i, name) for i in range(len(cases)) for name in names]
    if workers > 1 or executor != "local":
        results: Any = _run_units_elsewhere(sc, setup, units, workers, executor, address, bar)
    else:
        memo: dict[Any, CaseInputs] = {}
        results = (
            _run_unit(sc, setup, _case_inputs_once(memo, i, sc, setup, cases[i]), name, tick)
            for i, name in units
        )
    first_row = 0
    for (i, name), unit in zip(units, results, strict=True):
        case = cases[i]
        if name == names[0]:
            first_row = len(req_rows)  # where this case's rows start
        decisions += unit.decisions
        ctrl_wall[name] = ctrl_wall.get(name, 0.0) + unit.wall_s
        ctrl_decisions[name] = ctrl_decisions.get(name, 0) + unit.decisions
        req_rows.extend(unit.request_rows)
        chunk_frames.append(unit.chunks)
        if name != names[-1]:
            continue
        trace = setup.traces.get(case.trace)
        if trace is not None:
            trace_frames.append(
                _trace_samples(
                    case,
                    trace,
                    pd.DataFrame(req_rows[first_row:]),
                    MAX_RUN_SAMPLES // len(cases),
                )
            )
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    requests = pd.DataFrame(req_rows)[[*REQUEST_COLUMNS, "seed"]]
    chunks = pd.concat(chunk_frames, ignore_index=True)
    traces = (
        pd.concat(trace_frames, ignore_index=True)
        if trace_frames
        else pd.DataFrame(
            {
                "case": pd.Series(dtype="int64"),
                "trace": pd.Series(dtype="str"),
                "t_s": pd.Series(dtype="float64"),
                "bandwidth_bps": pd.Series(dtype="float64"),
            }
        )
    )
    summary = summarize(sc, requests, names, cases)
    summary["wall_s"] = wall
    summary["decisions"] = decisions
    summary["controller_wall_s"] = ctrl_wall
    summary["controller_decisions"] = ctrl_decisions
    summary["receiver"] = setup.receiver.description
    summary["decode_source"] = setup.receiver.decode_source
    summary["warnings"] = list(setup.warnings)
    summary["profile"] = setup.profile.name
    summary["ladder"] = list(setup.ladder)
    return RunResult(sc, setup.profile, requests, chunks, traces, summary, decisions, wall)


# Trace samples for the report's timelines (docs/contracts.md, traces.parquet). The report draws
# a request over [arrival - 3 %, arrival + 108 %] of max(SLO, TTFT) under one controller; each such
# window (every request under every controller) gets at least SPAN_BINS bins, none narrower than
# GRID_S, so a chunk's transfer shows; where windows overlap the finest wins, and OVERVIEW_BINS
# bins cover the rest of the run. Edges lie on a GRID_S grid (no sliver bins). A run holds at
# most about MAX_RUN_SAMPLES window samples, split evenly over its cases (bins widen evenly when a
# case needs more), so a 10,000-request run stays a few MB. Each value is the exact mean rate over
# its bin; a bin equal to the one before it is left out (the trace is a step function).
GRID_S = 1e-3
SPAN_BINS = 200
OVERVIEW_BINS = 2000
MAX_RUN_SAMPLES = 1_000_000
WINDOW_PAD = (0.03, 0.08)  # before / after a request's span, as fractions of it


def trace_label(case: Case) -> str:
    """The `trace` column of every run table: the trace file's name (or `synthetic:<kind>`);
    a scaling the scenario applies is recorded in scenario.yaml, not in the name."""
    return Path(case.trace).name


def _request_windows(requests: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, bin width), in GRID_S units, of each (request, controller) window."""
    ttft = np.nan_to_num(requests["ttft_s"].to_numpy(dtype=np.float64), posinf=0.0)
    span = np.maximum(np.maximum(requests["slo_s"].to_numpy(dtype=np.float64), ttft), GRID_S)
    arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
    start = np.floor((arrival - WINDOW_PAD[0] * span) / GRID_S).astype(np.int64)
    end = np.ceil((arrival + (1.0 + WINDOW_PAD[1]) * span) / GRID_S).astype(np.int64)
    step = np.maximum(np.floor(span / SPAN_BINS / GRID_S), 1).astype(np.int64)
    return np.maximum(start, 0), end, step


def _finest_steps(
    start: np.ndarray, end: np.ndarray, step: np.ndarray
) -> list[tuple[int, int, int]]:
    """Disjoint segments (a, b, step) where windows are open, each at its finest open window's
    step (a sweep over window starts and ends with a lazy-deletion heap)."""
    bounds = np.unique(np.concatenate([start, end]))
    order = np.argsort(start, kind="stable")
    heap: list[tuple[int, int]] = []  # (step, end)
    out: list[tuple[int, int, int]] = []
    j = 0
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        while j < len(order) and start[order[j]] <= a:
            i = order[j]
            heapq.heappush(heap, (int(step[i]), int(end[i])))
            j += 1
        while heap and heap[0][1] <= a:
            heapq.heappop(heap)
        if heap:
            k = heap[0][0]
            if out and out[-1][1] == a and out[-1][2] == k:
                out[-1] = (out[-1][0], b, k)
            else:
                out.append((a, b, k))
    return out


def _trace_samples(case: Case, trace: Any, requests: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Samples of the case's trace over the run, fine inside every request's window."""
    start, end, step = _request_windows(requests)
    last = max(int(end.max()), 1)
    segments = _finest_steps(start, end, step)
    widen = max(1.0, sum((b - a) / k for a, b, k in segments) / budget)
    parts = [np.arange(0, last, max(1, -(-last // OVERVIEW_BINS))), np.array([last])]
    parts += [np.arange(a, b, max(1, int(np.ceil(k * widen)))) for a, b, k in segments]
    edges = np.unique(np.concatenate(parts)) * GRID_S
    bps = np.diff(trace.cum_bytes(edges)) * 8.0 / np.diff(edges)
    keep = np.ones(len(bps), dtype=bool)
    keep[1:] = ~np.isclose(bps[1:], bps[:-1], rtol=1e-9, atol=0.0)
    return pd.DataFrame(
        {
            "case": case.label,
            "trace": trace_label(case),
            "t_s": edges[:-1][keep],
            "bandwidth_bps": bps[keep],
        }
    )


def controller_metrics(df: pd.DataFrame) -> dict[str, Any]:
    return {
        "ttft_p50_s": float(np.percentile(df["ttft_s"], 50)),
        "ttft_p95_s": float(np.percentile(df["ttft_s"], 95)),
        "slo_violation_rate": float(1.0 - df["met_slo"].mean()),
        "mean_quality": float(df["quality"].mean()),
        "mean_utility": float(df["utility"].mean()),
        "bytes_sent": float(df["bytes_sent"].mean()),  # mean per request
        "bytes_sent_total": int(df["bytes_sent"].sum()),
        "text_share": float(df["n_text"].sum() / df["n_chunks"].sum()),
        "n_requests": int(len(df)),
    }


def _with_bound_ratio(per: dict[str, dict[str, Any]]) -> None:
    """utility_vs_bound: each controller's mean utility over the bound's (None without a bound,
    or where the bound's utility is 0: nothing could be done)."""
    bound = per.get(BOUND_CONTROLLER, {}).get("mean_utility")
    for m in per.values():
        m["utility_vs_bound"] = float(m["mean_utility"] / bound) if bound else None


def summarize(
    sc: Scenario, requests: pd.DataFrame, names: Sequence[str], cases: Sequence[Case]
) -> dict[str, Any]:
    per = {n: controller_metrics(requests[requests["controller"] == n]) for n in names}
    _with_bound_ratio(per)
    case_list = []
    for c in cases:
        sub = requests[requests["case"] == c.label]
        cm = {n: controller_metrics(sub[sub["controller"] == n]) for n in names}
        _with_bound_ratio(cm)
        case_list.append(
            {
                "case": c.label,
                "trace": trace_label(c),
                "slo_s": c.slo_s,
                "seed": c.seed,
                "controllers": cm,
            }
        )
    return {
        "kvcast_version": __version__,
        "scenario": sc.name,
        "seed": list(sc.seeds) if len(sc.seeds) > 1 else sc.seeds[0],
        "objective": {**sc.objective.to_dict(), "rule": sc.objective.describe()},
        "controllers": per,
        "cases": case_list,
        "notes": BOUND_NOTE,
    }


def write_run(result: RunResult, run_dir: Path) -> Path:
    """Write the run folder exactly as docs/contracts.md 'A run folder' lists it."""
    return write_run_files(
        run_dir,
        scenario=result.scenario.to_dict(),
        summary=result.summary,
        requests=result.requests,
        chunks=result.chunks,
        traces=result.traces,
        profile=profile_to_dict(result.profile),
    )


def format_table(per: dict[str, dict[str, Any]]) -> str:
    """The per-controller figures `kvcast run` prints."""
    w = max(20, *(len(display_name(n)) for n in per))
    head = (
        f"{'controller':<{w}} {'TTFT p50':>9} {'TTFT p95':>9} {'SLO miss':>8} {'quality':>8} "
        f"{'utility':>8} {'vs bound':>8} {'MB/req':>9} {'TEXT':>6}"
    )
    lines = [head, "-" * len(head)]
    for name, m in per.items():
        vb = m.get("utility_vs_bound")
        lines.append(
            f"{display_name(name):<{w}} {m['ttft_p50_s']:>8.3f}s {m['ttft_p95_s']:>8.3f}s "
            f"{m['slo_violation_rate']:>8.1%} {m['mean_quality']:>8.4f} {m['mean_utility']:>8.4f} "
            f"{(f'{vb:.4f}' if vb is not None else '-'):>8} {m['bytes_sent'] / 1e6:>9.2f} "
            f"{m['text_share']:>6.1%}"
        )
    return "\n".join(lines)
