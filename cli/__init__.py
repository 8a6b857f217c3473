"""The `kvcast` command line: all command-line code lives in this package.

One module per area adds its subcommands (`kvcast.cli.<area>.register(subparsers,
bench_subparsers)`) and turns arguments into typed calls of the library; this file only
dispatches. Handlers import heavy libraries (torch, transformers) when they run, so that
`kvcast --help` stays fast. Nothing in kvcast imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from kvcast import __version__
from kvcast.errors import KvcastError

# The areas' command modules, in the order of `kvcast --help` (loaded by name so that one area's
# commands can run alone: `python -m kvcast.cli.codec` on a machine with only the codec's deps).
AREA_CLI_MODULES = (
    "kvcast.cli.kv",
    "kvcast.cli.codec",
    "kvcast.cli.profile",
    "kvcast.cli.traces",
    "kvcast.cli.run",
    "kvcast.cli.emulate",
    "kvcast.cli.report",
)


def build_parser(
    areas: Sequence[str] = AREA_CLI_MODULES, prog: str = "kvcast"
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Fetch compressed KV caches over real networks: a real CacheGen-style codec, "
            "trace-driven links, adaptive controllers, interactive reports."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kvcast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmarks: codec, kv-memory, link, sim, report")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])
    for module_name in areas:
        importlib.import_module(module_name).register(sub, bench_sub)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    areas: Sequence[str] = AREA_CLI_MODULES,
    prog: str = "kvcast",
) -> int:
    """Parse and run one command; a KvcastError becomes a one-line message and exit status 2."""
    parser = build_parser(areas, prog)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        result = args.func(args)
    except KvcastError as exc:
        print(f"kvcast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "kvcast: interrupted; outputs are written only when complete, so none was left half "
            "written",
            file=sys.stderr,
        )
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


def say(message: str) -> None:
    """A progress line of a long step, on stderr (stdout keeps the command's result)."""
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops a command as Ctrl-C does: the same cleanup (worker pools are terminated,
    partial outputs stay partial) and the same message."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
