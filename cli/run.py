"""`kvcast run`, `kvcast compare` and `kvcast bench sim`."""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

from kvcast.cli import say
from kvcast.cli.args import comma_list, nonnegative_int, positive_int
from kvcast.errors import InputError
from kvcast.paths import output_dir
from kvcast.profile_format import load_profile


def register(subparsers: Any, bench_subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="simulate a scenario YAML (every case x controller) and write a run folder",
        description="Simulate a scenario: every case (trace x SLO x seed) with every controller. "
        "Writes a run folder (scenario.yaml, summary.json, requests/chunks/traces.parquet, "
        "profile.json) and prints per-controller TTFT, SLO misses and quality.",
    )
    run.add_argument(
        "scenario", help="scenario YAML file, or a shipped scenario's name (e.g. quickstart)"
    )
    _run_options(run, "<output dir>/runs/<name>-<time>")
    run.set_defaults(func=_cmd_run)

    cmp = subparsers.add_parser(
        "compare",
        help="run several scenarios (or controllers) on the same traces and seeds, side by side",
        description="Run one or more scenarios with the same seeds and print their controllers side "
        "by side. With several scenarios, controllers are named '<scenario>/<controller>' in one run folder.",
    )
    cmp.add_argument("scenarios", nargs="+", help="scenario files or shipped names")
    _run_options(cmp, "<output dir>/runs/compare-<time>")
    cmp.set_defaults(func=_cmd_compare)

    bench = bench_subparsers.add_parser(
        "sim",
        help="simulator speed: chunk decisions per second; a 1,000-request x 6-controller sweep",
        description="Times a 1,000-request x 6-controller sweep over one mahimahi trace (scaled to "
        "Gbps), Llama-3.1-8B-shaped KV on an A100, and reports chunk decisions simulated per second.",
    )
    bench.add_argument("--profile", default="smollm2-135m-cpu", help="codec profile (name or path)")
    bench.add_argument(
        "--trace", default="mahimahi/ATT-LTE-driving.down", help="trace name or path"
    )
    bench.add_argument("--requests", type=positive_int, default=1000)
    bench.add_argument("--workers", type=positive_int, default=1, help="as for `kvcast run`")
    _executor_options(bench)
    bench.add_argument(
        "--controllers",
        default="cachegen,cachegen-artifact,bba,mpc,text,oracle",
        help="comma-separated",
    )
    bench.add_argument("--json", type=Path, help="also write the figures as JSON")
    bench.set_defaults(func=_cmd_bench)

    sweep = bench_subparsers.add_parser(
        "sweep",
        help="how a sweep scales: request-runs per second on 1 and 2 local workers and on Ray",
        description="Runs one sweep (every trace x SLO x controller, Mistral-7B on an A40, "
        "traces x1000) under each executor configuration in turn, after a warm-up, and reports "
        "request-runs per second, the speed-up from 1 to 2 workers, Ray against local, and "
        "whether every configuration gave the same tables.",
    )
    sweep.add_argument("--profile", default="smollm2-135m-cpu", help="codec profile (name or path)")
    sweep.add_argument(
        "--traces",
        default="mahimahi/*.down",
        help="comma-separated trace names, paths or globs (default: mahimahi/*.down)",
    )
    sweep.add_argument("--slo", default="0.5,1.0", help="comma-separated SLOs in seconds")
    sweep.add_argument("--requests", type=positive_int, default=300, help="requests per case")
    sweep.add_argument(
        "--controllers",
        default="fixed:klt-coarse,fixed:qw-coarse,int8,cachegen,cachegen-artifact,bba,oracle",
        help="comma-separated",
    )
    sweep.add_argument(
        "--configs",
        default="local:1,local:2,ray:2",
        help="comma-separated executor:workers, run in this order (the first is the reference)",
    )
    sweep.add_argument("--json", type=Path, help="also write the figures as JSON")
    sweep.set_defaults(func=_cmd_bench_sweep)


def _run_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The options `kvcast run` and `kvcast compare` share."""
    parser.add_argument("--out", type=Path, help=f"run folder (default: {default_out})")
    parser.add_argument(
        "--controllers", help="comma-separated controllers, replacing the scenario's list"
    )
    parser.add_argument(
        "--seed",
        type=nonnegative_int,
        action="append",
        help="seed(s) replacing the scenario's (repeatable)",
    )
    parser.add_argument("--profile", help="codec profile (name or path) replacing the scenario's")
    parser.add_argument("--no-report", action="store_true", help="do not build the HTML report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-memory-limit",
        action="store_true",
        help="run even when the memory estimate exceeds what this machine has available",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes simulating (case, controller) units side by side (same results)",
    )
    _executor_options(parser)


def _executor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the units run: this machine's processes, or Ray (pip install 'kvcast[ray]')",
    )
    parser.add_argument(
        "--address", help="with --executor ray: an existing Ray cluster (default: a local Ray)"
    )


def _overrides(args: argparse.Namespace) -> Any:
    from kvcast.sim.scenario import Overrides

    names = comma_list(args.controllers)
    return Overrides(tuple(names), tuple(args.seed or ()), args.profile)


def default_dir(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = output_dir() / "runs" / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def report_unless(run_dir: Path, skip: bool) -> None:
    if skip:
        return
    from kvcast.reports import build_report

    gc.collect()  # what the run held is freed before the report reads the folder back
    path = build_report(run_dir)
    print(f"report: {path}")


def chunk_cost_spec(sc: Any) -> Any:
    """`costing: real_codec`: what the scenario's chunk-cost table is measured on."""
    from kvcast.profiling.chunk_costs import ChunkCostSpec

    rc = sc.real_codec
    levels = load_profile(sc.profile).level_names
    return ChunkCostSpec(
        rc.model, rc.context, rc.tokens, sc.chunk_tokens, tuple(levels), rc.device, rc.repeats
    )


def chunk_costs_of(sc: Any, progress: bool) -> Any:
    """`costing: real_codec`: the scenario's chunk-cost table, measured first when not cached."""
    if sc.costing != "real_codec":
        return None
    from kvcast.profiling.chunk_costs import chunk_costs

    return chunk_costs(chunk_cost_spec(sc), progress=progress)


def _run(sc: Any, args: argparse.Namespace, run_dir: Path, parts: str) -> Any:
    """Run a scenario, keeping each finished unit's rows in the run folder's staging folder
    (`parts` under it): an interrupted or failed run resumes from them with the same --out."""
    from kvcast.run_schema import staging_dir  # deferred: imports pandas and pyarrow
    from kvcast.sim.limits import check_fits
    from kvcast.sim.runner import UnitsFailed, run_scenario

    if not args.no_memory_limit:
        # here, before any chunk-cost measurement, rather than in run_scenario
        check_fits(sc, workers=args.workers, parts_in_memory=False)
    parts_dir = staging_dir(run_dir) / "parts" / parts
    resume = f"the finished units are kept in {parts_dir}; `kvcast {args.command} ... --out {run_dir}` resumes from them"
    try:
        return run_scenario(
            sc,
            progress=not args.quiet,
            chunk_costs=chunk_costs_of(sc, not args.quiet),
            memory_limit=False,
            workers=args.workers,
            executor=args.executor,
            address=args.address,
            parts_dir=parts_dir,
        )
    except UnitsFailed as exc:
        raise UnitsFailed(f"{exc}; {resume}") from None
    except KeyboardInterrupt:
        if parts_dir.exists():
            say(f"kvcast: {resume}")
        raise


def _cmd_run(args: argparse.Namespace) -> int:
    from kvcast.sim.runner import write_run
    from kvcast.sim.scenario import load_scenario
    from kvcast.sim.summary import format_table

    sc = load_scenario(args.scenario, _overrides(args))
    run_dir = args.out or default_dir(sc.name)
    res = _run(sc, args, run_dir, sc.name)
    run_dir = write_run(res, run_dir)
    n_cases = len(res.summary["cases"])
    print(
        f"scenario {sc.name}: {n_cases} case(s), {res.summary['controllers']['oracle']['n_requests']} "
        f"request(s) per controller; receiver: {res.summary['receiver']}"
    )
    for warning in res.summary["warnings"]:
        print(f"warning: {warning}")
    print(format_table(res.summary["controllers"]))
    print(f"({res.decisions} chunk decisions in {res.sim_wall_s:.2f} s; {res.summary['notes']})")
    print(f"run folder: {run_dir}")
    del res  # the report reads the folder back: a study's tables are not held twice
    report_unless(run_dir, args.no_report)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from kvcast.sim.compare import check_distinct_names, write_comparison
    from kvcast.sim.runner import write_run
    from kvcast.sim.scenario import load_scenario
    from kvcast.sim.summary import format_table

    overrides = _overrides(args)
    scenarios = [load_scenario(s, overrides) for s in args.scenarios]
    check_distinct_names([s.name for s in scenarios])
    run_dir = args.out or default_dir("compare-" + "-".join(s.name for s in scenarios))
    results = [_run(sc, args, run_dir, sc.name) for sc in scenarios]
    if len(results) == 1:
        write_run(results[0], run_dir)
        rows = results[0].summary["controllers"]
    else:
        rows = write_comparison(results, run_dir)
    print(format_table(rows))
    print(f"run folder: {run_dir}")
    del results
    report_unless(run_dir, args.no_report)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from kvcast.sim.bench import bench_sim, format_bench

    controllers = comma_list(args.controllers)
    figures = bench_sim(
        args.profile,
        args.trace,
        args.requests,
        controllers,
        progress=True,
        workers=args.workers,
        executor=args.executor,
    )
    print(format_bench(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def _sweep_config(text: str) -> tuple[str, int]:
    executor, _, workers = text.partition(":")
    if executor not in ("local", "ray") or not workers.isdigit() or int(workers) < 1:
        raise argparse.ArgumentTypeError(
            f"--configs: {text!r}: expected executor:workers, e.g. local:2 or ray:2"
        )
    return executor, int(workers)


def _cmd_bench_sweep(args: argparse.Namespace) -> int:
    from kvcast.sim.bench import bench_sweep, format_sweep, sweep_scenario

    try:
        configs = tuple(_sweep_config(c) for c in comma_list(args.configs))
        slos = [float(s) for s in comma_list(args.slo)]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise InputError(f"bench sweep: {exc}") from None
    sc = sweep_scenario(
        args.profile,
        comma_list(args.traces),
        args.requests,
        comma_list(args.controllers),
        slos,
    )
    figures = bench_sweep(sc, configs, progress=True)
    print(format_sweep(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0
