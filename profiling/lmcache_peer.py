"""LMCache's CacheGen serializer as a peer to measure against.

LMCache pins its own numpy, so it runs in its own Python environment (scripts/setup_lmcache.sh):
this module hands it the chunks as fp16 .npy files, runs codec/lmcache_runner.py there, and
reads back its per-chunk sizes and timings and the decoded chunks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kvcast.errors import KvcastError

RUNNER = Path(__file__).with_name("lmcache_runner.py")


class LMCacheRunError(KvcastError):
    """LMCache's runner failed or timed out; the message carries the end of its output."""


def run_lmcache(
    python: str, chunks: Sequence[np.ndarray], repeats: int, timeout_s: float = 3600
) -> tuple[dict, list[np.ndarray]]:
    """Encode and decode `chunks` ([L, 2, T, H, D], sent as fp16) with LMCache's CacheGen.

    Returns the runner's results.json (per chunk: bytes, encode_s, decode_s, bins; versions)
    and the decoded chunks as float32 arrays.
    """
    tmp = Path(tempfile.mkdtemp(prefix="kvcast-lmcache-"))
    try:
        src, out = tmp / "in", tmp / "out"
        src.mkdir()
        for i, c in enumerate(chunks):
            np.save(src / f"chunk_{i:04d}.npy", np.asarray(c, dtype=np.float16))
        shape = chunks[0].shape
        (src / "config.json").write_text(json.dumps({
            "model_type": "llama", "num_hidden_layers": int(shape[0]),
            "num_key_value_heads": int(shape[3]), "head_dim": int(shape[4]),
        }))  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["HF_HUB_OFFLINE"] = "1"
        cmd = [python, str(RUNNER), "--in", str(src), "--out", str(out), "--repeats", str(repeats)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LMCacheRunError(f"LMCache runner timed out after {timeout_s:.0f} s") from exc
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise LMCacheRunError(
                f"LMCache runner ({python}) exited with {proc.returncode}: {tail or 'no output'}"
            )
        results = json.loads((out / "results.json").read_text())
        decoded = [
            np.load(out / f"decoded_{i:04d}.npy").astype(np.float32) for i in range(len(chunks))
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results, decoded
