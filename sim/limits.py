"""How much memory a run needs, estimated before it starts, and the refusal when it cannot fit.

A run keeps every chunk's row (and every request's) of every case and controller in memory until
it writes the run folder. Measured on this project's 2-core machine (`kvcast run` of a 9,000-token,
6-chunk workload, 4 controllers, 5,000 and 20,000 requests: peak RSS 465 and 852 MB), a chunk row
costs about 1.1 KB and the process starts at about 350 MB; tests/sim/test_limits.py checks the
estimate against a measured peak. A run whose estimate exceeds what the machine has available is
refused before any work, with both figures; `kvcast run --no-memory-limit` runs it anyway.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from kvcast.errors import InputError

from .scenario import Scenario

BASE_BYTES = 350e6  # interpreter, numpy, pandas, numba, SimPy, the profile and traces
CHUNK_ROW_BYTES = 1100.0  # one chunk of one request of one controller, until the run is written
REQUEST_ROW_BYTES = 600.0


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


def run_size(sc: Scenario, n_controllers: int | None = None) -> RunSize:
    """The estimate for every case x controller of `sc` (mean context length)."""
    ctx = sc.workload.context_tokens
    if ctx.kind == "uniform":
        mean_tokens = (ctx.values[0] + ctx.values[1]) / 2
    else:
        mean_tokens = sum(ctx.values) / len(ctx.values)
    chunks = math.ceil(mean_tokens / sc.chunk_tokens)
    controllers = n_controllers if n_controllers is not None else len(sc.controllers)
    request_runs = len(sc.cases()) * controllers * sc.workload.requests
    rows = request_runs * chunks
    return RunSize(
        request_runs, rows, BASE_BYTES + rows * CHUNK_ROW_BYTES + request_runs * REQUEST_ROW_BYTES
    )


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


def check_fits(sc: Scenario, n_controllers: int | None = None) -> RunSize:
    """Refuse (InputError) a run that would need more memory than is available."""
    size = run_size(sc, n_controllers)
    limit = available_bytes()
    if size.bytes > limit:
        raise InputError(
            f"{sc.source}: field 'workload.requests': this run needs {size.describe()}, and "
            f"{limit / 2**30:.1f} GiB are available; run fewer requests, cases or controllers "
            "(or pass --no-memory-limit to try anyway)"
        )
    return size
