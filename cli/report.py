"""`kvcast report RUN_DIR [-o FILE]` and `kvcast bench report RUN_DIR`."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from kvcast.cli.args import positive_int
from kvcast.errors import InputError


def register(
    subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction
) -> None:
    rep = subparsers.add_parser(
        "report",
        help="build the interactive HTML report of a run folder",
        description=(
            "Build one self-contained interactive HTML report (opens offline) from a run folder "
            "written by `kvcast run`: summary, TTFT CDF, quality vs TTFT with Pareto fronts, "
            "SLO violations and TEXT share, per-request timelines, level heatmap, codec curve."
        ),
    )
    rep.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="run folder")
    rep.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        type=Path,
        default=None,
        help="HTML file to write (default: RUN_DIR/report.html)",
    )
    rep.set_defaults(func=_report)

    bench = bench_subparsers.add_parser(
        "report",
        help="time building a run's report and opening it in headless Chromium",
        description=(
            "Build RUN_DIR's report, then open it from a file:// URL in headless Chromium and "
            "print the build time, the HTML size, the time until every figure was drawn, "
            "JavaScript errors and what each figure drew."
        ),
    )
    bench.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    bench.add_argument("-o", "--output", metavar="FILE", type=Path, default=None)
    bench.add_argument(
        "--repeat", type=positive_int, default=3, help="browser openings (median reported)"
    )
    bench.add_argument("--screenshot", metavar="PNG", type=Path, default=None)
    bench.add_argument("--json", metavar="PATH", type=Path, default=None, help="also write JSON")
    bench.add_argument(
        "--no-browser", action="store_true", help="time the build only (no Chromium needed)"
    )
    bench.set_defaults(func=_bench)


def _report(args: argparse.Namespace) -> int:
    from kvcast.reports import build_report

    path = build_report(args.run_dir, args.output)
    print(path)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from kvcast.reports import build_report
    from kvcast.reports.browser import BrowserError, check_page, find_chromium

    if not args.no_browser and find_chromium() is None:
        raise InputError(
            "bench report: no Chromium found to open the report in (install Debian's "
            "`chromium`), or pass --no-browser to time the build only"
        )
    t0 = time.perf_counter()
    path = build_report(args.run_dir, args.output)
    build_s = time.perf_counter() - t0
    size = path.stat().st_size
    result: dict = {"report": str(path), "build_s": round(build_s, 3), "html_bytes": size}
    print(f"report      {path}")
    print(f"build       {build_s:.2f} s")
    print(f"html size   {size / 1e6:.2f} MB")
    if args.no_browser:
        print("browser     not opened (--no-browser)")
    else:
        pages = []
        for i in range(args.repeat):
            shot = args.screenshot if i == 0 else None
            pages.append(check_page(path, screenshot=shot))
        ready = [p.ready_ms for p in pages]
        first = pages[0]
        result.update(
            ready_ms=ready,
            ready_ms_median=statistics.median(ready),
            js_errors=first.errors,
            timings_ms=first.timings,
            figures=first.figures,
        )
        print(
            f"open        {statistics.median(ready) / 1e3:.2f} s median until every figure was "
            f"drawn (performance.now(); runs: {', '.join(f'{r / 1e3:.2f}' for r in ready)})"
        )
        print(f"js errors   {len(first.errors)}" + "".join(f"\n  {e}" for e in first.errors))
        print(f"plotly.js   ready at {first.timings.get('plotlyjs', float('nan')) / 1e3:.2f} s")
        for fig in first.figures:
            print(
                f"  {fig['id']:<18} traces {fig['traces']:>3}  svg {fig['main_svgs']}  "
                f"{fig['width']:.0f}x{fig['height']:.0f} px  "
                f"drawn in {first.timings.get(fig['id'], float('nan')):.0f} ms"
            )
        if first.screenshot:
            print(f"screenshot  {first.screenshot}")
        if first.errors:
            raise BrowserError(f"{path}: JavaScript errors while opening the report")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0
