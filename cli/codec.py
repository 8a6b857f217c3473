"""CLI of the codec: `kvcast bench codec`, `kvcast codec encode|decode|info|levels|fit-tables`."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from kvcast.chunks import chunk_bounds
from kvcast.cli import main as kvcast_main
from kvcast.cli import say
from kvcast.cli.args import nonnegative_int, positive_int
from kvcast.errors import InputError

T = TypeVar("T")


def register(subparsers, bench_subparsers) -> None:
    b = bench_subparsers.add_parser(
        "codec",
        help="every level and baseline on real KV chunks (+ LMCache's CacheGen where installed)",
        description="Encode and decode real KV chunks at every level and baseline; print size, error, "
        "speed and coder efficiency; compare with LMCache 0.5.6's CacheGen serializer run in its own "
        "environment (scripts/setup_lmcache.sh).",
    )
    b.add_argument("--model", default="smollm2", help="KV source model (default: smollm2)")
    b.add_argument("--context", default="prose", help="context to measure (default: prose)")
    b.add_argument(
        "--tokens", type=positive_int, default=4500, help="context length in tokens (default: 4500)"
    )
    b.add_argument("--seed", type=nonnegative_int, default=0, help="context seed (default: 0)")
    b.add_argument(
        "--chunk-tokens", type=positive_int, default=1500, help="tokens per chunk (default: 1500)"
    )
    b.add_argument("--kv", help="measure this saved KV file (safetensors) instead of capturing")
    b.add_argument("--fit-context", default="prose", help="context the model tables are fitted on")
    b.add_argument(
        "--fit-seed", type=nonnegative_int, default=1, help="its seed (default 1: another text)"
    )
    b.add_argument("--fit-tokens", type=positive_int, default=4500)
    b.add_argument("--fit-kv", help="fit the model tables on this saved KV file instead")
    b.add_argument(
        "--levels", help="comma-separated levels (default: all levels, variants, baselines)"
    )
    b.add_argument("--ladder", help="ladder YAML (default: the shipped codec/ladder.yaml)")
    b.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="timed repeats per chunk (median; default 3)",
    )
    b.add_argument("--lmcache-python", help="python of an LMCache 0.5.6 environment (default: "
                   "$KVCAST_LMCACHE_PYTHON or ../lmcache-venv)")  # fmt: skip
    b.add_argument("--no-lmcache", action="store_true", help="skip LMCache")
    b.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), or cuda[:N]: also time the GPU decoder of CacheGen levels "
        "(kvcast.profiling.gpu_timing.time_decode; needs a CUDA GPU and Triton)",
    )
    b.add_argument("--json", help="write all figures to this JSON file")
    b.set_defaults(func=_bench)

    c = subparsers.add_parser(
        "codec", help="encode/decode KV chunks, show chunk headers and levels"
    )
    csub = c.add_subparsers(dest="codec_command", metavar="WHAT")
    c.set_defaults(func=lambda args: (c.print_help(), 2)[1])

    lv = csub.add_parser("levels", help="list the ladder's levels, variants and baselines")
    lv.add_argument("--ladder", help="ladder YAML")
    lv.set_defaults(func=_levels)

    info = csub.add_parser("info", help="check and print an encoded chunk's header")
    info.add_argument("chunk", help="encoded chunk file")
    info.set_defaults(func=_info)

    enc = csub.add_parser("encode", help="encode a saved KV file (safetensors) into chunk files")
    enc.add_argument("kv", help="KV file written by `kvcast kv capture`")
    enc.add_argument("--level", help="level name (default: the ladder's default)")
    enc.add_argument("--chunk-tokens", type=positive_int, default=1500)
    enc.add_argument("--model-tables", help="model tables file (levels with tables: profile "
                     "or transform: klt)")  # fmt: skip
    enc.add_argument("-o", "--out", required=True, help="output folder for chunk_NNNN.kvc files")
    enc.set_defaults(func=_encode)

    dec = csub.add_parser("decode", help="decode chunk files back into one KV file (safetensors)")
    dec.add_argument("chunks", nargs="+", help="chunk files, in token order")
    dec.add_argument("--model-tables", help="model tables file the chunks were coded with")
    dec.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    dec.add_argument("--like", help="the original KV file: copy its model metadata and token ids")
    dec.add_argument("-o", "--out", required=True, help="output .safetensors")
    dec.set_defaults(func=_decode)

    fit = csub.add_parser(
        "fit-tables", help="fit model tables (offline symbol tables, KLT bases) from KV files"
    )
    fit.add_argument("kv", nargs="+", help="KV files (safetensors) of one model")
    fit.add_argument("--chunk-tokens", type=positive_int, default=1500)
    fit.add_argument("--transforms", action="store_true", help="also fit the model's KLT bases "
                     "(levels with transform: klt; keys weighted by the captures' key gains)")  # fmt: skip
    fit.add_argument("-o", "--out", required=True, help="output model tables (.safetensors)")
    fit.set_defaults(func=_fit)


def _bench(args: argparse.Namespace) -> int:
    from kvcast.profiling.codec_bench import BenchConfig, format_table, run_bench, write_json

    cfg = BenchConfig(
        model=args.model,
        context=args.context,
        tokens=args.tokens,
        seed=args.seed,
        chunk_tokens=args.chunk_tokens,
        fit_context=args.fit_context,
        fit_seed=args.fit_seed,
        fit_tokens=args.fit_tokens,
        kv_file=args.kv,
        fit_kv_file=args.fit_kv,
        levels=[s.strip() for s in args.levels.split(",")] if args.levels else None,
        repeats=max(1, args.repeats),
        lmcache_python=args.lmcache_python,
        lmcache=not args.no_lmcache,
        ladder_path=args.ladder,
        device=args.device,
        command="kvcast " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    res = run_bench(cfg)
    print(format_table(res))
    if args.json:
        write_json(args.json, res)
    return 0


def _levels(args: argparse.Namespace) -> int:
    from kvcast.codec.ladder import load_ladder

    lad = load_ladder(args.ladder)
    for kind, specs in (
        ("level", lad.levels),
        ("variant", lad.variants),
        ("baseline", lad.baselines),
    ):
        for s in specs:
            mark = " (default)" if s.name == lad.default else ""
            print(f"{kind:8s} {s.name:22s} {s.description}{mark}")
    print(
        f"{'text':8s} {'TEXT':22s} send token ids ({lad.text_bytes_per_token} bytes each), recompute"
    )
    return 0


def _read_chunk(path: Path, read: Callable[[bytes], T]) -> T:
    """`read(bytes of the chunk file)`, with the file named in every error about it."""
    from kvcast.codec.container import CorruptChunk

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return read(path.read_bytes())
    except CorruptChunk as exc:
        raise CorruptChunk(f"{path}: {exc}") from exc


def _info(args: argparse.Namespace) -> int:
    from kvcast.codec import container
    from kvcast.codec.codec import chunk_info

    path = Path(args.chunk)
    head = _read_chunk(path, chunk_info)
    print(f"{path}: kvcast chunk v{head.version}, codec {head.codec_name}, level {head.level}")
    print(f"  shape {list(head.shape)} (source dtype {head.dtype}), {head.total_bytes} bytes, "
          f"{8 * head.total_bytes / head.n_elements:.3f} bits/element")  # fmt: skip
    print(f"  model tables: {head.profile_hex or 'none'}")
    position = _read_chunk(path, lambda b: container.read_position(b, container.parse(b)))
    if position is not None:
        print(f"  position: chunk {position.index} of {position.count}, tokens "
              f"{position.first_token}..{position.first_token + head.n_tokens} of "
              f"{position.context_tokens} (cache {position.cache_id.hex()})")  # fmt: skip
    for name, size in head.section_sizes().items():
        print(f"  {name:13s} {size:10d} bytes")
    return 0


def _load_profile(path: str | None):
    if not path:
        return None
    from kvcast.codec.model_tables import load_model_tables

    return load_model_tables(path)


def _encode(args: argparse.Namespace) -> int:
    from kvcast.codec import container
    from kvcast.codec.codec import default_ladder, encode_chunk
    from kvcast.codec.container import Position
    from kvcast.kv.sources.safetensors_io import KVReader

    ladder = default_ladder()
    level = args.level or ladder.default
    with KVReader(args.kv) as reader:  # chunk by chunk: memory does not grow with the tokens
        spec = ladder.get(level)  # an unknown level fails before any work
        if getattr(spec, "key_gains", False) and reader.key_gains is None:
            raise InputError(
                f"{args.kv}: level {level!r} needs the key gains of the model's queries "
                "(k_gain: query), and this KV file has none: capture it again with "
                "`kvcast kv capture` from a real model, or pick a level without k_gain"
            )
        if getattr(spec, "needs_model_tables", False) and not args.model_tables:
            raise InputError(
                f"level {level!r} codes with model tables (offline tables or KLT bases): pass "
                "--model-tables FILE, fitted with `kvcast codec fit-tables --transforms KV...` "
                "on other captures of the same model"
            )
        prof = _load_profile(args.model_tables)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        total, written = 0, []
        n = reader.n_tokens
        bounds = chunk_bounds(n, args.chunk_tokens)
        cache_id = _cache_id(reader.meta, n)
        try:
            for i, (t0, t1) in enumerate(
                tqdm(bounds, desc="encode", unit="chunk", leave=False, disable=None)
            ):
                data = encode_chunk(reader.read(t0, t1), level, model_tables=prof, ladder=ladder,
                                    key_gains=reader.key_gains, context_start=t0 == 0)  # fmt: skip
                # where the chunk sits, so `codec decode` can check and order what it is given
                data = container.with_position(data, Position(cache_id, i, len(bounds), t0, n))
                path = out / f"chunk_{i:04d}.kvc"
                path.write_bytes(data)
                written.append(path)
                total += len(data)
        except BaseException:  # e.g. a NaN further on: no partial set of chunk files left
            for path in written:
                path.unlink(missing_ok=True)
            raise
        el = reader.nbytes // reader.element_size
    print(
        f"{args.kv}: {n} tokens -> {i + 1} chunks at {level}: {total} bytes, {8 * total / el:.3f} bits/element"
    )
    return 0


def _decode(args: argparse.Namespace) -> int:
    import torch

    from kvcast.codec.codec import decode_chunk
    from kvcast.kv.cache import KVMeta
    from kvcast.kv.sources.safetensors_io import KVReader, KVWriter

    prof = _load_profile(args.model_tables)
    dtype = getattr(torch, args.dtype)
    # the chunk headers first: the output's shape and each chunk's place; then each chunk decoded
    # into its token range
    heads = [_read_chunk(Path(p), _head_and_position) for p in args.chunks]
    shapes = [head.shape for head, _ in heads]
    starts = _chunk_starts(args.chunks, heads)
    n_layers, _, _, n_heads, head_dim = shapes[0]
    for p, s in zip(args.chunks, shapes, strict=True):
        if (s[0], s[3], s[4]) != (n_layers, n_heads, head_dim):
            raise InputError(
                f"{p}: chunk of [layers, kv_heads, head_dim] = {[s[0], s[3], s[4]]}; "
                f"{args.chunks[0]} has {[n_layers, n_heads, head_dim]}"
            )
    n_tokens = sum(s[2] for s in shapes)
    shape = [n_layers, 2, n_tokens, n_heads, head_dim]
    extra = {"decoded_from": ",".join(args.chunks)}
    if args.like:
        with KVReader(args.like) as like:  # its metadata and token ids, not its tensor
            src = like.meta
        if (src.n_layers, src.n_kv_heads, src.head_dim) != (n_layers, n_heads, head_dim):
            raise InputError(f"--like {args.like}: its shape does not match the decoded chunks")
        if src.token_ids and len(src.token_ids) < n_tokens:
            raise InputError(f"--like {args.like}: has fewer tokens than the decoded chunks")
        meta = KVMeta(model_id=src.model_id, source="safetensors", dtype=args.dtype, n_layers=src.n_layers,
                      n_kv_heads=src.n_kv_heads, head_dim=src.head_dim, token_ids=src.token_ids[:n_tokens],
                      synthetic=src.synthetic, extra={**src.extra, **extra})  # fmt: skip
    else:  # without token ids the file loader treats it as a generated cache, and says so
        extra["note"] = "decoded kvcast chunks without the original's token ids (pass --like)"
        meta = KVMeta(model_id="decoded", source="safetensors", dtype=args.dtype, n_layers=n_layers,
                      n_kv_heads=n_heads, head_dim=head_dim, token_ids=[], synthetic=True,
                      extra=extra)  # fmt: skip
    with KVWriter(args.out, meta, n_tokens) as writer:
        for p, t0 in tqdm(list(zip(args.chunks, starts, strict=True)), desc="decode", unit="chunk",
                          leave=False, disable=None):  # fmt: skip
            part = _read_chunk(Path(p), lambda b: decode_chunk(b, model_tables=prof, dtype=dtype))
            writer.write(t0, part)
    print(f"wrote {args.out}: {shape} {args.dtype}")
    return 0


def _cache_id(meta: object, n_tokens: int) -> bytes:
    """16 bytes naming one cache: its metadata (model, token ids, source) and length."""
    text = json.dumps([dataclasses.asdict(meta), n_tokens], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).digest()[:16]


def _head_and_position(data: bytes) -> tuple[Any, Any]:
    from kvcast.codec import container

    head = container.parse(data, verify_crc=False)
    return head, container.read_position(data, head)


def _chunk_starts(paths: list[str], heads: list[tuple[Any, Any]]) -> list[int]:
    """Each chunk's first token in the joined cache. Chunks that carry their position (as `codec
    encode` writes them) may come in any order but must be one cache's, each exactly once;
    chunks without one are joined in the order given."""
    positions = [position for _, position in heads]
    if all(p is None for p in positions):
        return list(itertools.accumulate((h.n_tokens for h, _ in heads[:-1]), initial=0))
    first = next(p for p in positions if p is not None)
    seen: dict[int, str] = {}
    for path, p in zip(paths, positions, strict=True):
        if p is None:
            raise InputError(f"{path}: carries no position, while the other chunks do")
        if (p.cache_id, p.count, p.context_tokens) != (
            first.cache_id, first.count, first.context_tokens
        ):  # fmt: skip
            raise InputError(f"{path}: a chunk of another cache than {paths[0]}")
        if p.index in seen:
            raise InputError(f"{path}: chunk {p.index} again (also {seen[p.index]})")
        seen[p.index] = path
    missing = sorted(set(range(first.count)) - set(seen))
    if missing:
        raise InputError(
            f"chunk(s) {', '.join(map(str, missing[:10]))} of {first.count} missing from "
            f"the {len(paths)} given"
        )
    starts = [p.first_token for p in positions]
    order = sorted(range(len(paths)), key=lambda i: positions[i].index)
    expect = 0
    for i in order:  # chunk k starts where chunk k-1 ends
        if positions[i].first_token != expect:
            raise InputError(f"{paths[i]}: starts at token {positions[i].first_token}, "
                             f"expected {expect}")  # fmt: skip
        expect += heads[i][0].n_tokens
    return starts


def _fit(args: argparse.Namespace) -> int:
    from kvcast.codec.codec import default_ladder
    from kvcast.codec.model_tables import fit_model_tables, levels_needing_tables
    from kvcast.codec.transforms import fit_klt
    from kvcast.kv.sources.safetensors_io import load_kv
    from kvcast.profiling.codec_bench import split_chunks

    chunks, model_id, caches, gains = [], None, [], []
    for p in args.kv:
        say(f"fit-tables: reading {p}")
        cache = load_kv(p)
        model_id = model_id or cache.meta.model_id
        kv = cache.kv.float().numpy()
        chunks += split_chunks(kv, args.chunk_tokens)
        caches.append(kv)
        gains.append(cache.key_gains)
    if args.transforms:
        say(f"fit-tables: fitting KLT bases on {len(caches)} cache(s)")
    transforms = fit_klt(caches, gains) if args.transforms else None
    levels = levels_needing_tables(default_ladder(), with_transforms=transforms is not None)
    say(f"fit-tables: counting symbols of {len(levels)} levels on {len(chunks)} chunks")
    prof = fit_model_tables(chunks, levels, model_id=str(model_id), transforms=transforms,
                             provenance={"fitted_on": ",".join(args.kv)})  # fmt: skip
    prof.save(args.out)
    what = "" if transforms is None else (
        ", KLT bases (keys query-weighted)" if transforms.key_gains else ", KLT bases"
    )  # fmt: skip
    print(
        f"wrote {args.out}: model tables {prof.id_hex} for {model_id}, "
        f"{len(prof.counts)} table sets{what}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m kvcast.cli.codec bench codec ...`: the codec's commands alone, for a
    machine that has only the codec's dependencies (scripts/gpu_check.sh on a GPU machine);
    `kvcast` itself loads every area's CLI."""
    return kvcast_main(argv, areas=(__name__,), prog="python -m kvcast.cli.codec")


if __name__ == "__main__":
    sys.exit(main())
