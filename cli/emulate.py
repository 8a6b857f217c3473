"""`kvcast emulate` (a scenario over real sockets) and `kvcast bench emulator` (its ceiling)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kvcast.cli import say
from kvcast.cli.args import (
    comma_list,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from kvcast.cli.run import chunk_cost_spec, chunk_costs_of, default_dir, report_unless
from kvcast.errors import InputError


def register(subparsers: Any, bench_subparsers: Any) -> None:
    em = subparsers.add_parser(
        "emulate",
        help="run a scenario over real sockets through a trace-driven link emulator on loopback",
        description="Emulate a scenario (costing: real_codec, a trace link): each request's real "
        "encoded chunks go over TCP through a user-space mm-link-style emulator, a receiver "
        "decodes them with the codec, controllers decide live. Writes a run folder (marked "
        "emulated) that `kvcast report` reads; --compare replays the same choices in the "
        "simulator and reports the per-chunk and per-request error (docs/emulation.md).",
    )
    em.add_argument("scenario", help="scenario YAML file, or a shipped scenario's name")
    em.add_argument(
        "--out", type=Path, help="run folder (default: <output dir>/runs/<name>-emulated-<time>)"
    )
    em.add_argument("--controllers", help="comma-separated controllers, replacing the scenario's")
    em.add_argument(
        "--seed", type=nonnegative_int, action="append", help="seed(s) replacing the scenario's"
    )
    em.add_argument(
        "--dilation",
        type=positive_float,
        default=1.0,
        help="play the trace this many times slower (>= 1), same bytes; times are reported "
        "scaled back (for links faster than the emulator's ceiling, `kvcast bench emulator`)",
    )
    em.add_argument(
        "--reverse-delay",
        type=nonnegative_float,
        help="one-way delay of the acknowledgements, s (default: the link's delay_s)",
    )
    em.add_argument(
        "--compare",
        action="store_true",
        help="also replay every emulated choice in the simulator: transfer-time and TTFT error",
    )
    em.add_argument("--no-report", action="store_true", help="do not build the HTML report")
    em.add_argument("--quiet", action="store_true", help="no progress bar")
    em.set_defaults(func=_cmd_emulate)

    bench = bench_subparsers.add_parser(
        "emulator",
        help="the link emulator's ceiling: the highest rate it carries faithfully",
        description="For each rate, one bulk transfer through the emulator over a constant-rate "
        "trace; the error of its last byte's arrival against the trace's answer, and the "
        "highest rate within --tolerance.",
    )
    bench.add_argument(
        "--rates", default="50,100,200,400,500,600,800,1000", help="Mbit/s, comma-separated"
    )
    bench.add_argument("--flows", type=positive_int, default=1, help="connections sharing the link")
    bench.add_argument(
        "--seconds", type=positive_float, default=1.0, help="length of each transfer at its rate"
    )
    bench.add_argument(
        "--tolerance", type=positive_float, default=0.01, help="relative error (0.01: 1%%)"
    )
    bench.add_argument(
        "--busy-cores",
        type=nonnegative_int,
        default=0,
        help="processes that keep cores busy meanwhile (1: as a decoding receiver does)",
    )
    bench.add_argument("--json", type=Path, help="also write the figures as JSON")
    bench.set_defaults(func=_cmd_bench)


def _cmd_emulate(args: argparse.Namespace) -> int:
    from kvcast.emulation.fidelity import compare, format_table, write_fidelity
    from kvcast.emulation.runner import emulate_scenario, payload_levels
    from kvcast.emulation.session import EmulationOptions, emulated_scenario
    from kvcast.profiling.chunk_payloads import chunk_payloads
    from kvcast.sim.inputs import build_setup
    from kvcast.sim.runner import write_run
    from kvcast.sim.scenario import Overrides, load_scenario
    from kvcast.sim.summary import format_table as controller_table

    names = comma_list(args.controllers)
    sc = load_scenario(args.scenario, Overrides(tuple(names), tuple(args.seed or ()), None))
    options = EmulationOptions(args.dilation, args.reverse_delay)
    emulated = emulated_scenario(sc, options)  # checks the scenario can be emulated
    costs = chunk_costs_of(emulated, not args.quiet)
    setup = build_setup(emulated, costs)
    levels = payload_levels(emulated, setup, emulated.controllers)
    payloads = chunk_payloads(chunk_cost_spec(emulated), levels, costs, progress=not args.quiet)
    say(f"emulating {sc.name}: {len(sc.cases())} case(s) x {len(sc.controllers)} controller(s), "
        f"dilation {options.dilation:g}")  # fmt: skip
    res = emulate_scenario(sc, costs, payloads, options, progress=not args.quiet, setup=setup)
    run_dir = write_run(res, args.out or default_dir(f"{sc.name}-emulated"))
    print(
        f"scenario {sc.name}, EMULATED (dilation {options.dilation:g}); receiver: {res.summary['receiver']}"
    )
    print(controller_table(res.summary["controllers"]))
    em = res.summary["emulation"]
    print(f"(the bound is simulated; relay wrote {em['relay_pieces']} pieces, latest by "
          f"{1e3 * em['relay_late_max_s']:.1f} ms, {em['relay_late_over_1ms']} over 1 ms)")  # fmt: skip
    if args.compare:
        fid = compare(res, costs)
        write_fidelity(run_dir, fid)
        print("simulation against emulation, |relative error| (same requests, same choices):")
        print(format_table(fid.table))
    print(f"run folder: {run_dir}")
    del res
    report_unless(run_dir, args.no_report)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from kvcast.emulation.bench import format_points, measure_rate

    try:
        rates = [float(r) for r in comma_list(args.rates)]
    except ValueError as exc:
        raise InputError(f"--rates: {exc}") from None
    if not rates or min(rates) <= 0:
        raise InputError("--rates: expected positive Mbit/s values")
    points = [
        measure_rate(r, args.seconds, flows=args.flows, busy_cores=args.busy_cores) for r in rates
    ]
    print(format_points(points, args.tolerance))
    if args.json:
        rows = [{**p.__dict__, "error": p.error} for p in points]
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0
