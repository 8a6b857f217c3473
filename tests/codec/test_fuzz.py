"""Fuzz the decoder: mutated chunks raise CorruptChunk, never crash, hang or over-allocate."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
import torch
from codec_data import synthetic_kv

from kvcast.codec import container
from kvcast.codec.codec import decode_chunk, encode_chunk
from kvcast.codec.container import CorruptChunk
from kvcast.codec.ladder import load_ladder
from kvcast.codec.model_tables import (
    ModelTablesMismatch,
    fit_model_tables,
    levels_needing_tables,
)
from kvcast.codec.transforms import fit_klt

N_RAW = 10_000  # raw mutations: every one must raise CorruptChunk
N_STRUCT = 2_000  # mutations with checksums recomputed: CorruptChunk or a well-formed decode

LADDER = load_ladder()
KV = synthetic_kv(n_layers=2, n_tokens=23, n_heads=2, head_dim=4, seed=5)
_TRAIN = synthetic_kv(2, 40, 2, 4, seed=6)
PROFILE = fit_model_tables(
    [_TRAIN], levels_needing_tables(LADDER, with_transforms=True), model_id="fuzz",
    transforms=fit_klt([_TRAIN], [None]),
)  # fmt: skip
LEVELS = ["cachegen-q2", "delta-k-q2", "paper-q1", "klt-mid", "int8", "kivi2", "kivi4", "zstd",
          "fp16"]  # fmt: skip


@pytest.fixture(scope="module")
def chunks() -> list[bytes]:
    return [encode_chunk(KV, lv, model_tables=PROFILE) for lv in LEVELS]


def _mutate_raw(data: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(4)
    buf = bytearray(data)
    if kind == 0:  # flip 1-4 bits
        for _ in range(rng.integers(1, 5)):
            i = int(rng.integers(len(buf)))
            buf[i] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    if kind == 1:  # truncate
        return bytes(buf[: int(rng.integers(len(buf)))])
    if kind == 2:  # extend
        return (
            bytes(buf)
            + rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        )
    # overwrite a run with random bytes
    i = int(rng.integers(len(buf)))
    n = int(rng.integers(1, 16))
    junk = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    buf[i : i + n] = junk[: len(buf[i : i + n])]
    if bytes(buf) == data:
        buf[i] ^= 0xFF
    return bytes(buf)


def _fix_crcs(buf: bytearray) -> bytearray:
    """Recompute every section CRC and the header CRC, so only structural checks remain."""
    (hlen,) = struct.unpack_from("<H", buf, 6)
    pos = container._FIXED.size
    pos += 1 + buf[pos]
    n_sec = buf[pos]
    pos += 1
    for i in range(n_sec):
        at = pos + i * container._SECTION.size
        kind, off, length, _ = container._SECTION.unpack_from(buf, at)
        if off + length <= len(buf):
            struct.pack_into("<I", buf, at + 9, zlib.crc32(bytes(buf[off : off + length])))
    struct.pack_into("<I", buf, hlen - 4, zlib.crc32(bytes(buf[: hlen - 4])))
    return buf


def _mutate_struct(data: bytes, rng: np.random.Generator) -> bytes:
    head = container.parse(data)
    buf = bytearray(data)
    kind = rng.integers(5)
    if kind == 0:  # a section table field (offset or length)
        base = container._FIXED.size + 1 + len(head.level.encode()) + 1
        i = int(rng.integers(len(head.sections)))
        field = 1 + 4 * int(rng.integers(2))
        at = base + i * container._SECTION.size + field
        (v,) = struct.unpack_from("<I", buf, at)
        struct.pack_into("<I", buf, at, (v + int(rng.integers(-40, 40))) % (1 << 32))
    elif kind == 1:  # a shape field in the header
        at, fmt = [(12, "<H"), (14, "<I"), (18, "<H"), (20, "<H")][int(rng.integers(4))]
        (v,) = struct.unpack_from(fmt, buf, at)
        new = int(rng.choice([0, 1, v + 1, v - 1, v * 2, 65535]))
        struct.pack_into(fmt, buf, at, max(0, min(new, 65535)))
    else:  # bytes inside a section: params/index (structure) or anything
        secs = [s for s in head.sections if s.length]
        if kind == 2:
            secs = [
                s for s in secs if s.kind in (container.SEC_PARAMS, container.SEC_INDEX)
            ] or secs
        sec = secs[int(rng.integers(len(secs)))]
        i = sec.offset + int(rng.integers(sec.length))
        buf[i] = (buf[i] + int(rng.integers(1, 256))) % 256
    return bytes(_fix_crcs(buf))


def _decode(data: bytes) -> torch.Tensor:
    return decode_chunk(data, model_tables=PROFILE, dtype=torch.float32)


def test_raw_mutations_all_raise_corrupt_chunk(chunks):
    rng = np.random.default_rng(1234)
    t0 = time.perf_counter()
    slowest = 0.0
    for case in range(N_RAW):
        data = chunks[case % len(chunks)]
        bad = _mutate_raw(data, rng)
        t = time.perf_counter()
        with pytest.raises(CorruptChunk):
            _decode(bad)
        slowest = max(slowest, time.perf_counter() - t)
    assert slowest < 1.0, f"one case took {slowest:.2f} s"
    assert time.perf_counter() - t0 < 120


@pytest.mark.slow
def test_structural_mutations_raise_or_decode_cleanly(chunks):
    """With every CRC recomputed, a mutation either fails a check (CorruptChunk, or a profile
    mismatch) or decodes to a tensor of exactly the header's shape; nothing else escapes."""
    rng = np.random.default_rng(99)
    raised = 0
    for case in range(N_STRUCT):
        data = chunks[case % len(chunks)]
        bad = _mutate_struct(data, rng)
        try:
            out = _decode(bad)
        except (CorruptChunk, ModelTablesMismatch):
            raised += 1
            continue
        head = container.parse(bad)
        assert tuple(out.shape) == head.shape
    assert raised > N_STRUCT // 2  # most structural changes are caught by structure alone


def test_unmutated_chunks_decode(chunks):
    for data in chunks:
        assert _decode(data).shape == KV.shape
