"""KVCache / KVMeta checks, safetensors save/load round trips and bad KV files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kvcast.errors import InputError
from kvcast.kv.cache import KVCache, KVMeta, summary
from kvcast.kv.sources import capture
from kvcast.kv.sources.safetensors_io import load_kv, read_header, save_kv


def _meta(**over: object) -> KVMeta:
    base = dict(
        model_id="m",
        source="llama2c",
        dtype="float32",
        n_layers=2,
        n_kv_heads=3,
        head_dim=4,
        token_ids=list(range(5)),
        synthetic=False,
        extra={"context": "prose"},
    )
    base.update(over)
    return KVMeta(**base)  # type: ignore[arg-type]


def _cache() -> KVCache:
    g = torch.Generator().manual_seed(0)
    return KVCache(kv=torch.randn(2, 2, 5, 3, 4, generator=g), meta=_meta())


def test_layout_is_checked_against_metadata() -> None:
    kv = torch.zeros(2, 2, 5, 3, 4)
    with pytest.raises(InputError, match="does not match its metadata"):
        KVCache(kv=kv, meta=_meta(n_kv_heads=4))
    with pytest.raises(InputError, match="expected \\[layers, 2, tokens"):
        KVCache(kv=torch.zeros(2, 3, 5, 3, 4), meta=_meta())
    with pytest.raises(InputError, match="dtype"):
        KVCache(kv=kv.half(), meta=_meta())
    with pytest.raises(InputError, match="4 token ids for 5 cached tokens"):
        KVCache(kv=kv, meta=_meta(token_ids=[1, 2, 3, 4]))
    with pytest.raises(InputError, match="synthetic cache has no token ids"):
        KVCache(kv=kv, meta=_meta(synthetic=True))


def test_slice_and_dtype() -> None:
    c = _cache()
    s = c.slice_tokens(1, 4)
    assert s.n_tokens == 3 and s.meta.token_ids == [1, 2, 3]
    assert torch.equal(s.kv, c.kv[:, :, 1:4])
    assert c.meta.token_ids == [0, 1, 2, 3, 4]  # the original is untouched
    h = c.to_dtype(torch.float16)
    assert h.meta.dtype == "float16" and h.nbytes == c.nbytes // 2
    with pytest.raises(InputError, match="token range 3:9"):
        c.slice_tokens(3, 9)


def test_round_trip_keeps_tensor_and_metadata(tmp_path: Path) -> None:
    c = _cache()
    path = save_kv(c, tmp_path / "sub" / "c.safetensors")
    back = load_kv(path)
    assert torch.equal(back.kv, c.kv) and back.meta == c.meta
    assert read_header(path)["model_id"] == "m"


def test_round_trip_of_a_real_cache(stories260k_dir: Path, tmp_path: Path) -> None:
    real = capture(f"stories260k:{stories260k_dir}", context="docstrings", tokens=128)
    for dtype in ("float32", "float16", "bfloat16"):
        c = real.to_dtype(getattr(torch, dtype))
        back = load_kv(save_kv(c, tmp_path / f"{dtype}.safetensors"))
        assert torch.equal(back.kv, c.kv) and back.meta == c.meta
    text = "\n".join(summary(real))
    assert "stories260K" in text and "[5, 2, 128, 4, 8]" in text and "SYNTHETIC" not in text


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello, I am text")
    with pytest.raises(InputError, match=r"notes\.safetensors: not a safetensors file"):
        load_kv(bad)
    with pytest.raises(InputError, match=r"missing\.safetensors: no such KV file"):
        load_kv(tmp_path / "missing.safetensors")


def test_foreign_safetensors_file(tmp_path: Path) -> None:
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(
        InputError, match=r"weights\.safetensors: a safetensors file, but not a kvcast KV"
    ):
        load_kv(other)


def _write(path: Path, tensors: dict, meta: dict, version: str = "1") -> Path:
    header = {"format": "kvcast-kv", "version": version, "meta": json.dumps(meta)}
    save_file(tensors, str(path), metadata=header)
    return path


def test_inconsistent_kv_files(tmp_path: Path) -> None:
    c = _cache()
    meta = {
        k: getattr(c.meta, k)
        for k in ("model_id", "source", "dtype", "n_layers", "n_kv_heads", "head_dim", "synthetic")
    }
    meta["extra"] = {}
    ids = torch.arange(5)
    with pytest.raises(InputError, match=r"v2\.safetensors: kvcast KV file version '2'"):
        load_kv(_write(tmp_path / "v2.safetensors", {"kv": c.kv, "token_ids": ids}, meta, "2"))
    wrong = {**meta, "head_dim": 8}
    with pytest.raises(InputError, match=r"shape\.safetensors: KV tensor shape .* does not match"):
        load_kv(_write(tmp_path / "shape.safetensors", {"kv": c.kv, "token_ids": ids}, wrong))
    with pytest.raises(InputError, match=r"noids\.safetensors: a cache of a real model must carry"):
        load_kv(_write(tmp_path / "noids.safetensors", {"kv": c.kv}, meta))
    partial = {k: v for k, v in meta.items() if k != "source"}
    with pytest.raises(InputError, match=r"fields\.safetensors: header 'meta' has fields"):
        load_kv(_write(tmp_path / "fields.safetensors", {"kv": c.kv, "token_ids": ids}, partial))
    typed = {**meta, "n_layers": "2"}
    with pytest.raises(InputError, match=r"type\.safetensors: meta field 'n_layers'"):
        load_kv(_write(tmp_path / "type.safetensors", {"kv": c.kv, "token_ids": ids}, typed))
    with pytest.raises(InputError, match=r"nokv\.safetensors: no 'kv' tensor"):
        load_kv(_write(tmp_path / "nokv.safetensors", {"token_ids": ids}, meta))


def test_truncated_kv_file(tmp_path: Path) -> None:
    path = save_kv(_cache(), tmp_path / "c.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match=r"cut\.safetensors"):
        load_kv(cut)
