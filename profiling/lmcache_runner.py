"""Run LMCache 0.5.6's CacheGen serializer on KV chunks, in LMCache's own Python environment.

Standalone on purpose (no kvcast imports): `kvcast bench codec` runs it as a script with the
interpreter of a separate virtual environment (LMCache pins numpy; scripts/setup_lmcache.sh
creates one). Input: a folder with chunk_*.npy (float16 [L, 2, T, H, D]) and a config.json
(model_type llama, num_hidden_layers) that LMCache's AutoConfig fallback reads to choose its
bins. Output, in --out: decoded_*.npy (float16) and results.json with, per chunk, the
serialized size and the encode/decode times (median of --repeats, after one warm-up call that
compiles LMCache's numba kernels).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--in", dest="src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    import torch

    try:
        import lmcache
        from lmcache.storage_backend.serde.cachegen_decoder import CacheGenDeserializer
        from lmcache.storage_backend.serde.cachegen_encoder import CacheGenSerializer
    except ImportError as exc:
        print(f"lmcache not importable: {exc}", file=sys.stderr)
        return 3
    src, out = Path(args.src), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("chunk_*.npy"))
    results = {
        "lmcache_version": getattr(lmcache, "__version__", "unknown"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(getattr(lmcache, "torch_device_type", "cpu")),
        "chunks": [],
    }
    warmed = False
    for path in files:
        kv = torch.from_numpy(np.load(path))
        cfg = types.SimpleNamespace(chunk_size=kv.shape[2])
        md = types.SimpleNamespace(model_name=str(src))
        ser = CacheGenSerializer(cfg, md)
        des = CacheGenDeserializer(cfg, md, torch.float16)
        if not warmed:
            des.from_bytes(ser.to_bytes(kv))
            warmed = True
        enc_t, dec_t = [], []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            blob = ser.to_bytes(kv)
            t1 = time.perf_counter()
            dec = des.from_bytes(blob)
            t2 = time.perf_counter()
            enc_t.append(t1 - t0)
            dec_t.append(t2 - t1)
        np.save(out / path.name.replace("chunk_", "decoded_"), dec.to(torch.float16).numpy())
        results["chunks"].append(
            {
                "file": path.name,
                "bytes": len(blob),
                "encode_s": statistics.median(enc_t),
                "decode_s": statistics.median(dec_t),
                "key_bins": ser.key_bins.tolist(),
                "value_bins": ser.value_bins.tolist(),
            }
        )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
