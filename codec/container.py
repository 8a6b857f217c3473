"""The chunk container: a versioned, checksummed byte layout (docs/format.md, "Container").

One encoded chunk = a fixed header + a section table + sections laid back to back. Nothing is
pickled; every length and offset is checked against the buffer and against the shapes before
it is used, and the header's shapes are bounded so a corrupt header cannot make the decoder
allocate without limit. Any failed check raises `CorruptChunk` saying what is wrong.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from kvcast.errors import KvcastError

MAGIC = b"KVCC"
VERSION = 1

# codec ids (what the sections mean)
CODEC_CACHEGEN = 1
CODEC_FP16 = 2
CODEC_INT8 = 3
CODEC_KIVI = 4
CODEC_ZSTD = 5
CODEC_NAMES = {
    CODEC_CACHEGEN: "cachegen",
    CODEC_FP16: "fp16",
    CODEC_INT8: "int8",
    CODEC_KIVI: "kivi",
    CODEC_ZSTD: "zstd",
}

# source dtype ids (the dtype of the tensor that was encoded)
DTYPES = {1: "float32", 2: "float16", 3: "bfloat16"}
DTYPE_IDS = {v: k for k, v in DTYPES.items()}

# section kinds
SEC_PARAMS = 1
SEC_SCALES = 2
SEC_TABLES = 3
SEC_INDEX = 4
SEC_PAYLOAD = 5
SEC_GAINS = 6
SEC_EXACT = 7
SEC_POSITION = 8  # optional, any codec: where the chunk sits in its cache (`Position`)
SEC_NAMES = {
    SEC_PARAMS: "params",
    SEC_SCALES: "scales",
    SEC_TABLES: "tables",
    SEC_INDEX: "stream index",
    SEC_PAYLOAD: "payload",
    SEC_GAINS: "key gains",
    SEC_EXACT: "exact tokens",
    SEC_POSITION: "position",
}

# sane maxima: a header beyond these is rejected before anything is allocated
MAX_LAYERS = 1024
MAX_TOKENS = 1 << 20
MAX_HEADS = 1024
MAX_HEAD_DIM = 1024
MAX_ELEMENTS = 1 << 31  # L * 2 * T * H * D
MAX_SECTIONS = 8
MAX_LEVEL_NAME = 64
PROFILE_ID_BYTES = 16

# magic, version, header_len, codec, dtype, flags, L, T, H, D, profile id
_FIXED = struct.Struct("<4sHHBBHHIHH16s")
_SECTION = struct.Struct("<BIII")  # kind, offset, length, crc32


class CorruptChunk(KvcastError, ValueError):
    """A bitstream that fails a check; the message says which check."""


@dataclass(frozen=True)
class Section:
    kind: int
    offset: int
    length: int
    crc32: int

    @property
    def name(self) -> str:
        return SEC_NAMES.get(self.kind, f"section {self.kind}")


@dataclass(frozen=True)
class ChunkHeader:
    """Everything the container header says about a chunk (checked by `parse`)."""

    version: int
    codec: int
    dtype: str
    flags: int
    n_layers: int
    n_tokens: int
    n_kv_heads: int
    head_dim: int
    profile_id: bytes  # 16 bytes; all zero when the chunk needs no model tables
    level: str
    header_bytes: int
    total_bytes: int
    sections: tuple[Section, ...] = field(default_factory=tuple)

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES[self.codec]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.n_layers, 2, self.n_tokens, self.n_kv_heads, self.head_dim)

    @property
    def n_elements(self) -> int:
        return self.n_layers * 2 * self.n_tokens * self.n_kv_heads * self.head_dim

    @property
    def profile_hex(self) -> str | None:
        return None if not any(self.profile_id) else self.profile_id.hex()

    def section_sizes(self) -> dict[str, int]:
        sizes = {"header": self.header_bytes}
        for sec in self.sections:
            sizes[sec.name] = sec.length
        return sizes

    def section(self, kind: int, required: bool = True) -> Section | None:
        for sec in self.sections:
            if sec.kind == kind:
                return sec
        if required:
            raise CorruptChunk(f"chunk has no {SEC_NAMES.get(kind, kind)} section")
        return None


def check_shape(n_layers: int, n_tokens: int, n_kv_heads: int, head_dim: int) -> None:
    """Raise CorruptChunk when shapes are outside the sane maxima."""
    for name, value, hi in (
        ("layers", n_layers, MAX_LAYERS),
        ("tokens", n_tokens, MAX_TOKENS),
        ("kv_heads", n_kv_heads, MAX_HEADS),
        ("head_dim", head_dim, MAX_HEAD_DIM),
    ):
        if not 1 <= value <= hi:
            raise CorruptChunk(f"header: {name}={value} outside 1..{hi}")
    n = n_layers * 2 * n_tokens * n_kv_heads * head_dim
    if n > MAX_ELEMENTS:
        raise CorruptChunk(f"header: {n} KV elements exceed the limit {MAX_ELEMENTS}")


def pack(
    *,
    codec: int,
    dtype: str,
    flags: int,
    shape: tuple[int, int, int, int, int],
    profile_id: bytes | None,
    level: str,
    sections: list[tuple[int, bytes]],
) -> bytes:
    """Assemble a chunk: header, section table, header CRC, then the sections."""
    n_layers, two, n_tokens, n_heads, head_dim = shape
    if two != 2:
        raise ValueError("shape must be [L, 2, T, H, D]")
    check_shape(n_layers, n_tokens, n_heads, head_dim)
    name = level.encode("utf-8")
    if not 1 <= len(name) <= MAX_LEVEL_NAME:
        raise ValueError(f"level name must be 1..{MAX_LEVEL_NAME} bytes of UTF-8")
    if len(sections) > MAX_SECTIONS:
        raise ValueError("too many sections")
    pid = profile_id or bytes(PROFILE_ID_BYTES)
    if len(pid) != PROFILE_ID_BYTES:
        raise ValueError("profile id must be 16 bytes")
    header_len = _FIXED.size + 1 + len(name) + 1 + _SECTION.size * len(sections) + 4
    offset = header_len
    table = bytearray()
    for kind, payload in sections:
        table += _SECTION.pack(kind, offset, len(payload), zlib.crc32(payload))
        offset += len(payload)
    if offset >= 1 << 32:
        raise ValueError("chunk larger than 4 GiB")
    head = bytearray(
        _FIXED.pack(
            MAGIC,
            VERSION,
            header_len,
            codec,
            DTYPE_IDS[dtype],
            flags,
            n_layers,
            n_tokens,
            n_heads,
            head_dim,
            pid,
        )
    )
    head += bytes([len(name)]) + name + bytes([len(sections)]) + table
    head += struct.pack("<I", zlib.crc32(head))
    assert len(head) == header_len
    return bytes(head) + b"".join(payload for _, payload in sections)


def parse(data: bytes | bytearray | memoryview, verify_crc: bool = True) -> ChunkHeader:
    """Parse and check the header and section table of a chunk (and, by default, all CRCs)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptChunk(f"expected bytes, got {type(data).__name__}")
    buf = memoryview(data)
    n = len(buf)
    if n < _FIXED.size + 3 + 4:
        raise CorruptChunk(f"chunk of {n} bytes is shorter than the smallest header")
    (
        magic,
        version,
        header_len,
        codec,
        dtype_id,
        flags,
        n_layers,
        n_tokens,
        n_heads,
        head_dim,
        pid,
    ) = _FIXED.unpack_from(buf, 0)
    if magic != MAGIC:
        raise CorruptChunk(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: not a kvcast chunk")
    if version != VERSION:
        raise CorruptChunk(
            f"container version {version} is not supported (this kvcast reads {VERSION})"
        )
    if not _FIXED.size + 3 + 4 <= header_len <= n:
        raise CorruptChunk(f"header length {header_len} outside {_FIXED.size + 7}..{n}")
    (stored_crc,) = struct.unpack_from("<I", buf, header_len - 4)
    if verify_crc and zlib.crc32(buf[: header_len - 4]) != stored_crc:
        raise CorruptChunk("header CRC32 mismatch")
    if codec not in CODEC_NAMES:
        raise CorruptChunk(f"unknown codec id {codec}")
    if dtype_id not in DTYPES:
        raise CorruptChunk(f"unknown dtype id {dtype_id}")
    check_shape(n_layers, n_tokens, n_heads, head_dim)
    pos = _FIXED.size
    name_len = buf[pos]
    pos += 1
    if not 1 <= name_len <= MAX_LEVEL_NAME or pos + name_len + 1 > header_len - 4:
        raise CorruptChunk(f"level name length {name_len} does not fit the header")
    try:
        level = bytes(buf[pos : pos + name_len]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptChunk("level name is not UTF-8") from exc
    pos += name_len
    n_sections = buf[pos]
    pos += 1
    if n_sections > MAX_SECTIONS:
        raise CorruptChunk(f"{n_sections} sections, at most {MAX_SECTIONS} allowed")
    if pos + n_sections * _SECTION.size + 4 != header_len:
        raise CorruptChunk("section table does not match the header length")
    sections = []
    expect = header_len
    seen = set()
    for i in range(n_sections):
        kind, offset, length, crc = _SECTION.unpack_from(buf, pos + i * _SECTION.size)
        sec = Section(kind, offset, length, crc)
        if kind not in SEC_NAMES or kind in seen:
            raise CorruptChunk(f"section {i}: unknown or repeated kind {kind}")
        seen.add(kind)
        if offset != expect:
            raise CorruptChunk(f"{sec.name} section: offset {offset}, expected {expect}")
        if length > n - offset:
            raise CorruptChunk(
                f"{sec.name} section: length {length} runs past the chunk end ({n} bytes)"
            )
        if verify_crc and zlib.crc32(buf[offset : offset + length]) != crc:
            raise CorruptChunk(f"{sec.name} section: CRC32 mismatch")
        sections.append(sec)
        expect = offset + length
    if expect != n:
        raise CorruptChunk(f"chunk has {n - expect} bytes after its last section")
    return ChunkHeader(
        version=version,
        codec=codec,
        dtype=DTYPES[dtype_id],
        flags=flags,
        n_layers=n_layers,
        n_tokens=n_tokens,
        n_kv_heads=n_heads,
        head_dim=head_dim,
        profile_id=bytes(pid),
        level=level,
        header_bytes=header_len,
        total_bytes=n,
        sections=tuple(sections),
    )


def section_bytes(data: bytes | memoryview, sec: Section) -> memoryview:
    """The bytes of one section (bounds were checked by `parse`)."""
    return memoryview(data)[sec.offset : sec.offset + sec.length]


_POSITION = struct.Struct("<16sIIQQ")  # cache id, chunk index, chunk count, first token, tokens
MAX_CONTEXT_TOKENS = 1 << 40


@dataclass(frozen=True)
class Position:
    """Where a chunk sits in the cache it was cut from, so a decoder that joins chunks can check
    that they come from one cache, each once, and put them in order (the levels may differ: an
    adaptive sender picks one per chunk)."""

    cache_id: bytes  # 16 bytes, the same for every chunk of one encoded cache
    index: int
    count: int
    first_token: int
    context_tokens: int

    def pack(self) -> bytes:
        return _POSITION.pack(
            self.cache_id, self.index, self.count, self.first_token, self.context_tokens
        )


def with_position(data: bytes, position: Position) -> bytes:
    """The chunk `data` with a position section added (the other sections unchanged)."""
    head = parse(data)
    if head.section(SEC_POSITION, required=False) is not None:
        raise ValueError("the chunk already has a position")
    check_position(position, head)
    sections = [(sec.kind, bytes(section_bytes(data, sec))) for sec in head.sections]
    return pack(
        codec=head.codec,
        dtype=head.dtype,
        flags=head.flags,
        shape=head.shape,
        profile_id=head.profile_id,
        level=head.level,
        sections=[*sections, (SEC_POSITION, position.pack())],
    )


def read_position(data: bytes | memoryview, head: ChunkHeader) -> Position | None:
    """The chunk's position, checked against its header; None when it carries none."""
    sec = head.section(SEC_POSITION, required=False)
    if sec is None:
        return None
    raw = section_bytes(data, sec)
    if len(raw) != _POSITION.size:
        raise CorruptChunk(f"position section: {len(raw)} bytes, expected {_POSITION.size}")
    position = Position(*_POSITION.unpack(raw))
    check_position(position, head)
    return position


def check_position(p: Position, head: ChunkHeader) -> None:
    if len(p.cache_id) != PROFILE_ID_BYTES:
        raise CorruptChunk("position section: the cache id must be 16 bytes")
    if not 0 <= p.index < p.count:
        raise CorruptChunk(f"position section: chunk {p.index} of {p.count}")
    if not p.first_token + head.n_tokens <= p.context_tokens <= MAX_CONTEXT_TOKENS:
        raise CorruptChunk(
            f"position section: tokens {p.first_token}..{p.first_token + head.n_tokens} do not "
            f"fit a context of {p.context_tokens}"
        )
