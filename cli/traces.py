"""`kvcast traces fetch|list|show` and `kvcast bench link`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvcast.cli.args import nonnegative_int, positive_int
from kvcast.errors import InputError
from kvcast.paths import output_dir


def register(subparsers: argparse._SubParsersAction, bench_subparsers) -> None:
    """Add the trace commands and the link benchmark to the kvcast CLI."""
    p = subparsers.add_parser("traces", help="bandwidth traces: fetch, list, show")
    sub = p.add_subparsers(dest="traces_command", metavar="WHAT")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    f = sub.add_parser(
        "fetch", help="download a public trace set at a pinned commit into the user cache"
    )
    f.add_argument("set", choices=["mahimahi", "pensieve"])
    f.add_argument(
        "--base-url",
        help="mirror laid out as <url>/<set>/<file> (default: the upstream repository; "
        "also $KVCAST_TRACES_BASE_URL)",
    )
    f.add_argument("--dest", type=Path, help="folder to store into (default: user cache)")
    f.set_defaults(func=cmd_fetch)

    ls = sub.add_parser("list", help="trace sets and the trace files found")
    ls.add_argument("--traces-dir", action="append", default=[], type=Path)
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="statistics and a Plotly plot of one trace")
    s.add_argument("trace", help="file path or name (e.g. mahimahi/ATT-LTE-driving.down)")
    s.add_argument("--format", dest="fmt", help="mahimahi | cooked | sabre | csv (detected)")
    s.add_argument("--traces-dir", action="append", default=[], type=Path)
    s.add_argument(
        "--bytes-per-opportunity",
        type=float,
        default=None,
        help="mahimahi bytes per line (default 1500; mm-link's counter uses 1504)",
    )
    s.add_argument("--dt", type=float, default=1.0, help="bin width for statistics, s")
    s.add_argument(
        "--below",
        type=float,
        action="append",
        default=None,
        help="report time below this many Mb/s (repeatable; default 1)",
    )
    s.add_argument("-o", "--output", type=Path, help="HTML plot path (default ./out/traces/)")
    s.add_argument("--no-plot", action="store_true")
    s.set_defaults(func=cmd_show)

    b = bench_subparsers.add_parser(
        "link", help="trace completion queries: prefix sums vs a per-packet loop"
    )
    b.add_argument("--trace", help="mahimahi trace name/path (default: synthetic 1000 s)")
    b.add_argument("--traces-dir", action="append", default=[], type=Path)
    b.add_argument("--queries", type=positive_int, default=1_000_000)
    b.add_argument(
        "--loop-queries",
        type=positive_int,
        default=2_000,
        help="queries the per-packet loop answers (timed, then extrapolated)",
    )
    b.add_argument(
        "--link-transfers",
        type=nonnegative_int,
        default=10_000,
        help="transfers through the SimPy Link for its own throughput figure (0: skip)",
    )
    b.add_argument("--seed", type=nonnegative_int, default=0)
    b.set_defaults(func=cmd_bench_link)


def cmd_fetch(args: argparse.Namespace) -> int:
    from kvcast.traces.catalog import fetch_set

    files = fetch_set(args.set, dest=args.dest, base_url=args.base_url, progress=print)
    print(f"{args.set}: {len(files)} files in {files[0].parent if files else args.dest}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from kvcast.traces.catalog import list_sets, search_dirs

    rows = list_sets()
    extra = []
    for d in args.traces_dir:
        if not d.is_dir():
            raise InputError(f"--traces-dir {d}: not a folder")
        extra += sorted(
            str(p.relative_to(d))
            for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() not in (".md", ".txt") and "COPYING" not in p.name
        )
    if args.json:
        print(json.dumps({"sets": rows, "traces_dirs": extra}, indent=2))
        return 0
    for r in rows:
        print(
            f"{r['set']:<9} {r['source']:<32} {len(r['cached'])}/{len(r['files'])} fetched "
            f"({r['bytes']:,} B)  {r['license'][:40]}"
        )
        for name in r["files"]:
            mark = "*" if name in r["cached"] else " "
            print(f"  {mark} {name}")
    if extra:
        print("in --traces-dir:")
        for name in extra:
            print(f"    {name}")
    print("(* = in the cache; fetch with `kvcast traces fetch SET`)")
    print("search order: " + ", ".join(str(d) for d in search_dirs(args.traces_dir)))
    return 0


def trace_stats(tr, dt: float, below_mbps: list[float]) -> dict[str, object]:
    """Duration, mean and percentile bandwidth (over bins of dt), and time below thresholds."""
    import numpy as np  # deferred: keeps kvcast --help free of numpy

    t, bps = tr.samples(dt)
    width = np.diff(np.append(t, tr.duration_s))
    mbps = bps / 1e6
    pct = {f"p{q}": float(np.percentile(mbps, q)) for q in (5, 25, 50, 75, 95)}
    below = {f"{x:g}": float(width[mbps < x].sum()) for x in below_mbps}
    return {
        "name": tr.name,
        "kind": tr.kind,
        "format": tr.meta.get("format", tr.meta.get("synthetic", "")),
        "duration_s": tr.duration_s,
        "loop": tr.loop,
        "mean_mbps": tr.mean_bps() / 1e6,
        "min_mbps": float(mbps.min()),
        "max_mbps": float(mbps.max()),
        **{f"{k}_mbps": v for k, v in pct.items()},
        "bin_s": dt,
        "seconds_below_mbps": below,
    }


def cmd_show(args: argparse.Namespace) -> int:
    from kvcast.traces.catalog import resolve_trace
    from kvcast.traces.readers import load_trace

    path = resolve_trace(args.trace, args.traces_dir)
    opts = {}
    if args.bytes_per_opportunity is not None:
        opts["bytes_per_opportunity"] = args.bytes_per_opportunity
    tr = load_trace(path, args.fmt, **opts)
    if not args.dt > 0:
        raise InputError(f"--dt must be > 0 (got {args.dt})")
    st = trace_stats(tr, args.dt, args.below or [1.0])
    print(f"{path}")
    print(
        f"  {st['format']} ({st['kind']}), {st['duration_s']:.3f} s per period, "
        f"{'loops' if tr.loop else 'played once'}"
    )
    print(
        f"  mean {st['mean_mbps']:.3f} Mb/s; over {args.dt:g} s bins: min {st['min_mbps']:.3f}"
        f"  p5 {st['p5_mbps']:.3f}  p50 {st['p50_mbps']:.3f}  p95 {st['p95_mbps']:.3f}"
        f"  max {st['max_mbps']:.3f}"
    )
    for thr, sec in st["seconds_below_mbps"].items():  # type: ignore[union-attr]
        print(f"  below {thr} Mb/s: {sec:.1f} s ({100 * sec / tr.duration_s:.1f}%)")
    if not args.no_plot:
        out = args.output or (output_dir() / "traces" / f"{path.name}.html")
        write_plot(tr, args.dt, out)
        print(f"  plot: {out}")
    return 0


def write_plot(tr, dt: float, out: Path) -> Path:
    """A Plotly HTML plot of the trace's bandwidth; plotly.js is embedded so it opens offline."""
    import plotly.graph_objects as go

    t, bps = tr.samples(dt)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=bps / 1e6, mode="lines", line_shape="hv", name=f"per {dt:g} s"))
    fig.add_hline(
        y=tr.mean_bps() / 1e6,
        line_dash="dot",
        annotation_text=f"mean {tr.mean_bps() / 1e6:.2f} Mb/s",
    )
    fig.update_layout(
        title=f"{tr.name} ({tr.duration_s:.1f} s)",
        xaxis_title="time (s)",
        yaxis_title="bandwidth (Mb/s)",
        template="plotly_white",
        height=360,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(out, include_plotlyjs=True)
    return out


def cmd_bench_link(args: argparse.Namespace) -> int:
    from kvcast.sim.link_bench import run_link_bench

    res = run_link_bench(
        trace=args.trace,
        traces_dirs=args.traces_dir,
        n_queries=args.queries,
        n_loop=args.loop_queries,
        n_link=args.link_transfers,
        seed=args.seed,
        log=print,
    )
    print(json.dumps(res, indent=2))
    return 0 if res["mismatches"] == 0 else 1
