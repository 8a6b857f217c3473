"""Chunk checks shared by every decoder: bins >= 4 (no NaN), `prepare_cachegen` used by the CPU
and GPU decoders alike, the lazy GPU registration for "cuda", `kvcast bench codec --device`."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from codec_data import synthetic_kv

import kvcast.codec
from kvcast.cli import codec as codec_cli
from kvcast.cli import main
from kvcast.codec import codec, container
from kvcast.codec.container import CorruptChunk
from kvcast.codec.gpu import decode as gd
from kvcast.codec.ladder import DEFAULT_LADDER, load_ladder
from kvcast.codec.quantize import quantize
from kvcast.errors import InputError

KV = synthetic_kv()
LADDER = load_ladder()


def _ladder_with(tmp_path, old: str, new: str):
    text = DEFAULT_LADDER.read_text()
    assert old in text
    path = tmp_path / "ladder.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def _repack(data: bytes, **replace: bytes) -> bytes:
    """The chunk with some sections' bytes replaced (by name), CRCs recomputed."""
    head = container.parse(data)
    secs = []
    for sec in head.sections:
        raw = replace.pop(sec.name, None)
        secs.append(
            (sec.kind, raw if raw is not None else bytes(container.section_bytes(data, sec)))
        )
    assert not replace, f"no such sections: {list(replace)}"
    return container.pack(codec=head.codec, dtype=head.dtype, flags=head.flags, shape=head.shape,
                          profile_id=head.profile_id if any(head.profile_id) else None,
                          level=head.level, sections=secs)  # fmt: skip


def _section(data: bytes, name: str) -> bytearray:
    head = container.parse(data)
    sec = next(s for s in head.sections if s.name == name)
    return bytearray(container.section_bytes(data, sec))


def test_ladder_rejects_bins_below_4_naming_file_level_and_field(tmp_path) -> None:
    path = _ladder_with(
        tmp_path, "k_bins: [[0.3334, 8], [1.0, 6]]", "k_bins: [[0.3334, 8], [1.0, 3]]"
    )
    with pytest.raises(InputError) as exc:
        load_ladder(path)
    msg = str(exc.value)
    for part in (str(path), "levels[6] (extreme)", "k_bins[1]", "bins 3", "4..256"):
        assert part in msg
    path = _ladder_with(tmp_path, "anchor_bins: 256", "anchor_bins: 3")
    with pytest.raises(InputError, match=r"anchor_bins': expected an integer in 4\.\.256, got 3"):
        load_ladder(path)


@pytest.mark.parametrize("bins", [4, 5])
def test_the_smallest_bins_decode_to_finite_values(tmp_path, bins: int) -> None:
    path = _ladder_with(tmp_path, "k_bins: [[0.3334, 8], [1.0, 6]]", f"k_bins: [[1.0, {bins}]]")
    ladder = load_ladder(path)
    x = KV * np.float32(3e4 / np.abs(KV).max())  # deltas up to the float16 range
    for level in ("extreme", "delta-k-q2"):
        out = codec.decode_chunk(codec.encode_chunk(x, level, ladder=ladder), dtype=torch.float32)
        assert torch.isfinite(out).all()
    out = codec.decode_chunk(codec.encode_chunk(x, "extreme", ladder=ladder), dtype=torch.float32)
    k = out[:, 0].numpy()
    step = np.abs(x[:, 0]).max(axis=(2, 3), keepdims=True) / (bins // 2 - 1)
    assert (np.abs(k - x[:, 0]) <= 0.5 * step * (1 + 1e-3) + 1e-2).all()


def test_bins_3_is_refused_by_the_quantizer_and_the_encoder() -> None:
    x = KV.reshape(KV.shape[0], 2, KV.shape[2], -1)
    bins = np.full((KV.shape[0], 2), 8)
    bins[1, 0] = 3
    with pytest.raises(InputError, match="at least 4"):
        quantize(x, bins)
    with pytest.raises(InputError, match="at least 4"):
        quantize(x, np.full((KV.shape[0], 2), 8), groups=(10, 0), anchor_bins=3)
    spec = dataclasses.replace(LADDER.get("extreme"), k_bins=((1.0, 3),))
    ladder = dataclasses.replace(LADDER, levels=(spec,))
    with pytest.raises(InputError, match="at least 4"):
        codec.encode_chunk(KV, "extreme", ladder=ladder)


def test_chunks_claiming_bins_3_are_corrupt_for_every_decoder() -> None:
    data = codec.encode_chunk(KV, "delta-k-q2")
    assert _repack(data) == data
    params = _section(data, "params")
    n_fixed = len(params) - 4 * KV.shape[0]
    bad_bins = params.copy()
    bad_bins[n_fixed : n_fixed + 2] = (3).to_bytes(2, "little")
    bad_anchor = params.copy()
    bad_anchor[3:5] = (3).to_bytes(2, "little")
    for raw, what in ((bad_bins, "bins outside 4..256"), (bad_anchor, "anchor_bins 3 invalid")):
        chunk = _repack(data, params=bytes(raw))
        for fn in (codec.chunk_info, codec.decode_chunk, gd.prepare):
            with pytest.raises(CorruptChunk, match=what):
                fn(chunk)


def test_cpu_and_gpu_decoders_share_the_chunk_checks() -> None:
    data = codec.encode_chunk(KV, "cachegen-q2")
    scales = np.frombuffer(_section(data, "scales"), "<f2").copy()
    scales[5] = np.nan
    index = np.frombuffer(_section(data, "stream index"), "<u4").copy()
    index[0] += 1
    damaged = [
        _repack(data, scales=scales.tobytes()),
        _repack(data, **{"stream index": index.tobytes()}),
        _repack(data, **{"stream index": index[:-1].tobytes()}),
    ]
    for chunk in damaged:
        msgs = []
        for fn in (codec.decode_chunk, gd.prepare):
            with pytest.raises(CorruptChunk) as exc:
                fn(chunk)
            msgs.append(str(exc.value))
        assert msgs[0] == msgs[1]
    c = codec.prepare_cachegen(container.parse(data), data, None)
    prep = gd.prepare(data)
    assert np.array_equal(c.offsets, prep.offsets) and c.plan is not None
    sym, status = codec.entropy_decode_cpu(c.payload, c.offsets, c.plan, c.tables, c.params,
                                           c.n_symbols)  # fmt: skip
    assert not status.any()
    x = KV.reshape(KV.shape[0], 2, KV.shape[2], -1)
    want, _ = quantize(x, c.params.bins)
    assert np.array_equal(sym, want.reshape(-1))
    with pytest.raises(InputError, match="not a CacheGen chunk"):
        fp16 = codec.encode_chunk(KV, "fp16")
        codec.prepare_cachegen(container.parse(fp16), fp16, None)


@pytest.mark.parametrize("cuda", [True, False])
def test_cuda_decode_looks_up_the_shipped_gpu_decoder(monkeypatch, cuda: bool) -> None:
    """Without a decoder set, "cuda" imports kvcast.codec.gpu and takes its kernel where it can
    run (here: CUDA faked), otherwise leaves the CPU fallback; "cpu" imports nothing."""
    monkeypatch.setattr(codec, "_DEVICE_DECODERS", {})
    monkeypatch.delitem(sys.modules, "kvcast.codec.gpu")
    monkeypatch.setattr(kvcast.codec, "gpu", kvcast.codec.gpu, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    assert codec.device_entropy_decoder("cpu") is None
    assert "kvcast.codec.gpu" not in sys.modules
    fn = codec.device_entropy_decoder("cuda")
    assert "kvcast.codec.gpu" in sys.modules
    if cuda:
        assert fn is gd.entropy_decode
    else:
        assert fn is None


def test_bench_codec_device_errors(monkeypatch, capsys) -> None:
    argv = ["bench", "codec", "--kv", "no-such-file.safetensors", "--no-lmcache"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*argv, "--device", "cuda"]) == 2
    assert "--device cuda: the GPU decoder cannot run here: torch sees no CUDA GPU" in (
        capsys.readouterr().err
    )
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "triton" else find_spec(n, *a)
    )
    assert main([*argv, "--device", "cuda:0"]) == 2
    assert "Triton is not installed" in capsys.readouterr().err
    assert codec_cli.main([*argv, "--device", "cuda"]) == 2  # the codec's commands alone
    assert "Triton is not installed" in capsys.readouterr().err
    assert main([*argv, "--device", "tpu"]) == 2
    assert "expected cpu, cuda or cuda:N, got 'tpu'" in capsys.readouterr().err
    assert main([*argv, "--device", "cpu"]) == 2  # gets past the device check to the file
    assert "no-such-file" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_bench_gpu_figures_run_the_kernels_and_check_bit_identity(tmp_path) -> None:
    """`bench codec --device cuda`'s GPU part, here in Triton's CPU interpreter (a subprocess:
    the variable is read when the kernels are defined)."""
    script = tmp_path / "gpu_bench.py"
    script.write_text(
        "import json, sys, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from codec_data import synthetic_kv\n"
        "from kvcast.codec import codec\n"
        "from kvcast.profiling.codec_bench import gpu_decode_figures\n"
        "datas = [codec.encode_chunk(synthetic_kv(seed=s, n_tokens=20), 'cachegen-q1') for s in (0, 1)]\n"
        "out = codec.decode_chunk(datas[-1])\n"
        "print(json.dumps(gpu_decode_figures(datas, None, 'cpu', 1, out)))\n"
        "try:\n"
        "    gpu_decode_figures(datas, None, 'cpu', 1, out + 1)\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )  # fmt: skip
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(script), str(Path(__file__).parents[1])], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.strip().splitlines()[-2:]
    fig = json.loads(first)
    assert fig["bit_identical_to_cpu"] and fig["level"] == "cachegen-q1"
    assert fig["n_chunks"] == 2 and fig["kernel_ms"] > 0 and fig["decode_melem_per_s"] > 0
    assert "differs from the CPU decoder's output" in second
