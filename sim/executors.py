"""Where a sweep's units run: in this process, on forked processes of this machine (`local`
with workers > 1), or on Ray (`ray`: an existing cluster at `address`, else a local Ray started
and stopped here). Every executor yields each unit's outcome (`UnitResult` or `UnitFailure`) as
it finishes; the order differs, the outcomes do not (a unit draws its inputs from its case's
seed).

Units are sent in tasks: all of a case's units together where there are enough cases to keep
every worker busy (its inputs are then drawn once, on one worker), one unit per task otherwise;
the task expected to take longest goes first (`_Dispatch`), two per worker in flight.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import signal
import uuid
from collections import OrderedDict
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

# A worker process's inputs of the cases it ran last, keyed by (run token, case index), most
# recent last; at most _MEMO_REQUESTS requests' worth (a few KB each) are kept.
_WORKER_CASES: OrderedDict[Any, CaseInputs] = OrderedDict()
_MEMO_REQUESTS = 20_000
# What forked local workers inherit: (run token, scenario, setup) of the run in progress.
_FORKED: tuple[str, Scenario, Setup] | None = None


def _case_memo(memo: OrderedDict[Any, CaseInputs], token: str, sc: Scenario, setup: Setup) -> Any:
    """`case_inputs` by case index, drawn once while `memo` holds that case (the most recently
    used cases, up to _MEMO_REQUESTS requests in all; always the one in use)."""

    def get(index: int) -> CaseInputs:
        key = (token, index)
        if key in memo:
            memo.move_to_end(key)
            return memo[key]
        ci = case_inputs(sc, setup, sc.cases()[index])
        held = sum(len(c.requests) for c in memo.values())
        while memo and held + len(ci.requests) > _MEMO_REQUESTS:
            held -= len(memo.popitem(last=False)[1].requests)
        memo[key] = ci
        return ci

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
    get = _case_memo(_WORKER_CASES, token, sc, setup)
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
        get = _case_memo(OrderedDict(), token, sc, setup)
        for unit in units:
            yield run_unit(sc, setup, get, unit, tick)


class _Dispatch:
    """Which task to send next: the one expected to take longest (longest-first keeps a worker
    from being left alone with a big unit at the end). A unit is expected to take what the
    units of its controller took so far, on average; a controller not measured yet comes first,
    so every controller is measured early."""

    def __init__(self, tasks: list[Task]) -> None:
        self.pending = list(tasks)
        self._seconds: dict[str, list[float]] = {}

    def _expected(self, task: Task) -> float:
        total = 0.0
        for _, name in task:
            seen = self._seconds.get(name)
            if not seen:
                return math.inf
            total += seen[0] / seen[1]
        return total

    def next(self) -> Task:
        best = max(range(len(self.pending)), key=lambda i: self._expected(self.pending[i]))
        return self.pending.pop(best)

    def done(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if isinstance(o, UnitResult):
                seen = self._seconds.setdefault(o.unit[1], [0.0, 0])
                seen[0] += o.wall_s
                seen[1] += 1


def _on_processes(
    shared: tuple[str, Scenario, Setup], tasks: list[Task], workers: int
) -> Iterator[Outcome]:
    global _FORKED
    _FORKED = shared
    dispatch = _Dispatch(tasks)
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    try:
        with multiprocessing.get_context("fork").Pool(workers, _worker_signals) as pool:
            in_flight = 0
            while dispatch.pending or in_flight:
                while dispatch.pending and in_flight < 2 * workers:  # none waits for the parent
                    pool.apply_async(
                        _forked_task, (dispatch.next(),), callback=finished.put,
                        error_callback=finished.put,
                    )  # fmt: skip
                    in_flight += 1
                outcomes = finished.get()
                in_flight -= 1
                if isinstance(outcomes, BaseException):  # the pool itself failed
                    raise outcomes
                dispatch.done(outcomes)
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
        slots = 2 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
        dispatch = _Dispatch(tasks)
        in_flight: list[Any] = []
        while dispatch.pending or in_flight:
            while dispatch.pending and len(in_flight) < slots:
                in_flight.append(remote.remote(shared_ref, dispatch.next()))
            done, in_flight = ray.wait(in_flight, num_returns=1)
            outcomes = ray.get(done[0])
            dispatch.done(outcomes)
            yield from outcomes
    finally:
        if started:
            ray.shutdown()
