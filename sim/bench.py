"""`kvcast bench sim`: how fast the simulator decides and simulates chunks; `kvcast bench sweep`:
how a sweep scales over workers and executors.

`bench sim`'s sweep: one mahimahi trace scaled x1000 (cellular Mbit/s to Gbit/s), N requests arriving every
2 s (so some overlap and share the link and GPU), 9,000-token contexts (6 chunks of 1,500),
Llama-3.1-8B-shaped KV on one A100, SLO 1 s, six controllers. Reports the wall time of the whole
sweep (setup included) and chunk decisions simulated per second.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvcast.errors import InputError

from .inputs import build_setup
from .runner import run_scenario
from .scenario import Scenario, scenario_from_dict


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


SWEEP_CONFIGS = (("local", 1), ("local", 2), ("ray", 2))  # (executor, workers)


def sweep_scenario(
    profile: str, traces: list[str], requests: int, controllers: list[str], slos: list[float]
) -> Scenario:
    """`kvcast bench sweep`'s study: every trace (x1000) x SLO, Poisson arrivals at 0.2/s,
    4,500-15,000-token contexts, Mistral-7B-shaped KV on an A40 (as lte-scaled)."""
    raw = {
        "name": "bench-sweep",
        "seed": 0,
        "slo_s": slos,
        "model": "mistral-7b",
        "gpu": "a40",
        "profile": profile,
        "chunk_tokens": 1500,
        "workload": {
            "requests": requests,
            "arrival": {"process": "poisson", "rate_per_s": 0.2},
            "context_tokens": {"uniform": [4500, 15000]},
        },
        "link": {"trace": traces, "scale": 1000, "delay_s": 0.005},
        "receiver": {"decode_melem_per_s": 20000},
        "controllers": controllers,
    }
    sc = scenario_from_dict(raw, source="kvcast bench sweep", base_dir=Path.cwd())
    return replace(sc, controllers=tuple(controllers))  # no implicit oracle beyond the list


def bench_sweep(
    sc: Scenario,
    configs: tuple[tuple[str, int], ...] = SWEEP_CONFIGS,
    progress: bool = False,
) -> dict[str, Any]:
    """The same sweep under each (executor, workers), one after another in this process:
    request-runs per second each, their ratios, and whether every run gave the same tables.
    Each is timed after a warm-up (a one-request run: workers started, code compiled); a local
    Ray is started before and stopped after, its start-up timed apart from the sweep."""
    setup = build_setup(sc)
    warm = replace(sc, workload=replace(sc.workload, requests=1))
    ray_start_s = None
    runs: list[dict[str, Any]] = []
    reference = None
    ray_workers = [w for e, w in configs if e == "ray"]
    ray = _start_ray(max(ray_workers)) if ray_workers else None
    try:
        if ray is not None:
            ray_start_s = ray[1]
        for executor, workers in configs:
            run_scenario(warm, setup=setup, workers=workers, executor=executor, memory_limit=False)
            t0 = time.perf_counter()
            res = run_scenario(
                sc, setup=setup, workers=workers, executor=executor, progress=progress
            )
            wall = time.perf_counter() - t0
            n = len(res.requests)
            same = None
            if reference is None:
                reference = res
            else:
                same = res.requests.equals(reference.requests) and res.chunks.equals(
                    reference.chunks
                )
            runs.append(
                {
                    "executor": executor,
                    "workers": workers,
                    "request_runs": n,
                    "wall_s": wall,
                    "request_runs_per_s": n / wall,
                    "same_tables_as_first": same,
                }
            )
    finally:
        if ray is not None:
            ray[0].shutdown()
    by = {(r["executor"], r["workers"]): r["request_runs_per_s"] for r in runs}
    return {
        "scenario": sc.name,
        "cases": len(sc.cases()),
        "controllers": list(sc.controllers),
        "requests_per_case": sc.workload.requests,
        "runs": runs,
        "speedup_1_to_2_workers": _ratio(by, ("local", 2), ("local", 1)),
        "ray_vs_local_2_workers": _ratio(by, ("ray", 2), ("local", 2)),
        "ray_start_s": ray_start_s,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
    }


def _ratio(
    by: dict[tuple[str, int], float], a: tuple[str, int], b: tuple[str, int]
) -> float | None:
    return by[a] / by[b] if a in by and b in by else None


def _start_ray(workers: int) -> tuple[Any, float]:
    """A local Ray with `workers` CPUs, and the seconds it took to start."""
    try:
        import ray  # deferred: an optional extra (pip install 'kvcast[ray]'), slow to import
    except ModuleNotFoundError:
        raise InputError(
            "bench sweep runs Ray too: pip install 'kvcast[ray]' (or --configs local:1,local:2)"
        ) from None
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    return ray, time.perf_counter() - t0


def format_sweep(figures: dict[str, Any]) -> str:
    """The lines `kvcast bench sweep` prints."""
    lines = [
        f"kvcast bench sweep: {figures['cases']} cases x {len(figures['controllers'])} "
        f"controllers x {figures['requests_per_case']} requests "
        f"({figures['runs'][0]['request_runs']} request-runs per run), {figures['cpus']} CPUs",
    ]
    for r in figures["runs"]:
        same = {None: "", True: ", same tables", False: ", TABLES DIFFER"}[
            r["same_tables_as_first"]
        ]
        lines.append(
            f"  {r['executor']:<5} x{r['workers']}: {r['wall_s']:8.2f} s  "
            f"{r['request_runs_per_s']:9.0f} request-runs/s{same}"
        )
    if figures["speedup_1_to_2_workers"] is not None:
        lines.append(f"  1 -> 2 local workers: {figures['speedup_1_to_2_workers']:.2f}x")
    if figures["ray_vs_local_2_workers"] is not None:
        lines.append(
            f"  Ray / local at 2 workers: {figures['ray_vs_local_2_workers']:.2f} "
            f"(Ray start-up {figures['ray_start_s']:.1f} s, not in the sweep's time)"
        )
    return "\n".join(lines)
