"""Fuzz the inputs users hand kvcast besides chunks (tests/codec/test_fuzz.py does those): trace
files of every format, scenario YAML and KV safetensors files, mutated byte by byte with a fixed
seed. Every mutant either loads or raises the project's own error (KvcastError); none crashes
with another exception or takes more than a moment."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from codec_data import synthetic_kv

from kvcast.errors import KvcastError
from kvcast.kv.cache import KVCache, KVMeta
from kvcast.kv.sources.safetensors_io import load_kv, save_kv
from kvcast.sim.scenario import load_scenario
from kvcast.traces.readers import load_trace

N_MUTANTS = 1000  # per input: 6,000 in all
MAX_SECONDS = 2.0  # per mutant

TRACES = {
    "t.down": "".join(f"{t}\n" for t in range(0, 2000, 7)),  # mahimahi
    "t.csv": "time_s,mbps\n0,10\n1,0\n2,25.5\n3,3\n",
    "t.log": "".join(f"{t * 0.5:.1f} {3 + (t % 5):.2f}\n" for t in range(40)),  # Pensieve
    "t.json": '[{"duration_ms": 1000, "bandwidth_kbps": 5000, "latency_ms": 20},'
    ' {"duration_ms": 2000, "bandwidth_kbps": 800, "latency_ms": 40}]',  # sabre
}
SCENARIO = {
    "name": "fuzz",
    "seed": [0, 1],
    "slo_s": [0.5, 1.0],
    "model": "llama-3.1-8b",
    "gpu": "a100",
    "profile": "smollm2-135m-cpu",
    "chunk_tokens": 1500,
    "workload": {
        "requests": 3,
        "arrival": {"process": "poisson", "rate_per_s": 2.0},
        "context_tokens": {"uniform": [3000, 9000]},
    },
    "link": {"synthetic": {"kind": "steps", "mbps": [300, 100], "durations_s": 0.5}},
    "receiver": {"decode_melem_per_s": 20000},
    "objective": {"late_quality_weight": 0.5},
    "controllers": ["cachegen", "mpc", "fixed:klt-mid", "oracle"],
}


def mutants(data: bytes, seed: int, n: int) -> list[bytes]:
    """Seeded mutants: byte flips, deletions, insertions, truncations, duplicated spans."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            kind = int(rng.integers(0, 5))
            i = int(rng.integers(0, max(1, len(b))))
            if kind == 0 and b:
                b[i % len(b)] = int(rng.integers(0, 256))
            elif kind == 1 and b:
                del b[i : i + int(rng.integers(1, 8))]
            elif kind == 2:
                b[i:i] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 8)), dtype=np.uint8))
            elif kind == 3:
                del b[i:]
            else:
                b[i:i] = b[i : i + int(rng.integers(1, 32))]
        out.append(bytes(b))
    return out


def _fuzz(load: Callable[[Path], object], path: Path, data: bytes, seed: int) -> dict[str, int]:
    tally = {"loaded": 0, "refused": 0}
    for mutant in mutants(data, seed, N_MUTANTS):
        path.write_bytes(mutant)
        t0 = time.perf_counter()
        try:
            load(path)
            tally["loaded"] += 1
        except KvcastError:
            tally["refused"] += 1
        # any other exception fails the test with its traceback
        assert time.perf_counter() - t0 < MAX_SECONDS, mutant[:200]
    return tally


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRACES))
def test_mutated_trace_files_load_or_raise_the_projects_error(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    data = TRACES[name].encode()
    path.write_bytes(data)
    load_trace(path)  # the original is valid
    tally = _fuzz(load_trace, path, data, seed=sum(map(ord, name)))
    assert tally["refused"] > 0


@pytest.mark.slow
def test_mutated_scenarios_load_or_raise_the_projects_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    data = yaml.safe_dump(SCENARIO, sort_keys=False).encode()
    path.write_bytes(data)
    load_scenario(path)
    tally = _fuzz(load_scenario, path, data, seed=7)
    assert tally["refused"] > 0 and tally["loaded"] > 0


@pytest.mark.slow
def test_mutated_kv_files_load_or_raise_the_projects_error(tmp_path: Path) -> None:
    kv = torch.from_numpy(synthetic_kv(n_layers=2, n_tokens=12, n_heads=2, head_dim=4))
    meta = KVMeta(model_id="synthetic:fuzz", source="synthetic", dtype="float32", n_layers=2,
                  n_kv_heads=2, head_dim=4, token_ids=[], synthetic=True)  # fmt: skip
    path = save_kv(KVCache(kv, meta), tmp_path / "kv.safetensors")
    data = path.read_bytes()
    tally = _fuzz(load_kv, path, data, seed=11)
    assert tally["refused"] > 0
