"""The position section: a chunk says which cache it is from, its index and its tokens, so a
decoder that joins chunks checks order, duplicates and mixes (docs/format.md, "Position")."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from codec_data import synthetic_kv

from kvcast.cli import main
from kvcast.codec import container
from kvcast.codec.codec import chunk_info, decode_chunk, encode_chunk
from kvcast.codec.container import CorruptChunk, Position
from kvcast.kv.cache import KVCache, KVMeta
from kvcast.kv.sources.safetensors_io import load_kv, save_kv

KV = synthetic_kv(n_layers=2, n_tokens=30, n_heads=2, head_dim=8, seed=3)
CACHE_ID = bytes(range(16))


@pytest.mark.parametrize("level", ["cachegen-q1", "int8", "zstd"])
def test_a_position_round_trips_and_leaves_the_decode_unchanged(level: str) -> None:
    plain = encode_chunk(KV, level)
    placed = container.with_position(plain, Position(CACHE_ID, 1, 3, 30, 90))
    head = chunk_info(placed)
    assert container.read_position(placed, head) == Position(CACHE_ID, 1, 3, 30, 90)
    assert container.read_position(plain, chunk_info(plain)) is None
    assert torch.equal(decode_chunk(placed), decode_chunk(plain))
    assert len(placed) == len(plain) + 40 + 13  # the section and its table entry


def _repack(data: bytes, raw: bytes) -> bytes:
    """`data` with the position section's bytes replaced by `raw` (CRCs recomputed)."""
    head = container.parse(data)
    sections = [
        (
            s.kind,
            raw if s.kind == container.SEC_POSITION else bytes(container.section_bytes(data, s)),
        )
        for s in head.sections
    ]
    return container.pack(codec=head.codec, dtype=head.dtype, flags=head.flags, shape=head.shape,
                          profile_id=head.profile_id, level=head.level, sections=sections)  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (struct.pack("<16sIIQQ", CACHE_ID, 3, 3, 0, 90), "chunk 3 of 3"),
        (struct.pack("<16sIIQQ", CACHE_ID, 0, 3, 80, 90), "do not fit a context of 90"),
        (struct.pack("<16sIIQ", CACHE_ID, 0, 3, 0), "32 bytes, expected 40"),
    ],
)
def test_a_bad_position_is_a_corrupt_chunk(raw: bytes, message: str) -> None:
    placed = container.with_position(
        encode_chunk(KV, "cachegen-q1"), Position(CACHE_ID, 0, 3, 0, 90)
    )
    bad = _repack(placed, raw)
    for read in (chunk_info, decode_chunk):
        with pytest.raises(CorruptChunk, match=message):
            read(bad)


def test_mutated_positions_with_valid_crcs_raise_or_decode_the_same() -> None:
    placed = container.with_position(
        encode_chunk(KV, "cachegen-q1"), Position(CACHE_ID, 0, 3, 0, 90)
    )
    want = decode_chunk(placed)
    rng = np.random.default_rng(0)
    raw = bytearray(Position(CACHE_ID, 0, 3, 0, 90).pack())
    for _ in range(500):
        mutant = bytearray(raw)
        mutant[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
        try:
            out = decode_chunk(_repack(placed, bytes(mutant)))
        except CorruptChunk:
            continue
        assert torch.equal(out, want)  # a position the checks cannot tell from a valid one
    assert zlib.crc32(raw)  # the raw position itself is untouched


def _kv_file(tmp_path: Path, seed: int) -> Path:
    kv = torch.from_numpy(synthetic_kv(n_layers=2, n_tokens=50, n_heads=2, head_dim=8, seed=seed))
    meta = KVMeta(model_id="synthetic:test", source="synthetic", dtype="float32", n_layers=2,
                  n_kv_heads=2, head_dim=8, token_ids=[], synthetic=True,
                  extra={"seed": str(seed)})  # fmt: skip
    return save_kv(KVCache(kv, meta), tmp_path / f"kv{seed}.safetensors")


def _encode(tmp_path: Path, kv: Path, level: str, name: str) -> list[str]:
    out = tmp_path / name
    assert main(["codec", "encode", str(kv), "--level", level, "--chunk-tokens", "20",
                 "-o", str(out)]) == 0  # fmt: skip
    return [str(p) for p in sorted(out.glob("*.kvc"))]


def test_decode_puts_chunks_in_order_and_refuses_duplicates_gaps_and_mixes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kv = _kv_file(tmp_path, 1)
    a = _encode(tmp_path, kv, "cachegen-q1", "a")
    b = _encode(tmp_path, kv, "int8", "b")  # the same cache at another level
    other = _encode(tmp_path, _kv_file(tmp_path, 2), "cachegen-q1", "other")
    out = tmp_path / "d.safetensors"

    def decode(chunks: list[str], name: str = "d") -> int:
        return main(["codec", "decode", *chunks, "-o", str(tmp_path / f"{name}.safetensors"),
                     "--dtype", "float32"])  # fmt: skip

    assert decode(a, "ordered") == 0
    assert decode([a[2], a[0], a[1]]) == 0  # any order: each chunk goes to its tokens
    assert torch.equal(load_kv(out).kv, load_kv(tmp_path / "ordered.safetensors").kv)
    assert decode([a[0], b[1], a[2]], "mixed") == 0  # levels may differ (adaptive streaming)
    capsys.readouterr()
    assert decode([a[0], a[0], a[1]]) == 2
    assert "chunk 0 again" in capsys.readouterr().err
    assert decode([a[0], a[2]]) == 2
    assert "chunk(s) 1 of 3 missing" in capsys.readouterr().err
    assert decode([a[0], other[1], a[2]]) == 2
    assert "a chunk of another cache" in capsys.readouterr().err
    plain = tmp_path / "plain.kvc"
    plain.write_bytes(encode_chunk(load_kv(kv).kv[:, :, 20:40], "cachegen-q1"))
    assert decode([a[0], str(plain), a[2]]) == 2
    assert "carries no position, while the other chunks do" in capsys.readouterr().err
