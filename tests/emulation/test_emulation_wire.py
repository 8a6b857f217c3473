"""The sender's and receiver's frames: round trip, and bad frames raise (never crash or hang)."""

from __future__ import annotations

import struct

import pytest

from kvcast.emulation.wire import (
    ACK_MAGIC,
    KIND_KV,
    ChunkFrame,
    ChunkReader,
    WireError,
    chunk_frame,
    parse_reply,
    reply,
)


def _frame(**over) -> ChunkFrame:
    base = dict(request_id=5, chunk_index=1, n_chunks=3, kind=KIND_KV, level="cachegen-q1",
                gpu_s=0.25, step_s=0.01, payload=b"\x00\x01payload")  # fmt: skip
    return ChunkFrame(**(base | over))


def test_frames_round_trip_in_any_pieces() -> None:
    frames = [_frame(), _frame(chunk_index=2, payload=b"z" * 70_000)]
    data = b"".join(chunk_frame(f) for f in frames)
    reader, got = ChunkReader(), []
    for i in range(0, len(data), 997):
        reader.feed(data[i : i + 997])
        got += reader.frames()
    assert got == frames and not reader.pending()


def test_a_partial_frame_waits() -> None:
    reader = ChunkReader()
    reader.feed(chunk_frame(_frame())[:-1])
    assert reader.frames() == [] and reader.pending()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:12] + bytes([7]) + b[13:], "kind 7"),
        (lambda b: b[:8] + struct.pack("<H", 9) + b[10:], "chunk 9 of 3"),
    ],
)
def test_bad_frames_raise(mangle, message: str) -> None:
    reader = ChunkReader()
    reader.feed(mangle(chunk_frame(_frame())))
    with pytest.raises(WireError, match=message):
        reader.frames()


def test_replies() -> None:
    rep = parse_reply(reply(ACK_MAGIC, 4, 2, 123.5, 0.75))
    assert (rep.magic, rep.request_id, rep.chunk_index, rep.at, rep.gpu_queue_s) == (
        ACK_MAGIC, 4, 2, 123.5, 0.75)  # fmt: skip
    with pytest.raises(WireError, match="magic"):
        parse_reply(b"NOPE" + reply(ACK_MAGIC, 4, 2, 1.0, 0.0)[4:])
