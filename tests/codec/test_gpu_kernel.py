"""The GPU kernels against the golden vectors and the CPU decoder, bit for bit.

On a machine with a CUDA GPU the kernels run on it. Without one they run in Triton's CPU
interpreter (TRITON_INTERPRET=1, in a subprocess since the variable is read when kernels are
defined): slower, so on the small stories260K cases only. Skipped, with the reason, where
Triton is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
SMALL = [c["name"] for c in MANIFEST["cases"] if c["model"] == "stories260K"]

pytestmark = pytest.mark.skipif(
    not HAS_TRITON,
    reason="Triton is not installed: the GPU kernel tests need it (with a CUDA GPU, or on the CPU "
    "through its interpreter: pip install triton)",
)


def _interpret(args: list[str], tmp_path: Path) -> list[dict]:
    out = tmp_path / "check.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kvcast.cli.gpu_check", "--golden", str(GOLDEN), "--device",
         "cpu", "--json", str(out), *args],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason="a GPU is here: the kernels run on it instead")
def test_interpreted_kernels_match_golden_and_cpu_errors(tmp_path: Path) -> None:
    """All small cases, one program for all streams; damaged streams on one edge case."""
    res = _interpret(["--cases", ",".join(SMALL), "--tiles", "1024",
                      "--corruption", "stories260k-edge-lanes5"], tmp_path)  # fmt: skip
    assert [r["name"] for r in res] == SMALL
    assert all(r["ok"] for r in res), [r["failures"] for r in res]
    codes = set()
    for r in res:
        for st in r.get("corruption", {}).get("statuses", []):
            codes |= set(st["cpu"])
    assert {1, 2, 3, 4} <= codes  # every error code was produced and matched


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason="a GPU is here: the kernels run on it instead")
def test_interpreted_default_tile_and_codec_hook(tmp_path: Path) -> None:
    """The GPU's default tile (2 streams of 16 lanes a program) and the codec's hook, on a
    chunk without and one with key gains."""
    names = ["stories260k-cachegen-q1", "stories260k-qw-mid"]
    res = _interpret(["--cases", ",".join(names), "--tiles", "32", "--corruption", "none",
                      "--hook"], tmp_path)  # fmt: skip
    assert [r["name"] for r in res] == names
    assert all(r["ok"] for r in res), [r["failures"] for r in res]


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason="a GPU is here: the kernels run on it instead")
def test_interpreted_bench_plumbing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kvcast.cli.gpu_bench", "--device", "cpu", "--shape", "2x2x16",
         "--tokens", "12", "--chunks", "1", "--repeats", "1", "--levels", "cachegen-q1,qw-mid",
         "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    row, qw = res["rows"]
    assert row["synthetic"] is True and row["bit_identical"] is True
    assert row["device"].startswith("cpu:triton-interpreter")
    assert "SYNTHETIC" in proc.stdout
    # a k_gain level on a synthetic chunk: explicitly labelled synthetic key gains
    assert row["key_gains"] is None and qw["level"] == "qw-mid" and qw["bit_identical"] is True
    assert qw["key_gains"].startswith("SYNTHETIC") and qw["key_gains"] in proc.stdout


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here (the interpreter tests cover the CPU)")
def test_gpu_kernels_match_golden_and_cpu_errors() -> None:
    from kvcast.profiling import gpu_check as check

    for case in check.load_golden(GOLDEN):
        r = check.check_case(case, "cuda", (16, 32, 1024), hook=True)
        c = check.check_corruption(case, "cuda")
        assert r["ok"] and c["ok"], (case.name, r["failures"], c["failures"])


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here")
def test_codec_decode_chunk_uses_the_registered_kernel() -> None:
    import kvcast.codec.gpu as kgpu
    from kvcast.codec import codec
    from kvcast.profiling import gpu_check as check

    assert kgpu.register()
    case = check.load_golden(GOLDEN, [SMALL[0]])[0]
    out = codec.decode_chunk(case.data, device="cuda", dtype=torch.bfloat16)
    assert out.device.type == "cuda"
    assert check.tensor_sha256(out) == case.info["out_sha256"]["bfloat16"]


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here")
def test_time_decode_on_gpu() -> None:
    from kvcast.profiling import gpu_check as check
    from kvcast.profiling.gpu_timing import time_decode

    case = check.load_golden(GOLDEN, [SMALL[0]])[0]
    t = time_decode([case.data], warmup=1, repeats=3)
    assert t.device.startswith("cuda:") and t.kernel_ms > 0 and len(t.samples_kernel_ms) == 3
    assert t.kernel_ms == pytest.approx(t.entropy_ms + t.dequant_ms, rel=0.5)
    assert t.symbols_per_s > 0 and t.decode_melem_per_s > 0
