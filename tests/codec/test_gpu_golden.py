"""Golden vectors of the GPU decoder, checked against the CPU decoder on every machine.

The vectors (tests/golden/, made by tests/golden/make_golden.py from real stories260K and
SmolLM2 KV) hold encoded chunks with the symbols and outputs the CPU decoder gave when they were
made; the GPU kernels are held to the same vectors (tests/codec/test_gpu_kernel.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kvcast.codec import codec, container
from kvcast.codec import gpu as kgpu
from kvcast.codec.gpu import decode as gd
from kvcast.kv.sources import synthetic
from kvcast.profiling import gpu_bench as bench
from kvcast.profiling import gpu_check as check

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
NAMES = [c["name"] for c in MANIFEST["cases"]]


@pytest.fixture(scope="module", params=NAMES)
def case(request) -> check.GoldenCase:
    return check.load_golden(GOLDEN, [request.param])[0]


def test_manifest_lists_real_kv_cases_and_stays_small() -> None:
    assert MANIFEST["format"] == "kvcast-gpu-golden" and MANIFEST["version"] == 1
    assert len(NAMES) >= 6 and len(set(NAMES)) == len(NAMES)
    for info in MANIFEST["cases"]:
        assert info["synthetic"] is False, info["name"]
        assert info["model"] in ("stories260K", "SmolLM2-135M-Instruct"), info["model"]
        assert set(info["out_sha256"]) == {"float32", "float16", "bfloat16"}
        if info["level"].startswith("qw-"):  # k_gain levels say where their key gains came from
            assert info["key_gains"]["source"] in ("synthetic", "recorded"), info["name"]
    levels = {c["level"] for c in MANIFEST["cases"]}
    assert codec.default_ladder().default in levels or "cachegen-q1" in levels
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 512 * 1024, f"golden folder grew to {total} bytes"


def test_chunk_bytes_are_the_recorded_ones(case: check.GoldenCase) -> None:
    assert hashlib.sha256(case.data).hexdigest() == case.info["sha256"]
    head = codec.chunk_info(case.data)
    assert head.codec == container.CODEC_CACHEGEN
    assert list(head.shape) == case.info["shape"] and head.level == case.info["level"]


def test_cpu_decoder_reproduces_golden_symbols(case: check.GoldenCase) -> None:
    prep = gd.prepare(case.data)
    sym, status = check.cpu_symbols(prep)
    assert not status.any()
    assert np.array_equal(sym, case.symbols.reshape(-1))


@pytest.mark.parametrize("dtype", sorted(check.DTYPES))
def test_cpu_decoder_reproduces_golden_outputs(case: check.GoldenCase, dtype: str) -> None:
    out = codec.decode_chunk(case.data, device="cpu", dtype=check.DTYPES[dtype])
    assert check.tensor_sha256(out) == case.info["out_sha256"][dtype]
    if case.out_f32 is not None:
        want = torch.from_numpy(case.out_f32).to(check.DTYPES[dtype])
        assert torch.equal(out, want)


def test_kernel_arguments_follow_the_stream_plan(case: check.GoldenCase) -> None:
    prep = gd.prepare(case.data)
    a = prep.args
    assert len(a.n_sym) == case.info["n_streams"] == len(prep.offsets) - 1
    assert a.lanes == case.info["lanes"] and a.prob_bits == case.info["prob_bits"]
    assert int(a.n_sym.sum()) == prep.n_symbols
    assert np.array_equal(a.end[:-1], a.begin[1:])
    biggest = int(max(a.reg_n.max(), a.anc_n[a.group > 0].max(initial=0)))
    assert 2 ** (a.search_steps - 1) < biggest <= 2**a.search_steps
    for tile in (16, 32, 1024):
        _, per = gd.tile_shape(a.lanes, tile)
        rounds = gd.program_rounds(a.n_sym, a.lanes, per)
        assert len(rounds) == math.ceil(len(a.n_sym) / per)
        assert rounds.max() == math.ceil(int(a.n_sym.max()) / a.lanes)


def test_prepare_rejects_what_the_cpu_decoder_rejects() -> None:
    data = check.load_golden(GOLDEN, [NAMES[0]])[0].data
    head = container.parse(data)
    index = head.section(container.SEC_INDEX)
    bad = bytearray(data)
    bad[index.offset] ^= 0xFF  # a stream length off; the section CRC now fails
    for fn in (lambda d: codec.decode_chunk(d), gd.prepare):
        with pytest.raises(container.CorruptChunk, match="CRC|crc"):
            fn(bytes(bad))
    with pytest.raises(ValueError, match="not a CacheGen chunk"):
        gd.prepare(codec.encode_chunk(np.ones((1, 2, 4, 1, 8), np.float32), "fp16"))


def test_status_codes_raise_like_the_cpu_decoder() -> None:
    codec.raise_for_status(np.zeros(3, dtype=np.int32))
    with pytest.raises(container.CorruptChunk, match="stream 2: stream ends before its last"):
        codec.raise_for_status(np.array([0, 0, 1, 3], dtype=np.int32))


def test_shipped_fit_draws_a_synthetic_llama_8b_chunk() -> None:
    stats = bench.load_fit()
    assert "SmolLM2" in stats.fitted_from and stats.fit_tokens > 500
    assert tuple(stats.mean.shape) == (30, 2, 3, 64)
    name, kvs = bench.synthetic_chunks(stats, "Llama-3.1-8B", 3, 1)
    assert name == "Llama-3.1-8B" and synthetic.PRESETS[name] == (32, 8, 128)
    assert tuple(kvs[0].shape) == (32, 2, 3, 8, 128) and kvs[0].dtype == torch.float16
    assert torch.isfinite(kvs[0]).all() and kvs[0].float().std() > 0


def test_transfer_time_and_table_label_synthetic() -> None:
    assert bench.transfer_ms(1.25e9, 10.0) == pytest.approx(1000.0)
    row = {"device": "cuda:NVIDIA H200", "level": "cachegen-q1", "bits_per_element": 2.0,
           "symbols_per_s": 5e10, "output_gb_per_s": 100.0, "kernel_ms": 1.0, "end_to_end_ms": 30.0,
           "transfer_ms": 19.7, "decode_share_of_transfer": 1 / 19.7, "meets_target": True,
           "bit_identical": True, "model": "synthetic:Llama-3.1-8B", "shape": (32, 2, 1500, 8, 128),
           "tokens": 1500, "dtype": "float16", "repeats": 10}  # fmt: skip
    table = bench.format_table({"gbps": 10.0, "rows": [row], "fit": {"fitted_from": "X"}})
    assert "NVIDIA H200" in table and "SYNTHETIC" in table and "5.1%" in table
    assert "yes" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answers")
def test_without_a_gpu_everything_says_why() -> None:
    ok, why = kgpu.available()
    assert not ok and ("CUDA" in why or "Triton" in why)
    assert kgpu.register() is False
    with pytest.raises(RuntimeError, match="no CUDA GPU|TRITON_INTERPRET"):
        gd.check_device("cuda")
    from kvcast.profiling.gpu_timing import time_decode

    with pytest.raises(RuntimeError, match="CUDA"):
        time_decode([check.load_golden(GOLDEN, [NAMES[0]])[0].data])
