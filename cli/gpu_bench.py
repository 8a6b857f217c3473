"""`python -m kvcast.cli.gpu_bench`: the GPU decode benchmark (kvcast.profiling.gpu_bench), the
table scripts/gpu_check.sh prints. Runs on a machine with only the codec's dependencies."""

from __future__ import annotations

import argparse
import sys

from kvcast.cli.args import positive_int
from kvcast.codec.gpu import decode as gd
from kvcast.profiling import gpu_check as check
from kvcast.profiling.codec_bench import write_json
from kvcast.profiling.gpu_bench import VARIANTS, GpuBenchConfig, format_table, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (or cpu under TRITON_INTERPRET=1)")
    ap.add_argument("--shape", default="Llama-3.1-8B", help="synthetic preset or LxHxD")
    ap.add_argument(
        "--tokens", type=positive_int, default=1500, help="tokens per chunk (default 1500)"
    )
    ap.add_argument("--levels", default="default", help="default | ladder | comma-separated")
    ap.add_argument("--chunks", type=positive_int, default=2, help="distinct chunks timed in turn")
    ap.add_argument("--repeats", type=positive_int, default=10)
    ap.add_argument("--warmup", type=positive_int, default=3)
    ap.add_argument("--dtype", default="float16", choices=sorted(check.DTYPES))
    ap.add_argument("--gbps", type=float, default=10.0, help="link rate for the transfer time")
    ap.add_argument("--fit", help="fit file or real KV file (default: the shipped SmolLM2 fit)")
    ap.add_argument(
        "--tile-lanes",
        default=str(gd.TILE_LANES),
        help="lanes per rANS program; a comma list sweeps them at the default level "
        "(the first is the one reported)",
    )
    ap.add_argument(
        "--variants",
        help=f"also time format variants of the default level: "
        f"{', '.join(VARIANTS)} (comma-separated)",
    )
    ap.add_argument("--no-verify", action="store_true", help="skip the CPU bit-identity check")
    ap.add_argument("--json", help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    options = {**vars(args), "tile_lanes": tuple(int(t) for t in str(args.tile_lanes).split(","))}
    options.pop("json")
    res = run(GpuBenchConfig(**options))
    print(format_table(res))
    if args.json:
        write_json(args.json, res)
    bad = [r["level"] for r in res["rows"] if r.get("bit_identical") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
