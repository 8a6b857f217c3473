"""Exact sink tokens (`sink_tokens: N`): the chunk that starts a context keeps its first N tokens
in float16 (FLAG_EXACT, section "exact tokens"); checks of that section; the ladder field."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from codec_data import synthetic_kv
from test_query_gains import _pack, _sections, _with_flags

from kvcast.codec import container
from kvcast.codec.codec import (
    FLAG_DELTA_V,
    FLAG_EXACT,
    chunk_info,
    decode_chunk,
    encode_chunk,
)
from kvcast.codec.container import CorruptChunk
from kvcast.codec.ladder import DEFAULT_LADDER, load_ladder
from kvcast.errors import InputError

KV = synthetic_kv(n_layers=3, n_tokens=40, n_heads=2, head_dim=8)
L, C = KV.shape[0], KV.shape[3] * KV.shape[4]
GAINS = np.linspace(0.5, 2.0, L * C, dtype=np.float32).reshape(L, C)


def _encode(start: bool, level: str = "qw-mid") -> bytes:
    return encode_chunk(KV, level, key_gains=GAINS, context_start=start)


def test_the_context_start_keeps_its_first_token_exact() -> None:
    kv = KV.copy()
    kv[:, :, 0] *= 50.0  # a sink-like outlier token: quantized, it would dominate nothing else
    with_sink = encode_chunk(kv, "qw-mid", key_gains=GAINS, context_start=True)
    without = encode_chunk(kv, "qw-mid", key_gains=GAINS)
    assert chunk_info(with_sink).flags & FLAG_EXACT and not chunk_info(without).flags & FLAG_EXACT
    a = decode_chunk(with_sink, dtype=torch.float32)
    b = decode_chunk(without, dtype=torch.float32)
    expect = torch.from_numpy(kv[:, :, 0].astype(np.float16).astype(np.float32))
    assert torch.equal(a[:, :, 0], expect)  # exactly the float16 of the input
    assert not torch.equal(b[:, :, 0], expect)  # quantized otherwise
    assert torch.equal(a[:, :, 1:], b[:, :, 1:])  # every other token decodes as before
    size = len(with_sink) - len(without)
    assert size > 2 * L * 2 * C  # the float16 token travels (tables shrink a little)
    assert _encode(True) == _encode(True)  # deterministic


def test_levels_without_sink_tokens_ignore_context_start() -> None:
    for level in ("cachegen-q1", "int8"):
        assert encode_chunk(KV, level, context_start=True) == encode_chunk(KV, level)


def test_shipped_qw_levels_keep_one_sink_token() -> None:
    ladder = load_ladder()
    assert {v.name: v.sink_tokens for v in ladder.variants if v.key_gains} == {
        "qw-fine": 1, "qw-mid": 1, "qw-coarse": 1,
    }  # fmt: skip
    assert all(lv.sink_tokens == 0 for lv in ladder.levels)  # CacheGen's presets stay faithful


def _ladder_with(tmp_path: Path, extra: str) -> Path:
    text = DEFAULT_LADDER.read_text()
    old = "    sink_tokens: 1\n"
    assert old in text
    path = tmp_path / "ladder.yaml"
    path.write_text(text.replace(old, extra, 1))
    return path


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("    sink_tokens: 65\n", r"\(qw-fine\)\.sink_tokens': expected an integer in 0\.\.64"),
        ("    sink_tokens: -1\n", r"sink_tokens': expected an integer"),
        ("    sink_tokens: 1\n    delta: {k: false, v: true}\n", "cannot be combined with anchor"),
    ],
)
def test_ladder_checks_sink_tokens(tmp_path: Path, extra: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_ladder(_ladder_with(tmp_path, extra))


def _corrupt_cases() -> dict[str, tuple[bytes, str]]:
    data = _encode(True)
    s = _sections(data)
    p, e = container.SEC_PARAMS, container.SEC_EXACT
    body = s[e][2:]
    cases = {
        "flag without section": (
            _pack(data, {k: v for k, v in s.items() if k != e}),
            "no exact tokens section",
        ),
        "section without flag": (
            _pack(data, {**s, p: _with_flags(s[p], clear=FLAG_EXACT)}),
            "flags do not say so",
        ),
        "zero tokens": (_pack(data, {**s, e: struct.pack("<H", 0) + body}), "0 tokens"),
        "more tokens than the chunk": (
            _pack(data, {**s, e: struct.pack("<H", 41) + body}),
            "41 tokens, expected 1..40",
        ),
        "short section": (_pack(data, {**s, e: s[e][:-2]}), "expected"),
        "empty section": (_pack(data, {**s, e: b"\x01"}), "too short"),
        "with deltas": (
            _pack(
                data, {**s, p: _with_flags(s[p], set_=FLAG_DELTA_V, group_v=10, anchor_bins=256)}
            ),
            "exact tokens cannot be combined with deltas",
        ),
    }
    raw = bytearray(s[e])
    raw[2:4] = np.float16(np.nan).tobytes()
    cases["NaN value"] = (_pack(data, {**s, e: bytes(raw)}), "NaN or infinite")
    return cases


CASES = _corrupt_cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_exact_tokens_raise_corrupt_chunk(case: str) -> None:
    data, match = CASES[case]
    with pytest.raises(CorruptChunk, match=match):
        chunk_info(data)
    with pytest.raises(CorruptChunk, match=match):
        decode_chunk(data)
