"""GPU decode benchmark on a SYNTHETIC Llama-3.1-8B-shaped chunk (the table of gpu_check.sh).

    python -m kvcast.cli.gpu_bench [--tokens 1500] [--levels default|ladder|L1,L2]
                                     [--repeats 10] [--json FILE]

No CPU can prefill Llama-3.1-8B, and the GPU machine may hold no model at all, so the chunk is
drawn by kvcast's synthetic generator (`kvcast.kv.sources.synthetic`: AR(1) per channel)
from statistics fitted on a REAL SmolLM2-135M cache (profiling/data/smollm2_fit.safetensors,
written by tests/golden/make_golden.py; `--fit FILE` fits from another real KV file instead).
Every row says SYNTHETIC. For each level: encode `--chunks` chunks (different seeds) on the
CPU, check that the GPU decode of the first is bit-identical to the CPU decoder's, then time the
GPU decode (`kvcast.profiling.gpu_timing.time_decode`) and compare it with the chunk's transfer
time at `--gbps` (default 10 Gbit/s). Target (issue 8): decode <= 10 % of that transfer time
at the default level on an H200.

Levels with `k_gain: query` (qw-fine, qw-mid, qw-coarse) need the key gains a real model's
prefill records; a synthetic chunk has none, so they are encoded with SYNTHETIC key gains
(`synthetic_key_gains`: seeded, log-uniform over [1/4, 4]), named in the row (`key_gains`) and
under the table. Their decode runs the same kernels (one more float32 multiply per K value).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kvcast.codec import codec
from kvcast.codec.gpu import decode as gd
from kvcast.codec.ladder import Ladder
from kvcast.errors import InputError
from kvcast.kv.sources import synthetic
from kvcast.kv.sources.safetensors_io import load_kv
from kvcast.profiling import gpu_check as check
from kvcast.profiling.gpu_timing import DecodeTiming, time_decode

FIT_FILE = Path(__file__).resolve().parent / "data" / "smollm2_fit.safetensors"
TARGET_SHARE = 0.10


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_fit(path: str | Path | None = None) -> synthetic.FittedStats:
    """Fitted statistics: the shipped SmolLM2 fit, or a fit of a real KV file (`kvcast kv capture`)."""
    if path is not None and Path(path).suffix == ".safetensors" and not _is_fit_file(path):
        return synthetic.fit(load_kv(path))
    path = Path(path) if path is not None else FIT_FILE
    if not path.is_file():
        raise InputError(f"{path}: no such fit file (tests/golden/make_golden.py writes it)")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        t = {k: f.get_tensor(k).float() for k in ("mean", "std", "rho")}
    return synthetic.FittedStats(**t, fitted_from=meta.get("fitted_from", str(path)),
                                 fit_tokens=int(meta.get("fit_tokens", 0)))  # fmt: skip


def _is_fit_file(path: str | Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {"mean", "std", "rho"} <= set(f.keys())
    except Exception:  # noqa: BLE001 - not a safetensors file we can read: not a fit file
        return False


def synthetic_chunks(
    stats: synthetic.FittedStats, shape_name: str, tokens: int, n: int
) -> tuple[str, list[torch.Tensor]]:
    """`n` SYNTHETIC chunks of `tokens` tokens (seeds 0..n-1) of a preset or LxHxD shape."""
    name, shape = synthetic.parse_shape(shape_name)
    out = []
    for seed in range(n):
        gen = synthetic.SyntheticGenerator(stats, shape, name=name, seed=seed, dtype=torch.float16)
        out.append(next(gen.chunks(tokens, tokens)).kv)
    return name, out


BENCH_GAIN_SPREAD = 4.0  # synthetic key gains of the benchmark: log-uniform in [1/4, 4]


def synthetic_key_gains(
    n_layers: int, channels: int, *, seed: int = 0, spread: float = BENCH_GAIN_SPREAD
) -> np.ndarray:
    """SYNTHETIC key gains, float32 [L, C]: log-uniform in [1/spread, spread], seeded.

    For chunks no model prefilled (levels with `k_gain: query` cannot be encoded without
    gains); real gains come from `KVCache.key_gains`.
    """
    if spread < 1:
        raise InputError(f"key gain spread must be >= 1, got {spread}")
    e = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n_layers, channels))
    return (spread**e).astype(np.float32)


def gains_label(spread: float = BENCH_GAIN_SPREAD, seed: int = 0) -> str:
    """How the benchmark's synthetic key gains were drawn (rows and table footer say it)."""
    return f"SYNTHETIC: log-uniform in [1/{spread:g}, {spread:g}], numpy default_rng({seed})"


VARIANTS = {"b128": {"block_tokens": 128}, "b64": {"block_tokens": 64}, "l32": {"lanes": 32}}


def with_variants(ladder: Ladder, spec: str | None) -> tuple[Ladder, list[str]]:
    """The ladder plus format variants of its default level (more streams or lanes: more GPU
    parallelism for a few bytes more), named like ``cachegen-q1+b128``; and their names."""
    if not spec:
        return ladder, []
    base = ladder.get(ladder.default)
    new = []
    for key in spec.split(","):
        if key not in VARIANTS:
            raise InputError(f"--variants {key!r}: expected some of {', '.join(VARIANTS)}")
        new.append(dataclasses.replace(base, name=f"{base.name}+{key}", **VARIANTS[key],
                                       description=f"{base.name} with {VARIANTS[key]}"))  # fmt: skip
    return dataclasses.replace(ladder, variants=(*ladder.variants, *new)), [v.name for v in new]


def transfer_ms(nbytes: float, gbps: float) -> float:
    return nbytes * 8 / (gbps * 1e9) * 1e3


def verify(data: bytes, device: str, dtype: torch.dtype) -> dict:
    """GPU vs CPU decode of one chunk: equal bytes? (and the CPU decoder's wall time)."""
    t0 = time.perf_counter()
    ref = codec.decode_chunk(data, device="cpu", dtype=dtype)
    cpu_s = time.perf_counter() - t0
    got = gd.decode_chunk(data, device=device, dtype=dtype).cpu()
    same = check.tensor_sha256(ref) == check.tensor_sha256(got)
    return {"bit_identical": same, "cpu_decode_ms": cpu_s * 1e3}


@dataclasses.dataclass(frozen=True)
class GpuBenchConfig:
    """What `python -m kvcast.cli.gpu_bench` asks for (its options, same names and defaults)."""

    device: str = "cuda"
    shape: str = "Llama-3.1-8B"
    tokens: int = 1500
    levels: str = "default"  # default | ladder | comma-separated
    chunks: int = 2
    repeats: int = 10
    warmup: int = 3
    dtype: str = "float16"
    gbps: float = 10.0
    fit: str | None = None
    tile_lanes: tuple[int, ...] = (gd.TILE_LANES,)
    variants: str | None = None
    no_verify: bool = False


def run(args: GpuBenchConfig) -> dict:
    device = args.device
    gd.check_device(device)
    ladder = codec.default_ladder()
    if args.levels == "default":
        levels = [ladder.default]
    elif args.levels == "ladder":
        levels = list(ladder.names())
    else:
        levels = [s.strip() for s in args.levels.split(",")]
    dtype = getattr(torch, args.dtype)
    stats = load_fit(args.fit)
    _say(f"drawing {args.chunks} SYNTHETIC {args.shape} chunks of {args.tokens} tokens "
         f"(fitted from {stats.fitted_from}) ...")  # fmt: skip
    shape_name, kvs = synthetic_chunks(stats, args.shape, args.tokens, args.chunks)
    ladder, extra = with_variants(ladder, args.variants)
    rows = []
    for level in [*levels, *extra]:
        t0 = time.perf_counter()
        spec = ladder.get(level)
        gains, label = None, None
        if getattr(spec, "key_gains", False):
            n_layers, _, _, n_heads, head_dim = kvs[0].shape
            gains, label = synthetic_key_gains(n_layers, n_heads * head_dim), gains_label()
            _say(f"{level}: k_gain query level, the synthetic chunk has no queries: {label}")
        chunks = [codec.encode_chunk(kv, level, ladder=ladder, key_gains=gains) for kv in kvs]
        _say(
            f"{level}: encoded {len(chunks)} chunks on the CPU in {time.perf_counter() - t0:.1f} s"
        )
        ver = verify(chunks[0], device, dtype) if not args.no_verify else {}
        if ver and not ver["bit_identical"]:
            _say(f"{level}: GPU output differs from the CPU decoder's")
        # the first tile size is the one reported; others (a sweep) only at the default level
        tiles = args.tile_lanes if level == ladder.default else args.tile_lanes[:1]
        for k, tile in enumerate(tiles):
            timing: DecodeTiming = time_decode(chunks, device=device, dtype=dtype,
                                               warmup=args.warmup, repeats=args.repeats,
                                               tile_lanes=tile)  # fmt: skip
            xfer = transfer_ms(timing.chunk_bytes, args.gbps)
            rows.append({
                "level": level,
                "default_level": level == ladder.default,
                "sweep": k > 0,
                "format_variant": level in extra,
                "model": f"synthetic:{shape_name}",
                "synthetic": True,
                "tokens": args.tokens,
                "key_gains": label,
                "bits_per_element": 8 * timing.chunk_bytes / timing.n_elements,
                "transfer_ms": xfer,
                "decode_share_of_transfer": timing.kernel_ms / xfer,
                "meets_target": timing.kernel_ms <= TARGET_SHARE * xfer,
                **ver,
                **timing.as_dict(),
            })  # fmt: skip
            _say(f"{level} (tile {tile} lanes): {timing.kernel_ms:.3f} ms per chunk "
                 f"(entropy {timing.entropy_ms:.3f}, dequant {timing.dequant_ms:.3f}; "
                 f"transfer {xfer:.2f} ms)")  # fmt: skip
    return {
        "format": "kvcast-gpu-bench",
        "version": 1,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m kvcast.cli.gpu_bench " + " ".join(sys.argv[1:]),
        "device": rows[0]["device"] if rows else device,
        "gbps": args.gbps,
        "fit": {"fitted_from": stats.fitted_from, "fit_tokens": stats.fit_tokens},
        "rows": rows,
    }


def format_table(res: dict) -> str:
    """The short table gpu_check.sh prints."""
    head = (f"{'device':24s} {'level':18s} {'bits/el':>7s} {'Gsym/s':>7s} {'out GB/s':>8s} "
            f"{'decode ms':>9s} {'e2e ms':>7s} {'xfer ms @' + str(res['gbps']) + 'G':>12s} "
            f"{'share':>6s} {'ok':>3s} {'same':>4s} {'cpu ms':>7s}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in res["rows"]:
        dev = r["device"].removeprefix("cuda:")[:24]
        if r.get("sweep"):
            dev = f"  (tile {r['tile_lanes']} lanes)"[:24]
        lines.append(
            f"{dev:24s} {r['level']:18s} {r['bits_per_element']:7.3f} {r['symbols_per_s'] / 1e9:7.2f} "
            f"{r['output_gb_per_s']:8.1f} {r['kernel_ms']:9.3f} {r['end_to_end_ms']:7.1f} "
            f"{r['transfer_ms']:12.2f} {100 * r['decode_share_of_transfer']:5.1f}% "
            f"{'yes' if r['meets_target'] else 'NO':>3s} {str(r.get('bit_identical', '-'))[:4]:>4s} "
            f"{r.get('cpu_decode_ms', float('nan')):7.0f}"
        )
    first = res["rows"][0] if res["rows"] else None
    if first:
        lines.append(
            f"chunk: SYNTHETIC {first['model']} {first['shape']} ({first['tokens']} tokens, "
            f"{first['dtype']} out), fitted from {res['fit']['fitted_from']}; decode ms = rANS + "
            f"dequant kernels (CUDA events, median of {first['repeats']}, fresh inputs, L2 flushed); "
            f"share = decode / transfer, target <= {100 * TARGET_SHARE:.0f}%; same = GPU output equal "
            "to the CPU decoder's; cpu ms = the CPU decoder (numba, this machine's cores)"
        )
    labels = sorted({r["key_gains"] for r in res["rows"] if r.get("key_gains")})
    if labels:
        lines.append("key gains of the k_gain: query levels: " + "; ".join(labels))
    return "\n".join(lines)
