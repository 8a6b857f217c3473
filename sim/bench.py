"""`kvcast bench sim`: how fast the simulator decides and simulates chunks.

The sweep: one mahimahi trace scaled x1000 (cellular Mbit/s to Gbit/s), N requests arriving every
2 s (so some overlap and share the link and GPU), 9,000-token contexts (6 chunks of 1,500),
Llama-3.1-8B-shaped KV on one A100, SLO 1 s, six controllers. Reports the wall time of the whole
sweep (setup included) and chunk decisions simulated per second.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

from .scenario import scenario_from_dict


def bench_sim(args: argparse.Namespace) -> int:
    from .runner import build_setup, run_scenario

    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    raw = {
        "name": "bench-sim",
        "seed": 0,
        "slo_s": 1.0,
        "model": "llama-3.1-8b",
        "gpu": "a100",
        "profile": args.profile,
        "chunk_tokens": 1500,
        "workload": {
            "requests": args.requests,
            "arrival": {"process": "fixed", "interval_s": 2.0},
            "context_tokens": 9000,
        },
        "link": {"trace": args.trace, "scale": 1000},
        "receiver": {"decode_melem_per_s": 20000},
        "controllers": controllers,
    }
    t0 = time.perf_counter()
    sc = scenario_from_dict(raw, source="kvcast bench sim", base_dir=Path.cwd())
    sc = replace(sc, controllers=tuple(controllers))  # no implicit oracle beyond the list
    setup = build_setup(sc)
    res = run_scenario(sc, setup=setup)
    wall = time.perf_counter() - t0
    figures = {
        "requests": args.requests,
        "controllers": controllers,
        "trace": args.trace,
        "chunk_decisions": res.decisions,
        "sweep_wall_s": wall,
        "simulate_wall_s": res.sim_wall_s,
        "decisions_per_s": res.decisions / res.sim_wall_s,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "target_sweep_wall_s": 60.0,
    }
    print(
        f"kvcast bench sim: {args.requests} requests x {len(controllers)} controllers over {args.trace} (x1000)"
    )
    print(f"  chunk decisions simulated: {res.decisions}")
    print(f"  sweep wall time:           {wall:.2f} s  (target < 60 s)")
    print(f"  decisions per second:      {figures['decisions_per_s']:.0f}")
    cw, cd = res.summary["controller_wall_s"], res.summary["controller_decisions"]
    figures["per_controller"] = {
        n: {"wall_s": cw[n], "decisions": cd[n], "decisions_per_s": cd[n] / cw[n]}
        for n in controllers
    }
    print(
        "  per controller (decisions/s): "
        + ", ".join(f"{n} {cd[n] / cw[n]:.0f}" for n in controllers)
    )
    per = {}
    for name in controllers:
        sub = res.requests[res.requests["controller"] == name]
        per[name] = float(1 - sub["met_slo"].mean())
    print("  SLO-violation rate:        " + ", ".join(f"{k} {v:.1%}" for k, v in per.items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0
