"""What the sender and the receiver say to each other over TCP (through the emulated link).

Sender -> receiver, one frame per chunk::

    b"KVCH" | request u32 | chunk u16 | n_chunks u16 | kind u8 | level_len u8
            | gpu_s f64 | step_s f64 | payload_len u64 | level (utf-8) | payload

`kind` 0: a KV chunk in kvcast's container (the receiver decodes it with the codec); 1: TEXT
(token ids; the receiver charges `gpu_s`, the modelled prefill). `gpu_s` is the sender's
expected receiver work for the chunk (for the queue the receiver reports back); `step_s` the
modelled first-token decode step, run after the request's last chunk.

Receiver -> sender, fixed size: an acknowledgement when a chunk's last byte has arrived, and the
first token::

    b"KVAK" | request u32 | chunk u16 | at f64 | gpu_queue_s f64
    b"KVTK" | request u32 | 0 u16     | at f64 | 0.0

`at` is the receiver's clock (`time.monotonic`, one clock for every process on the machine);
`gpu_queue_s` the receiver's work queued or running, in seconds of its own estimate.

Frames are checked as they are parsed: a wrong magic, a level name that is not text, a payload
over `MAX_PAYLOAD` or a truncated frame raise `WireError`, never a crash or a hang.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvcast.errors import KvcastError

CHUNK_MAGIC = b"KVCH"
ACK_MAGIC = b"KVAK"
TOKEN_MAGIC = b"KVTK"
_CHUNK_HEAD = struct.Struct("<4sIHHBBddQ")
_REPLY = struct.Struct("<4sIHdd")
REPLY_BYTES = _REPLY.size
MAX_PAYLOAD = 1 << 32
KIND_KV, KIND_TEXT = 0, 1


class WireError(KvcastError):
    """A frame that is not what the protocol says."""


@dataclass(frozen=True)
class ChunkFrame:
    request_id: int
    chunk_index: int
    n_chunks: int
    kind: int
    level: str
    gpu_s: float
    step_s: float
    payload: bytes


@dataclass(frozen=True)
class Reply:
    magic: bytes  # ACK_MAGIC | TOKEN_MAGIC
    request_id: int
    chunk_index: int
    at: float
    gpu_queue_s: float


def chunk_frame(f: ChunkFrame) -> bytes:
    level = f.level.encode()
    head = _CHUNK_HEAD.pack(
        CHUNK_MAGIC,
        f.request_id,
        f.chunk_index,
        f.n_chunks,
        f.kind,
        len(level),
        f.gpu_s,
        f.step_s,
        len(f.payload),
    )
    return head + level + f.payload


def reply(magic: bytes, request_id: int, chunk_index: int, at: float, queue_s: float) -> bytes:
    return _REPLY.pack(magic, request_id, chunk_index, at, queue_s)


def parse_reply(data: bytes) -> Reply:
    magic, rid, idx, at, q = _REPLY.unpack(data)
    if magic not in (ACK_MAGIC, TOKEN_MAGIC):
        raise WireError(f"reply: magic {magic!r}, expected {ACK_MAGIC!r} or {TOKEN_MAGIC!r}")
    return Reply(magic, rid, idx, at, q)


class ChunkReader:
    """Incremental parser of the sender's frames: `feed` bytes as they come, `frames()` yields
    each complete frame once; `pending()` says whether a frame is partly received."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> bool:
        return bool(self._buf)

    def frames(self) -> list[ChunkFrame]:
        out = []
        while len(self._buf) >= _CHUNK_HEAD.size:
            magic, rid, idx, n, kind, llen, gpu_s, step_s, plen = _CHUNK_HEAD.unpack_from(self._buf)
            if magic != CHUNK_MAGIC:
                raise WireError(f"chunk frame: magic {bytes(magic)!r}, expected {CHUNK_MAGIC!r}")
            if kind not in (KIND_KV, KIND_TEXT):
                raise WireError(
                    f"chunk frame (request {rid}, chunk {idx}): kind {kind}, expected 0 or 1"
                )
            if plen > MAX_PAYLOAD:
                raise WireError(
                    f"chunk frame (request {rid}, chunk {idx}): payload of {plen} bytes"
                )
            if idx >= n:
                raise WireError(f"chunk frame (request {rid}): chunk {idx} of {n}")
            total = _CHUNK_HEAD.size + llen + plen
            if len(self._buf) < total:
                break
            raw_level = bytes(self._buf[_CHUNK_HEAD.size : _CHUNK_HEAD.size + llen])
            try:
                level = raw_level.decode()
            except UnicodeDecodeError:
                raise WireError(
                    f"chunk frame (request {rid}, chunk {idx}): level is not text"
                ) from None
            payload = bytes(self._buf[_CHUNK_HEAD.size + llen : total])
            del self._buf[:total]
            out.append(ChunkFrame(rid, idx, n, kind, level, gpu_s, step_s, payload))
        return out
