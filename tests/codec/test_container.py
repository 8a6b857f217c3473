"""The chunk container: header fields, section checks, clear errors."""

from __future__ import annotations

import struct
import zlib

import pytest
from codec_data import synthetic_kv

from kvcast.codec import container
from kvcast.codec.codec import chunk_info, decode_chunk, encode_chunk
from kvcast.codec.container import CorruptChunk

KV = synthetic_kv()


def _chunk() -> bytes:
    return encode_chunk(KV, "cachegen-q2")


def test_header_fields():
    head = chunk_info(_chunk())
    assert head.version == container.VERSION
    assert head.codec_name == "cachegen"
    assert head.dtype == "float32"
    assert head.shape == KV.shape
    assert head.profile_hex is None
    names = [s.name for s in head.sections]
    assert names == ["params", "scales", "tables", "stream index", "payload"]


def test_pack_parse_round_trip():
    data = container.pack(codec=container.CODEC_FP16, dtype="float16", flags=0, shape=(1, 2, 3, 1, 2),
                          profile_id=b"\x01" * 16, level="x", sections=[(container.SEC_PAYLOAD, b"a" * 24)])  # fmt: skip
    head = container.parse(data)
    assert head.profile_id == b"\x01" * 16 and head.level == "x" and head.sections[0].length == 24


def _refresh_header_crc(data: bytearray) -> bytearray:
    (hlen,) = struct.unpack_from("<H", data, 6)
    struct.pack_into("<I", data, hlen - 4, zlib.crc32(bytes(data[: hlen - 4])))
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"XXXX" + d[4:], "bad magic"),
        (lambda d: d[:-1], "runs past the chunk end|CRC32"),
        (lambda d: d + b"\0", "after its last section"),
        (lambda d: d[:10], "shorter than the smallest header"),
        (lambda d: _refresh_header_crc(bytearray(d[:4] + b"\x09\x00" + d[6:])), "version 9"),
        (lambda d: bytes([*d[:30], d[30] ^ 1, *d[31:]]), "header CRC32"),
    ],
)
def test_corruptions_raise_clear_errors(mutate, message):
    with pytest.raises(CorruptChunk, match=message):
        decode_chunk(bytes(mutate(_chunk())))


def test_header_shape_limits():
    data = bytearray(_chunk())
    struct.pack_into("<I", data, 14, container.MAX_TOKENS + 1)  # T
    with pytest.raises(CorruptChunk, match="tokens"):
        container.parse(bytes(_refresh_header_crc(data)))


def test_not_bytes():
    with pytest.raises(CorruptChunk, match="expected bytes"):
        chunk_info("hello")  # type: ignore[arg-type]
