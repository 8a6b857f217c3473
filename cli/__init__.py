"""The `kvcast` command line.

Each area of the project registers its own subcommands from a small `cli` module
(`kvcast.<area>.cli.register(subparsers, bench_subparsers)`), so this file stays a thin
dispatcher. Handlers import heavy libraries (torch, transformers) lazily, so that
`kvcast --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kvcast import __version__
from kvcast.errors import KvcastError

# Areas whose `cli.register` adds subcommands; an area that is absent is skipped.
AREA_CLI_MODULES = (
    "kvcast.cli.kv",
    "kvcast.cli.codec",
    "kvcast.cli.profile",
    "kvcast.cli.traces",
    "kvcast.cli.run",
    "kvcast.cli.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvcast",
        description=(
            "Fetch compressed KV caches over real networks: a real CacheGen-style codec, "
            "trace-driven links, adaptive controllers, interactive reports."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kvcast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmarks: codec, link, sim")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])
    for module_name in AREA_CLI_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(sub, bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KvcastError as exc:
        print(f"kvcast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
