"""Run a scenario: every case x every controller, then the run folder (docs/contracts.md).

A run is a set of units, one controller on one case (sim.units), run by an executor
(sim.executors: this process, local worker processes, or Ray). Each finished unit's rows go to a
part store (sim.parts): in memory, or Parquet parts in a folder, where an interrupted run finds
them again and resumes without redoing them. The tables are assembled in the units' order, so
they are the same whatever the executor, the number of workers and the order units finished in.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from kvcast import __version__
from kvcast.chunk_cost_file import ChunkCostTable
from kvcast.errors import InputError
from kvcast.profile_format import CodecProfile, profile_to_dict
from kvcast.run_schema import REQUEST_COLUMNS, write_run_files

from .executors import EXECUTORS, run_units
from .inputs import Setup, build_setup
from .limits import check_fits
from .parts import DiskParts, MemoryParts, Parts, chunk_tables, request_table
from .scenario import Scenario
from .summary import summarize
from .trace_samples import run_trace_samples
from .units import Unit, UnitFailure


@dataclass
class RunResult:
    scenario: Scenario
    profile: CodecProfile
    requests: pd.DataFrame
    traces: pd.DataFrame
    summary: dict[str, Any]
    decisions: int
    sim_wall_s: float
    parts: Parts  # every unit's rows (the chunk rows are read from here when written)
    units: list[Unit]  # in the run's order

    def chunk_tables(self) -> Iterator[pa.Table]:
        """The chunk rows, unit by unit in the run's order (a study's never all in memory)."""
        return chunk_tables(self.parts, self.units)

    @property
    def chunks(self) -> pd.DataFrame:
        """Every chunk row in one table (in memory: for small runs and tests)."""
        return pa.concat_tables(list(self.chunk_tables())).to_pandas()


def run_identity(sc: Scenario, names: Sequence[str], setup: Setup) -> dict[str, Any]:
    """What a run's rows depend on, so that parts computed for another run are never mixed in:
    kvcast's version, the resolved scenario, the controllers, the codec profile, the traces'
    content and (`costing: real_codec`) the measured chunk costs. Not kvcast's own code beyond its
    version: after changing it, start afresh."""
    digest = hashlib.sha256()
    for ref, trace in sorted(setup.traces.items()):
        digest.update(ref.encode())
        digest.update(np.ascontiguousarray(trace.knot_t).tobytes())
        digest.update(np.ascontiguousarray(trace.knot_cum).tobytes())
    table = getattr(setup.coster, "table", None)
    if table is not None:
        digest.update(repr(table).encode())
    return {
        "kvcast_version": __version__,
        "scenario": sc.to_dict(),
        "controllers": list(names),
        "profile": profile_to_dict(setup.profile),
        "inputs_sha256": digest.hexdigest(),
    }


class UnitsFailed(InputError):
    """Some units failed; the others' rows are kept (in `parts_dir` where there was one)."""


def _failure_error(failures: list[UnitFailure], total: int, where: str | None) -> Exception:
    first = failures[0]
    kept = (
        f"; the {total - len(failures)} other unit(s) are kept in {where}: run the same command "
        "again to resume"
        if where
        else ""
    )
    head = f"{len(failures)} of {total} unit(s) failed" if len(failures) > 1 else "a unit failed"
    if all(f.input_error for f in failures):
        return UnitsFailed(f"{head}; {first.label}: {first.message}{kept}")
    bug = next(f for f in failures if not f.input_error)
    return RuntimeError(f"{head}; {bug.label}:\n{bug.traceback}{kept}")


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
    parts_dir: Path | None = None,
) -> RunResult:
    """Simulate every case with every controller.

    `chunk_costs`: the measured chunk-cost table that `costing: real_codec` needs.
    `memory_limit`: refuse a run whose memory estimate exceeds what is available (sim.limits).
    `workers`, `executor`, `address`: where the (case, controller) units run (sim.executors);
    the results are the same tables whatever they are.
    `parts_dir`: keep each finished unit's rows there as Parquet parts, and take the units
    already there from an earlier, interrupted run of the same scenario (else: in memory).
    A failing unit does not stop the others; the error names it once all have run."""
    if executor not in EXECUTORS:
        raise InputError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    names = list(controllers or sc.controllers)
    if memory_limit:
        check_fits(sc, len(names), workers, parts_in_memory=parts_dir is None)
    setup = setup or build_setup(sc, chunk_costs)
    cases = sc.cases()
    units = [(i, name) for i in range(len(cases)) for name in names]
    parts: Parts = (
        DiskParts(parts_dir, run_identity(sc, names, setup), names)
        if parts_dir is not None
        else MemoryParts()
    )
    finished = parts.finished(units)
    todo = [u for u in units if u not in finished]
    bar = _progress_bar(sc, units, finished, parts) if progress else None
    in_process = workers == 1 and executor == "local"  # per-request progress only here
    tick: Callable[[], None] | None = (
        (lambda: bar.update(1)) if bar is not None and in_process else None
    )
    failures: list[UnitFailure] = []
    units_done = len(finished)
    t0 = time.perf_counter()
    try:
        for outcome in run_units(sc, setup, todo, workers, executor, address, tick):
            units_done += 1
            if isinstance(outcome, UnitFailure):
                failures.append(outcome)
            else:
                parts.put(outcome)
                if bar is not None and not in_process:  # a unit's requests at once
                    bar.update(outcome.n_requests)
            if bar is not None:
                bar.set_postfix_str(f"units {units_done}/{len(units)}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    if failures:  # named in the run's order, whatever order they finished in
        order = {u: i for i, u in enumerate(units)}
        failures.sort(key=lambda f: order[f.unit])
        raise _failure_error(failures, len(units), parts.where)
    return assemble_run(sc, setup, names, units, parts, wall)


def assemble_run(
    sc: Scenario,
    setup: Setup,
    names: Sequence[str],
    units: list[Unit],
    parts: Parts,
    wall: float,
) -> RunResult:
    """Every unit's rows (all in `parts`) into one run: tables in the units' order, the summary."""
    cases = sc.cases()
    requests = request_table(parts, units).to_pandas()[[*REQUEST_COLUMNS, "seed"]]
    figures = [parts.figures(u) for u in units]
    ctrl_wall = {n: 0.0 for n in names}
    ctrl_decisions = {n: 0 for n in names}
    for (_, name), f in zip(units, figures, strict=True):
        ctrl_wall[name] += f["wall_s"]
        ctrl_decisions[name] += f["decisions"]
    decisions = sum(ctrl_decisions.values())
    summary = summarize(sc, requests, list(names), cases)
    summary["wall_s"] = wall
    summary["decisions"] = decisions
    summary["controller_wall_s"] = ctrl_wall
    summary["controller_decisions"] = ctrl_decisions
    summary["receiver"] = setup.receiver.description
    summary["decode_source"] = setup.receiver.decode_source
    summary["warnings"] = list(setup.warnings)
    summary["profile"] = setup.profile.name
    summary["ladder"] = list(setup.ladder)
    traces = run_trace_samples(cases, setup.traces, requests)
    return RunResult(sc, setup.profile, requests, traces, summary, decisions, wall, parts, units)


def _progress_bar(sc: Scenario, units: list[Unit], finished: set[Unit], parts: Parts) -> Any:
    """Request-runs done (one tick per request in this process, per unit on workers), units
    done and the ETA; a resumed run starts at what its parts hold."""
    total = len(units) * sc.workload.requests
    bar = tqdm(total=total, desc=sc.name, unit="request", leave=False, mininterval=0.5)
    bar.update(sum(parts.figures(u)["n_requests"] for u in finished))
    return bar


def write_run(result: RunResult, run_dir: Path) -> Path:
    """Write the run folder exactly as docs/contracts.md 'A run folder' lists it."""
    return write_run_files(
        run_dir,
        scenario=result.scenario.to_dict(),
        summary=result.summary,
        requests=result.requests,
        chunks=result.chunk_tables(),
        traces=result.traces,
        profile=profile_to_dict(result.profile),
    )
