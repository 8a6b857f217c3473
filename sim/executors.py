"""Where a sweep's units run: in this process, on forked processes of this machine (`local`
with workers > 1), or on Ray (`ray`: an existing cluster at `address`, else a local Ray started
and stopped here). Every executor yields each unit's outcome (`UnitResult` or `UnitFailure`) as
it finishes; the order differs, the outcomes do not (a unit draws its inputs from its case's
seed).

Units are sent in tasks: all of a case's units together where there are enough cases to keep
every worker busy (its inputs are then drawn once, on one worker), one unit per task otherwise.
"""

from __future__ import annotations

import multiprocessing
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kvcast.errors import InputError

from .inputs import CaseInputs, Setup, case_inputs
from .scenario import Scenario
from .units import Unit, UnitFailure, UnitResult, run_unit

EXECUTORS = ("local", "ray")
Outcome = UnitResult | UnitFailure
Task = list[Unit]
# Cases per worker below which a case's units are split over tasks: balance before locality
# (with fewer, a worker can be left alone with the last big case).
_TASKS_PER_WORKER = 16

# A worker process's inputs of the case it ran last, keyed by (run token, case index).
_WORKER_CASE: dict[Any, CaseInputs] = {}
# What forked local workers inherit: (run token, scenario, setup) of the run in progress.
_FORKED: tuple[str, Scenario, Setup] | None = None


def _case_memo(memo: dict[Any, CaseInputs], token: str, sc: Scenario, setup: Setup) -> Any:
    """`case_inputs` by case index, drawn once while `memo` holds that case (one at a time)."""

    def get(index: int) -> CaseInputs:
        key = (token, index)
        if key not in memo:
            memo.clear()
            memo[key] = case_inputs(sc, setup, sc.cases()[index])
        return memo[key]

    return get


def tasks_of(units: Sequence[Unit], workers: int) -> list[Task]:
    """The units grouped into tasks (see the module's docstring), in the units' order."""
    by_case: dict[int, Task] = {}
    for unit in units:
        by_case.setdefault(unit[0], []).append(unit)
    if len(by_case) >= _TASKS_PER_WORKER * workers:
        return list(by_case.values())
    return [[u] for u in units]


def _run_task(shared: tuple[str, Scenario, Setup], task: Task) -> list[Outcome]:
    token, sc, setup = shared
    get = _case_memo(_WORKER_CASE, token, sc, setup)
    return [run_unit(sc, setup, get, unit) for unit in task]


def _forked_task(task: Task) -> list[Outcome]:
    assert _FORKED is not None
    return _run_task(_FORKED, task)


def _worker_signals() -> None:
    """A forked worker must not inherit the CLI's SIGTERM handler (the pool stops its workers
    with SIGTERM, which would then raise KeyboardInterrupt in each and print a traceback), and
    leaves Ctrl-C to the parent, which terminates the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_units(
    sc: Scenario,
    setup: Setup,
    units: Sequence[Unit],
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    tick: Callable[[], None] | None = None,
) -> Iterator[Outcome]:
    """Each unit's outcome as it finishes. `tick` (progress per request) only in this process."""
    if executor not in EXECUTORS:
        raise InputError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    token = uuid.uuid4().hex
    if executor == "ray":
        yield from _on_ray((token, sc, setup), tasks_of(units, workers), workers, address)
    elif workers > 1:
        yield from _on_processes((token, sc, setup), tasks_of(units, workers), workers)
    else:
        get = _case_memo({}, token, sc, setup)
        for unit in units:
            yield run_unit(sc, setup, get, unit, tick)


def _on_processes(
    shared: tuple[str, Scenario, Setup], tasks: list[Task], workers: int
) -> Iterator[Outcome]:
    global _FORKED
    _FORKED = shared
    try:
        with multiprocessing.get_context("fork").Pool(workers, _worker_signals) as pool:
            for outcomes in pool.imap_unordered(_forked_task, tasks):
                yield from outcomes
    finally:
        _FORKED = None


def _on_ray(
    shared: tuple[str, Scenario, Setup], tasks: list[Task], workers: int, address: str | None
) -> Iterator[Outcome]:
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
        remote = ray.remote(_run_task)
        shared_ref = ray.put(shared)
        pending = [remote.remote(shared_ref, task) for task in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(done[0])
    finally:
        if started:
            ray.shutdown()
