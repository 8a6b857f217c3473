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
import signal
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
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
_FORKED: Any = None  # Shared


def _case_memo(
    memo: OrderedDict[Any, CaseInputs], token: str, sc: Scenario, setup: Setup, keep: int
) -> Any:
    """`case_inputs` by case index, drawn once while `memo` holds that case: the one in use and
    the most recently used others, up to `keep` requests in all (0 where a case's units run
    together and its inputs are not needed again)."""
    cases = sc.cases()

    def get(index: int) -> CaseInputs:
        key = (token, index)
        if key in memo:
            memo.move_to_end(key)
            return memo[key]
        ci = case_inputs(sc, setup, cases[index])
        held = sum(len(c.requests) for c in memo.values())
        while memo and held + len(ci.requests) > keep:
            held -= len(memo.popitem(last=False)[1].requests)
        memo[key] = ci
        return ci

    return get


def _groups_cases(units: Sequence[Unit], workers: int) -> bool:
    """Whether a case's units go in one task: with enough cases to keep every worker busy."""
    return len({u[0] for u in units}) >= _TASKS_PER_WORKER * workers


def tasks_of(units: Sequence[Unit], workers: int) -> list[Task]:
    """The units grouped into tasks (see the module's docstring), in the units' order."""
    if not _groups_cases(units, workers):
        return [[u] for u in units]
    by_case: dict[int, Task] = {}
    for unit in units:
        by_case.setdefault(unit[0], []).append(unit)
    return list(by_case.values())


Shared = tuple[str, Scenario, Setup, int]  # (run token, scenario, setup, requests to keep)


def _run_task(shared: Shared, task: Task) -> list[Outcome]:
    token, sc, setup, keep = shared
    get = _case_memo(_WORKER_CASES, token, sc, setup, keep)
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
    """Each unit's outcome as it finishes. `tick` (progress per request) only in this process.
    `executor`: one of EXECUTORS (checked by the caller, before any set-up)."""
    token = uuid.uuid4().hex
    keep = 0 if _groups_cases(units, workers) else _MEMO_REQUESTS
    dispatch = _Dispatch(tasks_of(units, workers), longest_first=keep > 0)
    if executor == "ray":
        yield from _on_ray((token, sc, setup, keep), dispatch, workers, address)
    elif workers > 1:
        yield from _on_processes((token, sc, setup, keep), dispatch, workers)
    else:
        get = _case_memo(OrderedDict(), token, sc, setup, _MEMO_REQUESTS)
        for unit in units:
            yield run_unit(sc, setup, get, unit, tick)


class _Dispatch:
    """Which task to send next. Tasks of single units go longest first (longest-first keeps a
    worker from being left alone with a big unit at the end): a unit is expected to take what
    the units of its controller took so far, on average; a controller not measured yet comes
    first, so every controller is measured early. Tasks of whole cases (all alike) go in order."""

    def __init__(self, tasks: list[Task], longest_first: bool) -> None:
        self.pending = list(reversed(tasks))  # popped from the end
        self.longest_first = longest_first
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
        if not self.longest_first:
            return self.pending.pop()
        # the last of the longest: the earliest in the run's order among equals
        best = max(range(len(self.pending)), key=lambda i: (self._expected(self.pending[i]), i))
        return self.pending.pop(best)

    def done(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if isinstance(o, UnitResult):
                seen = self._seconds.setdefault(o.unit[1], [0.0, 0])
                seen[0] += o.wall_s
                seen[1] += 1


def _on_processes(shared: Shared, dispatch: _Dispatch, workers: int) -> Iterator[Outcome]:
    """Forked workers (a process pool that says so when a worker dies, rather than waiting for
    its task forever); two tasks per worker in flight, so none waits for this process. On an
    error, Ctrl-C or SIGTERM the workers are stopped at once, not when their units end."""
    global _FORKED
    _FORKED = shared
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_signals)
    in_flight: set[Future[list[Outcome]]] = set()
    try:
        while dispatch.pending or in_flight:
            while dispatch.pending and len(in_flight) < 2 * workers:
                in_flight.add(pool.submit(_forked_task, dispatch.next()))
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                outcomes = future.result()  # BrokenProcessPool if a worker died
                dispatch.done(outcomes)
                yield from outcomes
    except BrokenProcessPool:
        _stop(pool)
        raise RuntimeError(
            "a worker process died (killed, e.g. out of memory, or crashed); the units finished "
            "before it are kept where the run keeps its parts"
        ) from None
    except BaseException:
        _stop(pool)
        raise
    else:
        pool.shutdown()
    finally:
        _FORKED = None


def _stop(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers now (the executor's own shutdown would wait for them)."""
    for process in list(getattr(pool, "_processes", {}).values()):  # CPython's worker table
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _on_ray(
    shared: Shared, dispatch: _Dispatch, workers: int, address: str | None
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
    in_flight: list[Any] = []
    try:
        remote = ray.remote(_run_task)
        shared_ref = ray.put(shared)
        slots = 2 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
        while dispatch.pending or in_flight:
            while dispatch.pending and len(in_flight) < slots:
                in_flight.append(remote.remote(shared_ref, dispatch.next()))
            done, in_flight = ray.wait(in_flight, num_returns=1)
            outcomes = ray.get(done[0])
            dispatch.done(outcomes)
            yield from outcomes
    finally:
        for ref in in_flight:  # an error or Ctrl-C: nothing keeps running on the cluster
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
