"""`python -m kvcast.cli.gpu_check`: bit-identity of the GPU decoder against the golden vectors
and the CPU decoder (kvcast.profiling.gpu_check), case by case."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kvcast.codec.gpu import decode as gd
from kvcast.profiling.gpu_check import check_case, check_corruption, check_dequant, load_golden


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--golden", default="tests/golden", help="golden vector folder")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu under TRITON_INTERPRET=1")
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--tiles", default=f"{gd.TILE_LANES}", help="rANS tile sizes (lanes) to try")
    ap.add_argument(
        "--corruption",
        default="all",
        help="cases to damage and compare error codes on: all | none | comma-separated",
    )
    ap.add_argument(
        "--hook",
        action="store_true",
        help="also decode through codec.decode_chunk with the hook registered",
    )
    ap.add_argument(
        "--dequant-only",
        action="store_true",
        help="only the dequantization kernel, on the golden symbols (fast in the interpreter); "
        "chunks with key gains are also checked to fail without them",
    )
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    cases = load_golden(args.golden, args.cases.split(",") if args.cases else None)
    if not cases:
        print(f"no golden cases selected in {args.golden}", file=sys.stderr)
        return 2
    tiles = tuple(int(t) for t in args.tiles.split(","))
    results = []
    for case in cases:
        if args.dequant_only:
            r = check_dequant(case, args.device)
            results.append(r)
            print(f"{'OK  ' if r['ok'] else 'FAIL'} {case.name}: " + ("; ".join(r["failures"])
                  or "dequantization kernel bit-identical"), flush=True)  # fmt: skip
            continue
        r = check_case(case, args.device, tiles, hook=args.hook)
        if args.corruption == "all" or case.name in args.corruption.split(","):
            c = check_corruption(case, args.device, tiles[-1])
            r["corruption"] = c
            r["failures"] += c["failures"]
            r["ok"] = r["ok"] and c["ok"]
        results.append(r)
        print(f"{'OK  ' if r['ok'] else 'FAIL'} {case.name}: " + ("; ".join(r["failures"]) or
              "symbols and float32/float16/bfloat16 outputs bit-identical"), flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
