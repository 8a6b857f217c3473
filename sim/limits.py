"""How much memory a run needs, estimated before it starts, and the refusal when it cannot fit.

A run simulates (case, controller) units (sim.units); a unit holds its chunk rows (records, then
columns, then Arrow) until it has encoded them as Parquet, and a finished unit's rows are
compressed, in memory or as parts on disk (sim.parts). At the end the run's request table is
assembled in memory; its chunk rows are streamed into chunks.parquet one unit at a time. Measured
on this project's 2-core machine (`kvcast run --no-report` of a 9,000-token, 6-chunk workload,
4 controllers, in one process: 3,000, 30,000 and 90,000 requests per case, peak RSS 342, 857 and
1,916 MiB; the 1,040,000-request-run `study` on 2 workers, 816 MiB summed over its processes): a
running unit's chunk row costs about 2.9 KB, a request row of the assembled table 250 B, a
finished unit's chunk row kept in memory 45 B, and the process starts at about 350 MB;
tests/sim/test_limits.py checks the estimate against a measured peak. A run whose estimate
exceeds what the machine has available is refused before any work, with both figures;
`kvcast run --no-memory-limit` runs it anyway.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from kvcast.errors import InputError

from .scenario import Scenario

BASE_BYTES = 350e6  # interpreter, numpy, pandas, numba, SimPy, the profile and traces
UNIT_CHUNK_ROW_BYTES = 2900.0  # a running unit's chunk row, until the unit is encoded
REQUEST_ROW_BYTES = 250.0  # a row of the run's request table, assembled at the end
KEPT_CHUNK_ROW_BYTES = 45.0  # a finished unit's chunk row, compressed, where parts are in memory


@dataclass(frozen=True)
class RunSize:
    request_runs: int  # cases x controllers x requests
    chunk_rows: int
    bytes: float

    def describe(self) -> str:
        return (
            f"{self.request_runs:,} request-runs, {self.chunk_rows:,} chunk rows, about "
            f"{self.bytes / 2**30:.1f} GiB"
        )


def run_size(
    sc: Scenario, n_controllers: int | None = None, workers: int = 1, parts_in_memory: bool = True
) -> RunSize:
    """The estimate for every case x controller of `sc` (mean context length), with `workers`
    units running at once and finished units kept in memory or (`parts_in_memory=False`) on
    disk."""
    ctx = sc.workload.context_tokens
    if ctx.kind == "uniform":
        mean_tokens = (ctx.values[0] + ctx.values[1]) / 2
    else:
        mean_tokens = sum(ctx.values) / len(ctx.values)
    chunks = math.ceil(mean_tokens / sc.chunk_tokens)
    controllers = n_controllers if n_controllers is not None else len(sc.controllers)
    request_runs = len(sc.cases()) * controllers * sc.workload.requests
    rows = request_runs * chunks
    unit_rows = sc.workload.requests * chunks
    need = BASE_BYTES + request_runs * REQUEST_ROW_BYTES
    need += min(workers, len(sc.cases()) * controllers) * unit_rows * UNIT_CHUNK_ROW_BYTES
    if parts_in_memory:
        need += rows * KEPT_CHUNK_ROW_BYTES
    return RunSize(request_runs, rows, need)


def available_bytes() -> float:
    """Memory the kernel says is available now (Linux /proc/meminfo), else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(
    sc: Scenario, n_controllers: int | None = None, workers: int = 1, parts_in_memory: bool = True
) -> RunSize:
    """Refuse (InputError) a run that would need more memory than is available."""
    size = run_size(sc, n_controllers, workers, parts_in_memory)
    limit = available_bytes()
    if size.bytes > limit:
        raise InputError(
            f"{sc.source}: field 'workload.requests': this run needs {size.describe()}, and "
            f"{limit / 2**30:.1f} GiB are available; run fewer requests, cases or controllers "
            "(or pass --no-memory-limit to try anyway)"
        )
    return size
