"""Streaming KV files: KVWriter / KVReader, and the commands that use them (capture, info,
codec encode / decode) give what the whole-cache versions gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from codec_data import synthetic_kv

from kvcast.cli import main
from kvcast.errors import InputError
from kvcast.kv.cache import KVCache, KVMeta, KVStats, summary
from kvcast.kv.sources import capture, capture_to_file
from kvcast.kv.sources.safetensors_io import KVReader, KVWriter, load_kv, read_header, save_kv


def _meta(dtype: str, n_tokens: int, *, real: bool = True) -> KVMeta:
    return KVMeta(model_id="m" if real else "synthetic:test", source="transformers" if real else "synthetic",
                  dtype=dtype, n_layers=3, n_kv_heads=2, head_dim=8,
                  token_ids=list(range(100, 100 + n_tokens)) if real else [], synthetic=not real,
                  extra={"context": "prose"})  # fmt: skip


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_writer_file_reads_back_equal(tmp_path: Path, dtype: str) -> None:
    kv = torch.from_numpy(synthetic_kv(n_layers=3, n_tokens=50, n_heads=2, head_dim=8, seed=1))
    kv = kv.to(getattr(torch, dtype))
    gains = np.linspace(0.5, 2.0, 48, dtype=np.float32).reshape(3, 16)
    meta = _meta(dtype, 50)
    path = tmp_path / "w.safetensors"
    with KVWriter(path, meta, 50, key_gains=gains) as w:
        for t0, t1 in ((30, 50), (0, 13), (13, 30)):  # any order
            w.write(t0, kv[:, :, t0:t1])
    back = load_kv(path)
    assert torch.equal(back.kv, kv) and back.meta == meta
    assert np.array_equal(back.key_gains, gains)
    saved = save_kv(KVCache(kv, meta, gains), tmp_path / "s.safetensors")
    assert read_header(path) == read_header(saved)
    assert path.stat().st_size == saved.stat().st_size
    with KVReader(saved) as r:  # the reader reads save_kv's files too
        assert r.meta == meta and r.n_tokens == 50 and np.array_equal(r.key_gains, gains)
        assert torch.equal(r.read(7, 41), kv[:, :, 7:41])
        assert torch.equal(torch.cat([p for _, p in r.iter_chunks(9)], dim=2), kv)


def test_writer_is_all_or_nothing(tmp_path: Path) -> None:
    kv = torch.zeros(3, 2, 20, 2, 8)
    path = tmp_path / "w.safetensors"
    path.write_text("previous")
    meta = _meta("float32", 20, real=False)
    with (
        pytest.raises(InputError, match="10 of 20 tokens never written"),
        KVWriter(path, meta, 20) as w,
    ):
        w.write(0, kv[:, :, :10])
    assert path.read_text() == "previous" and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(RuntimeError), KVWriter(path, meta, 20) as w:
        w.write(0, kv[:, :, :10])
        raise RuntimeError("stopped")
    assert path.read_text() == "previous" and not list(tmp_path.glob("*.tmp"))
    with KVWriter(path, _meta("float32", 20, real=False), 20) as w:
        with pytest.raises(InputError, match="overlap"):
            w.write(0, kv[:, :, :10])
            w.write(5, kv[:, :, :10])
        with pytest.raises(InputError, match="dtype"):
            w.write(10, kv[:, :, 10:].half())
        w.write(10, kv[:, :, 10:])
    assert load_kv(path).n_tokens == 20
    with pytest.raises(InputError, match="must carry its token ids"):
        KVWriter(tmp_path / "x.safetensors", _meta("float32", 0), 20)


def test_reader_names_a_nan_by_its_place_in_the_cache(tmp_path: Path) -> None:
    kv = torch.from_numpy(synthetic_kv(n_layers=3, n_tokens=40, n_heads=2, head_dim=8))
    kv[2, 1, 33, 0, 5] = float("nan")
    path = save_kv(KVCache(kv, _meta("float32", 40, real=False)), tmp_path / "n.safetensors")
    with KVReader(path) as r:
        assert torch.equal(r.read(0, 30), kv[:, :, :30])
        with pytest.raises(InputError, match=r"= \[2, 1, 33, 0, 5\]"):
            r.read(30, 40)


def _kv_file(tmp_path: Path, n_tokens: int, *, gains: bool = False) -> Path:
    kv = torch.from_numpy(
        synthetic_kv(n_layers=3, n_tokens=n_tokens, n_heads=2, head_dim=8, seed=4)
    )
    g = (
        np.random.default_rng(0).uniform(0.2, 3.0, size=(3, 16)).astype(np.float32)
        if gains
        else None
    )
    return save_kv(KVCache(kv, _meta("float32", n_tokens), g), tmp_path / "kv.safetensors")


@pytest.mark.parametrize("level", ["cachegen-q2", "qw-mid", "int8"])
def test_streamed_encode_is_byte_identical_to_encoding_the_loaded_cache(
    tmp_path: Path, level: str
) -> None:
    from kvcast.chunks import chunk_bounds
    from kvcast.codec import container
    from kvcast.codec.codec import encode_chunk

    path = _kv_file(tmp_path, 95, gains=True)
    out = tmp_path / "chunks"
    assert main(["codec", "encode", str(path), "--level", level, "--chunk-tokens", "40",
                 "-o", str(out)]) == 0  # fmt: skip
    cache = load_kv(path)
    bounds = chunk_bounds(cache.n_tokens, 40)
    files = sorted(out.glob("chunk_*.kvc"))
    assert len(files) == len(bounds) == 3
    cache_id = None
    for i, (f, (t0, t1)) in enumerate(zip(files, bounds, strict=True)):
        data = f.read_bytes()
        position = container.read_position(data, container.parse(data))
        cache_id = cache_id or position.cache_id
        assert position == container.Position(cache_id, i, 3, t0, cache.n_tokens)
        want = encode_chunk(cache.kv[:, :, t0:t1], level, key_gains=cache.key_gains,
                            context_start=t0 == 0)  # fmt: skip
        assert data == container.with_position(want, position)  # the codec's bytes + position


def test_encode_leaves_no_chunks_when_a_later_chunk_is_refused(tmp_path: Path, capsys) -> None:
    kv = torch.from_numpy(synthetic_kv(n_layers=3, n_tokens=60, n_heads=2, head_dim=8))
    kv[0, 0, 55, 1, 1] = float("inf")
    path = save_kv(KVCache(kv, _meta("float32", 60, real=False)), tmp_path / "i.safetensors")
    out = tmp_path / "chunks"
    assert main(["codec", "encode", str(path), "--chunk-tokens", "20", "-o", str(out)]) == 2
    assert "[0, 0, 55, 1, 1]" in capsys.readouterr().err
    assert not list(out.glob("*.kvc"))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_streamed_decode_equals_decoding_and_concatenating(tmp_path: Path, dtype: str) -> None:
    from kvcast.codec.codec import decode_chunk

    path = _kv_file(tmp_path, 95)
    out = tmp_path / "chunks"
    assert main(["codec", "encode", str(path), "--level", "cachegen-q2", "--chunk-tokens", "40",
                 "-o", str(out)]) == 0  # fmt: skip
    files = sorted(str(p) for p in out.glob("chunk_*.kvc"))
    dec = tmp_path / "dec.safetensors"
    assert main(["codec", "decode", *files, "--dtype", dtype, "--like", str(path),
                 "-o", str(dec)]) == 0  # fmt: skip
    want = torch.cat(
        [decode_chunk(Path(f).read_bytes(), dtype=getattr(torch, dtype)) for f in files], dim=2
    )
    back = load_kv(dec)
    assert torch.equal(back.kv, want)
    assert back.meta.token_ids == load_kv(path).meta.token_ids and back.meta.dtype == dtype


def test_decode_refuses_chunks_of_different_models(tmp_path: Path, capsys) -> None:
    from kvcast.codec.codec import encode_chunk

    a = tmp_path / "a.kvc"
    b = tmp_path / "b.kvc"
    a.write_bytes(
        encode_chunk(synthetic_kv(n_layers=3, n_tokens=10, n_heads=2, head_dim=8), "int8")
    )
    b.write_bytes(
        encode_chunk(synthetic_kv(n_layers=2, n_tokens=10, n_heads=2, head_dim=8), "int8")
    )
    out = tmp_path / "d.safetensors"
    assert main(["codec", "decode", str(a), str(b), "-o", str(out)]) == 2
    assert f"{b}: chunk of [layers, kv_heads, head_dim] = [2, 2, 8]" in capsys.readouterr().err
    assert not out.exists()


def test_info_streams_the_same_summary(tmp_path: Path, capsys) -> None:
    path = _kv_file(tmp_path, 70, gains=True)
    assert main(["kv", "info", str(path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:] == summary(load_kv(path))


@pytest.mark.parametrize("n_tokens", [1, 2, 4, 5, 33])
def test_summary_does_not_depend_on_the_block_size(
    n_tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = torch.from_numpy(synthetic_kv(n_layers=3, n_tokens=n_tokens, n_heads=2, head_dim=8))
    kv[1, 0, :, 1, 3] = 2.5  # a constant channel: variance 0, left out of the correlation
    cache = KVCache(kv, _meta("float32", n_tokens, real=False))
    whole = summary(cache)
    monkeypatch.setattr(KVStats, "BLOCK_ELEMENTS", 96)  # one token per block
    assert summary(cache) == whole


@pytest.fixture(scope="module")
def real_file(stories260k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = capture(f"stories260k:{stories260k_dir}", context="prose", tokens=200)
    return save_kv(cache, tmp_path_factory.mktemp("stream") / "real.safetensors")


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_streamed_synthetic_capture_equals_the_in_memory_one(
    real_file: Path, tmp_path: Path, dtype: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvcast.kv.sources import synthetic

    want = capture("synthetic:4x2x16", fit=real_file, tokens=300, seed=3, dtype=dtype)
    # small chunks: the file is written in many pieces, the values stay the same
    monkeypatch.setattr(synthetic.SyntheticGenerator, "stream_chunk_tokens", lambda self, n: 70)
    res = capture_to_file("synthetic:4x2x16", tmp_path / "s.safetensors", fit=real_file,
                          tokens=300, seed=3, dtype=dtype)  # fmt: skip
    assert res.streamed
    got = load_kv(res.path)
    assert torch.equal(got.kv, want.kv) and got.meta == want.meta
    assert res.summary == summary(want)


def test_streamed_slice_of_a_kv_file(real_file: Path, tmp_path: Path) -> None:
    want = capture(str(real_file), tokens=120, dtype="float16")
    res = capture_to_file(str(real_file), tmp_path / "p.safetensors", tokens=120, dtype="float16")
    got = load_kv(res.path)
    assert torch.equal(got.kv, want.kv) and got.meta == want.meta
    assert np.array_equal(got.key_gains, want.key_gains) and res.summary == summary(want)
    with pytest.raises(InputError, match="holds 200 tokens, 500 asked for"):
        capture_to_file(str(real_file), tmp_path / "q.safetensors", tokens=500)


def test_streamed_capture_is_refused_with_an_estimate(real_file: Path, tmp_path: Path) -> None:
    from kvcast.kv.sources import synthetic

    gen = synthetic.SyntheticGenerator(synthetic.fit(load_kv(real_file)), (80, 8, 128), name="big")
    step = gen.stream_chunk_tokens(100_000)
    assert step == 102  # 64 MiB of float32 per chunk in the Llama-3.1-70B shape
    # streaming peak: one chunk, not the cache (32.8 GB in float16)
    assert gen.stream_peak_bytes(step) < 2**30
    with pytest.raises(InputError, match=r"make a .* GB file; .* GB free"):
        gen.check_stream_fits(10**9, step, path=tmp_path / "huge.safetensors")


def test_streaming_commands_never_map_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """safe_open maps the whole file: a cache larger than memory fails there ("unable to mmap
    32768000640 bytes", seen on the Llama-3.1-70B-shaped 100K-token file), so the streaming
    paths parse the header themselves."""
    from kvcast.kv.sources import safetensors_io

    path = _kv_file(tmp_path, 50, gains=True)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("safe_open called")

    monkeypatch.setattr(safetensors_io, "safe_open", refuse)
    assert read_header(path)["model_id"] == "m"
    out = tmp_path / "chunks"
    assert main(["kv", "info", str(path)]) == 0
    assert main(["codec", "encode", str(path), "--chunk-tokens", "20", "-o", str(out)]) == 0
    files = sorted(str(p) for p in out.glob("chunk_*.kvc"))
    dec = tmp_path / "d.safetensors"
    assert main(["codec", "decode", *files, "--like", str(path), "-o", str(dec)]) == 0
    assert main(["kv", "capture", "--model", str(path), "--tokens", "30",
                 "-o", str(tmp_path / "p.safetensors")]) == 0  # fmt: skip
    with KVReader(dec) as r:
        assert r.n_tokens == 50 and r.meta.token_ids == list(range(100, 150))


def test_reader_refuses_a_damaged_header(tmp_path: Path) -> None:
    path = _kv_file(tmp_path, 20)
    data = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-3])
    with pytest.raises(InputError, match="not a safetensors file .*after the header"):
        KVReader(tmp_path / "short.safetensors")
    (tmp_path / "text.safetensors").write_text("nope")
    with pytest.raises(InputError, match="text.safetensors: not a safetensors file"):
        KVReader(tmp_path / "text.safetensors")
