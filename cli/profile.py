"""CLI: `kvcast profile` (measure and write a codec profile) and `kvcast profile curve`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from kvcast.cli import say
from kvcast.cli.args import comma_list, nonnegative_int, positive_int
from kvcast.paths import output_dir
from kvcast.profile_format import load_profile, save_profile


def register(subparsers, bench_subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure a codec profile (bits and real-model quality per level), or show its curve",
        description="Measure a codec profile: capture real contexts (prose and LongChat-style "
        "retrieval), encode/decode every chunk at every level and baseline, and measure the "
        "answer quality of each decoded cache with the real model (docs/quality.md). "
        "`kvcast profile curve PROFILE` prints the bits-vs-quality table and writes a Plotly "
        "figure.",
    )
    p.add_argument("--model", default="smollm2", help="runnable model (default: smollm2)")
    p.add_argument("--contexts", type=positive_int, default=20, help="contexts, alternating prose and "
                   "longchat retrieval (default: 20)")  # fmt: skip
    p.add_argument(
        "--tokens", type=positive_int, default=4000, help="tokens per context (default: 4000)"
    )
    p.add_argument(
        "--chunk-tokens", type=positive_int, default=1500, help="tokens per chunk (default 1500)"
    )
    p.add_argument("--levels", help="comma-separated levels (default: ladder levels + baselines)")
    p.add_argument("--device", default="cpu", help="decode device: cpu or cuda[:N] (default cpu)")
    p.add_argument("--jobs", type=positive_int, default=2, help="worker processes (default: 2)")
    p.add_argument(
        "--threads", type=positive_int, default=1, help="threads per worker (default: 1)"
    )
    p.add_argument(
        "--seed", type=nonnegative_int, default=0, help="first context seed (default: 0)"
    )
    p.add_argument("--calibration-contexts", type=positive_int, default=4, help="contexts (seeds from "
                   "1000, never measured) the model tables of the KLT levels is fitted on "
                   "(default: 4)")  # fmt: skip
    p.add_argument("--lmcache", action="store_true", help="also measure LMCache's CacheGen "
                   "(its bits and real-model quality; needs its environment, "
                   "scripts/setup_lmcache.sh); recorded under extra.peers")  # fmt: skip
    p.add_argument("-o", "--output", help="profile JSON to write (default: "
                   "out/profiles/<model>-<device>.json)")  # fmt: skip
    p.add_argument("--raw", help="also write every per-context figure to this JSON file "
                   "(default: out/profiles/<name>.raw.json)")  # fmt: skip
    p.set_defaults(func=_measure, profile_parser=p)

    # optional: `kvcast profile [options]` measures; `kvcast profile curve PROFILE` shows one
    sub = p.add_subparsers(dest="profile_command", metavar="[curve]", required=False)
    c = sub.add_parser("curve", help="bits per element vs quality: table + Plotly HTML")
    c.add_argument("profile", help="profile file or shipped profile name")
    c.add_argument("--html", help="figure to write (default: out/<profile>-curve.html)")
    c.add_argument("--bench", help="a `kvcast bench codec --json` file: add its LMCache "
                   "CacheGen point (bits only, no quality) to the table")  # fmt: skip
    c.add_argument("--peers-from", action="append", default=[], metavar="PROFILE",
                   help="add the peers (LMCache's CacheGen, with its measured quality) of "
                   "another profile written with `kvcast profile --lmcache`")  # fmt: skip
    c.set_defaults(func=_curve)

    r = sub.add_parser(
        "reduce",
        help="add context-reduction levels (H2O, LLMLingua, combined with codec levels) to a "
        "profile, measured on its own contexts",
        description="Measure context-reduction levels (docs/reduction.md) on the contexts a codec "
        "profile was measured on, with the same model and probes, and write a second profile "
        "holding its levels and the new ones (kind 'reduction').",
    )
    r.add_argument("profile", help="base profile file or shipped profile name (written by "
                   "`kvcast profile`)")  # fmt: skip
    r.add_argument("--levels", help="comma-separated reduction levels, h2o-<25|50|100>[+LEVEL] "
                   "or lingua-<percent>[+LEVEL] (default: "
                   "h2o-50,h2o-25,h2o-50+cachegen-q2,h2o-25+klt-mid,h2o-50+klt-mid,"
                   "h2o-100+klt-mid,lingua-50,lingua-33,lingua-50+klt-mid)")  # fmt: skip
    r.add_argument("--jobs", type=positive_int, default=2, help="worker processes (default: 2)")
    r.add_argument("-o", "--output", help="profile JSON to write (default: "
                   "out/profiles/<base>-reduce.json)")  # fmt: skip
    r.add_argument("--raw", help="also write every per-context figure to this JSON file "
                   "(default: next to the output, .raw.json)")  # fmt: skip
    r.set_defaults(func=_reduce)


def _measure(args: argparse.Namespace) -> int:
    from kvcast.profiling.profile_measure import MeasureConfig, RunInfo, build_profile, run_contexts

    levels = tuple(comma_list(args.levels))
    cfg = MeasureConfig(
        model=args.model,
        contexts=args.contexts,
        tokens=args.tokens,
        chunk_tokens=args.chunk_tokens,
        levels=levels,
        device=args.device,
        jobs=args.jobs,
        threads=args.threads,
        seed=args.seed,
        lmcache=args.lmcache,
        calibration_contexts=args.calibration_contexts,
    )
    cfg.check()
    if args.device != "cpu":
        from kvcast.profiling.profile_measure import check_gpu

        check_gpu(args.device)
    dev = "cpu" if args.device == "cpu" else "cuda"
    safe_model = Path(args.model).name.replace(":", "-")
    out = (
        Path(args.output) if args.output else output_dir() / "profiles" / f"{safe_model}-{dev}.json"
    )
    raw_path = Path(args.raw) if args.raw else output_dir() / "profiles" / f"{out.stem}.raw.json"
    command = (
        "kvcast " + shlex.join(sys.argv[1:])
        if sys.argv[1:2] == ["profile"]
        else ("kvcast profile " + shlex.join(_argv_of(args)))
    )
    info = RunInfo(command=command, load_before=tuple(os.getloadavg()))
    t0 = time.perf_counter()
    say(f"profile: {cfg.contexts} contexts x {cfg.tokens} tokens of {cfg.model}, "
         f"{cfg.jobs} worker(s); writing {out}")  # fmt: skip
    results = run_contexts(cfg, say)
    info.wall_s = time.perf_counter() - t0
    info.load_after = tuple(os.getloadavg())
    profile = dataclasses.replace(build_profile(cfg, results, info), name=out.stem)
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps({"config": vars(args) | {"func": None, "profile_parser": None},
                                    "results": results}, default=str) + "\n")  # fmt: skip
    save_profile(profile, out)
    from kvcast.profiling.profile_curve import curve_table, profile_peers

    print(curve_table(profile, profile_peers(profile)))
    say(f"profile: wrote {out} and {raw_path} in {info.wall_s:.0f} s")
    return 0


def _reduce(args: argparse.Namespace) -> int:
    from kvcast.profiling import reduction_measure as R

    base = load_profile(args.profile)
    levels = tuple(comma_list(args.levels))
    cfg = R.reduce_config(base, args.jobs, levels)
    out = (
        Path(args.output) if args.output else output_dir() / "profiles" / f"{base.name}-reduce.json"
    )
    raw_path = Path(args.raw) if args.raw else out.with_suffix(".raw.json")
    info = R.RunInfo(
        command="kvcast " + shlex.join(sys.argv[1:]), load_before=tuple(os.getloadavg())
    )
    say(f"profile reduce: {len(cfg.plan())} contexts of {base.name}, levels "
        f"{', '.join(cfg.levels)}; writing {out}")  # fmt: skip
    t0 = time.perf_counter()
    results = R.run_contexts(cfg, say)
    info.wall_s = time.perf_counter() - t0
    info.load_after = tuple(os.getloadavg())
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps({"base": base.name, "levels": list(cfg.levels),
                                    "results": results}, default=str) + "\n")  # fmt: skip
    profile = R.build_profile(base, cfg, results, info, out.stem)
    save_profile(profile, out)
    from kvcast.profiling.profile_curve import curve_table, profile_peers

    print(curve_table(profile, profile_peers(profile)))
    say(f"profile reduce: wrote {out} and {raw_path} in {info.wall_s:.0f} s")
    return 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    out = ["--model", args.model, "--contexts", str(args.contexts), "--tokens", str(args.tokens)]
    if args.levels:
        out += ["--levels", args.levels]
    out += ["--device", args.device, "--jobs", str(args.jobs)]
    if args.output:
        out += ["-o", args.output]
    return out


def _curve(args: argparse.Namespace) -> int:
    from kvcast.profiling.profile_curve import curve_html, curve_table

    profile = load_profile(args.profile)
    from kvcast.profiling.profile_curve import profile_peers

    peers = profile_peers(profile)
    for other in args.peers_from:
        peers += profile_peers(load_profile(other))
    if args.bench:
        from kvcast.profiling.profile_curve import lmcache_point

        peers.append(lmcache_point(args.bench))
    print(curve_table(profile, peers))
    html = Path(args.html) if args.html else output_dir() / f"{profile.name}-curve.html"
    curve_html(profile, html, peers)
    say(f"wrote {html}")
    return 0
