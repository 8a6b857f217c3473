"""A sweep's unit of work: one controller on one case, and its rows as Parquet.

A unit draws its case's inputs from the case's seed (sim.runner.case_inputs), so it gives the
same rows wherever and in whatever order it runs; its rows travel as Parquet bytes (compressed,
encoded by the worker), so a worker on another machine costs the driver a file write, not a
decode. A unit never raises: a failure comes back as a `UnitFailure` naming the unit, so one bad
unit does not lose the others' results.
"""

from __future__ import annotations

import io
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from operator import attrgetter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kvcast.controllers.registry import get_controller
from kvcast.errors import KvcastError

from .engine import ChunkRecord, RequestRecord, SimResult, simulate
from .inputs import CaseInputs, Setup
from .scenario import Scenario

Unit = tuple[int, str]  # (case index, controller)
UNIT_META_KEY = b"kvcast_unit"  # the requests part's schema metadata: the unit's figures

_REQUEST_FIELDS = tuple(f.name for f in fields(RequestRecord))
_CHUNK_FIELDS = tuple(f.name for f in fields(ChunkRecord))
# flat records by attribute access, not dataclasses.asdict's recursive copy (a third of the
# simulation's time in `kvcast bench sim`)
_request_values = attrgetter(*_REQUEST_FIELDS)
_chunk_values = attrgetter(*_CHUNK_FIELDS)


@dataclass(frozen=True)
class UnitResult:
    unit: Unit
    requests: bytes  # Parquet: its request rows (+ case, controller, trace, slo_s, seed)
    chunks: bytes  # Parquet: its chunk rows (+ case, controller)
    n_requests: int
    decisions: int
    wall_s: float  # simulating it, encoding excluded


@dataclass(frozen=True)
class UnitFailure:
    unit: Unit
    label: str  # "case-3 (trace), controller mpc"
    message: str
    input_error: bool  # a KvcastError (bad input): a one-line message is the whole story
    traceback: str


def unit_label(sc: Scenario, unit: Unit) -> str:
    case = sc.cases()[unit[0]]
    return f"{case.label} ({case.trace_name}), controller {unit[1]}"


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
        ack_delay_s=sc.link.ack_delay_s,
    )
    if not getattr(ctrl, "is_bound", False):
        return run(ci.requests, ci.costs)
    parts = [run([r], [c]) for r, c in zip(ci.requests, ci.costs, strict=True)]
    return SimResult(
        [r for p in parts for r in p.requests],
        [c for p in parts for c in p.chunks],
        sum(p.decisions for p in parts),
    )


def _parquet(columns: dict[str, list[Any]], meta: dict[str, Any] | None = None) -> bytes:
    table = pa.table(columns)
    if meta is not None:
        table = table.replace_schema_metadata({UNIT_META_KEY: json.dumps(meta).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _columns(values: list[tuple[Any, ...]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    if not values:
        return {n: [] for n in names}
    return {n: list(col) for n, col in zip(names, zip(*values, strict=True), strict=True)}


def run_unit(
    sc: Scenario,
    setup: Setup,
    case_inputs: Callable[[int], CaseInputs],
    unit: Unit,
    tick: Callable[[], None] | None = None,
    run: Callable[..., SimResult] = run_controller,
) -> UnitResult | UnitFailure:
    """Simulate one unit; `case_inputs(index)` gives its case's inputs (drawn once per case where
    the caller keeps them). `tick` is called as each request gets its first token. `run` runs
    the controller on the case (`run_controller`, or the emulation's `emulate_controller`)."""
    index, name = unit
    try:
        ci = case_inputs(index)
        case = ci.case
        ctrl = get_controller(name, **sc.controller_params.get(name, {}))
        t0 = time.perf_counter()
        res = run(sc, setup, ci, ctrl, tick)
        wall = time.perf_counter() - t0
        n = len(res.requests)
        req = _columns([_request_values(r) for r in res.requests], _REQUEST_FIELDS)
        req.update(
            case=[case.label] * n,
            controller=[name] * n,
            trace=[case.trace_name] * n,
            seed=[case.seed] * n,
        )
        chunks = {"case": [case.label] * len(res.chunks), "controller": [name] * len(res.chunks)}
        chunks.update(_columns([_chunk_values(c) for c in res.chunks], _CHUNK_FIELDS))
        meta = {"n_requests": n, "decisions": res.decisions, "wall_s": wall}
        return UnitResult(unit, _parquet(req, meta), _parquet(chunks), n, res.decisions, wall)
    except Exception as exc:  # a unit never raises: its failure is reported, the rest go on
        return UnitFailure(
            unit,
            unit_label(sc, unit),
            str(exc),
            isinstance(exc, KvcastError),
            traceback.format_exc(),
        )
