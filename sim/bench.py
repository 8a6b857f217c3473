"""`kvcast bench sim`: how fast the simulator decides and simulates chunks.

The sweep: one mahimahi trace scaled x1000 (cellular Mbit/s to Gbit/s), N requests arriving every
2 s (so some overlap and share the link and GPU), 9,000-token contexts (6 chunks of 1,500),
Llama-3.1-8B-shaped KV on one A100, SLO 1 s, six controllers. Reports the wall time of the whole
sweep (setup included) and chunk decisions simulated per second.
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .runner import build_setup, run_scenario
from .scenario import scenario_from_dict


def bench_sim(
    profile: str,
    trace: str,
    requests: int,
    controllers: list[str],
    progress: bool = False,
    workers: int = 1,
    executor: str = "local",
) -> dict[str, Any]:
    """Run the sweep; its figures (decisions per second overall and per controller, SLO misses).
    `progress`: a progress bar on stderr (request-runs done, ETA)."""
    raw = {
        "name": "bench-sim",
        "seed": 0,
        "slo_s": 1.0,
        "model": "llama-3.1-8b",
        "gpu": "a100",
        "profile": profile,
        "chunk_tokens": 1500,
        "workload": {
            "requests": requests,
            "arrival": {"process": "fixed", "interval_s": 2.0},
            "context_tokens": 9000,
        },
        "link": {"trace": trace, "scale": 1000},
        "receiver": {"decode_melem_per_s": 20000},
        "controllers": controllers,
    }
    t0 = time.perf_counter()
    sc = scenario_from_dict(raw, source="kvcast bench sim", base_dir=Path.cwd())
    sc = replace(sc, controllers=tuple(controllers))  # no implicit oracle beyond the list
    setup = build_setup(sc)
    res = run_scenario(sc, setup=setup, progress=progress, workers=workers, executor=executor)
    wall = time.perf_counter() - t0
    cw, cd = res.summary["controller_wall_s"], res.summary["controller_decisions"]
    return {
        "requests": requests,
        "workers": workers,
        "executor": executor,
        "controllers": controllers,
        "trace": trace,
        "chunk_decisions": res.decisions,
        "sweep_wall_s": wall,
        "simulate_wall_s": res.sim_wall_s,
        "decisions_per_s": res.decisions / res.sim_wall_s,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "target_sweep_wall_s": 60.0,
        "per_controller": {
            n: {"wall_s": cw[n], "decisions": cd[n], "decisions_per_s": cd[n] / cw[n]}
            for n in controllers
        },
        "slo_miss_rate": {
            n: float(1 - res.requests[res.requests["controller"] == n]["met_slo"].mean())
            for n in controllers
        },
    }


def format_bench(figures: dict[str, Any]) -> str:
    """The figures as the lines `kvcast bench sim` prints."""
    per = figures["per_controller"]
    return "\n".join(
        [
            f"kvcast bench sim: {figures['requests']} requests x {len(per)} controllers over "
            f"{figures['trace']} (x1000), {figures['workers']} worker(s) ({figures['executor']})",
            f"  chunk decisions simulated: {figures['chunk_decisions']}",
            f"  sweep wall time:           {figures['sweep_wall_s']:.2f} s  (target < 60 s)",
            f"  decisions per second:      {figures['decisions_per_s']:.0f}",
            "  per controller (decisions/s): "
            + ", ".join(f"{n} {v['decisions_per_s']:.0f}" for n, v in per.items()),
            "  SLO-violation rate:        "
            + ", ".join(f"{k} {v:.1%}" for k, v in figures["slo_miss_rate"].items()),
        ]
    )
