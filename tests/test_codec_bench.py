"""`kvcast bench codec` and `kvcast codec ...` on a small saved (synthetic-labelled) KV file."""

from __future__ import annotations

import json

import pytest
import torch
from codec_data import synthetic_kv

from kvcast.cli import main
from kvcast.codec.kv import KVCache, KVMeta
from kvcast.codec.sources.safetensors_io import save_kv


def _kv_file(tmp_path, seed: int, n_tokens: int = 60):
    x = torch.from_numpy(
        synthetic_kv(n_layers=3, n_tokens=n_tokens, n_heads=2, head_dim=8, seed=seed)
    )
    meta = KVMeta(model_id="synthetic:test", source="synthetic", dtype="float32", n_layers=3, n_kv_heads=2,
                  head_dim=8, token_ids=[], synthetic=True)  # fmt: skip
    return save_kv(KVCache(x, meta), tmp_path / f"kv{seed}.safetensors")


@pytest.mark.slow
def test_bench_codec_json(tmp_path, capsys):
    kv, fit = _kv_file(tmp_path, 1), _kv_file(tmp_path, 2)
    out = tmp_path / "bench.json"
    rc = main(["bench", "codec", "--kv", str(kv), "--fit-kv", str(fit), "--chunk-tokens", "20", "--repeats", "1",
               "--levels", "cachegen-q2,cachegen-q1,paper-q2,int8,fp16", "--lmcache-python", "/bin/false",
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["levels"]}
    assert set(rows) == {"cachegen-q2", "cachegen-q1", "paper-q2", "int8", "fp16"}
    assert rows["int8"]["ratio_vs_int8"] == pytest.approx(1.0)
    q2 = rows["cachegen-q2"]
    b = q2["bits_per_element"]
    assert b["total"] == pytest.approx(b["payload"] + b["side"])
    assert 0.3 < q2["coder_efficiency"] <= 1.0  # tiny chunks: stream flushes dominate
    assert q2["rel_l2_error"]["k"] < q2["rel_l2_error"]["v"] + 1  # both present and finite
    assert res["kv"]["n_chunks"] == 3
    assert res["lmcache"]["status"] == "failed"  # /bin/false is not an LMCache environment
    assert "cachegen-q2" in capsys.readouterr().out


def test_bench_unknown_level_fails_fast(tmp_path):
    kv = _kv_file(tmp_path, 1)
    assert main(["bench", "codec", "--kv", str(kv), "--levels", "nope", "--no-lmcache"]) == 2


def test_codec_encode_info_decode(tmp_path, capsys):
    kv = _kv_file(tmp_path, 3, n_tokens=45)
    out = tmp_path / "chunks"
    assert (
        main(
            [
                "codec",
                "encode",
                str(kv),
                "--level",
                "cachegen-q2",
                "--chunk-tokens",
                "20",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    files = sorted(str(p) for p in out.glob("chunk_*.kvc"))
    assert len(files) == 3
    assert main(["codec", "info", files[0]]) == 0
    assert "level cachegen-q2" in capsys.readouterr().out
    dec = tmp_path / "dec.safetensors"
    assert main(["codec", "decode", *files, "-o", str(dec), "--dtype", "float32"]) == 0
    from kvcast.codec.sources.safetensors_io import load_kv

    back = load_kv(dec).kv
    orig = load_kv(kv).kv
    assert back.shape == orig.shape
    assert float((back - orig).norm() / orig.norm()) < 0.3


def test_codec_fit_profile(tmp_path):
    kv = _kv_file(tmp_path, 4)
    prof = tmp_path / "p.safetensors"
    assert main(["codec", "fit-profile", str(kv), "--chunk-tokens", "20", "-o", str(prof)]) == 0
    out = tmp_path / "chunks"
    assert main(["codec", "encode", str(kv), "--level", "paper-q2", "--chunk-tokens", "30",
                 "--model-profile", str(prof), "-o", str(out)]) == 0  # fmt: skip
    files = sorted(str(p) for p in out.glob("*.kvc"))
    assert (
        main(["codec", "decode", *files, "-o", str(tmp_path / "d.safetensors")]) == 2
    )  # needs the profile
    assert (
        main(
            [
                "codec",
                "decode",
                *files,
                "--model-profile",
                str(prof),
                "-o",
                str(tmp_path / "d.safetensors"),
            ]
        )
        == 0
    )


def test_codec_cli_names_a_damaged_chunk_file(tmp_path, capsys):
    kv = _kv_file(tmp_path, 3, n_tokens=20)
    out = tmp_path / "chunks"
    assert main(["codec", "encode", str(kv), "--chunk-tokens", "20", "-o", str(out)]) == 0
    chunk = out / "chunk_0000.kvc"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["codec", "info", str(chunk)]) == 2
    assert main(["codec", "decode", str(chunk), "-o", str(tmp_path / "d.safetensors")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert all(line.startswith(f"kvcast: error: {chunk}: ") for line in errors), errors
