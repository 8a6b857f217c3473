"""Baselines behind the codec interface: fp16, CacheGen's 8-bit, KIVI 4/2-bit, zstd over fp16.

Each returns the container sections it needs and decodes from a parsed header; sizes include
every byte (scales, mins, container). Layouts are in docs/format.md ("Baselines").

- fp16: the float16 bytes of [L, 2, T, H, D].
- int8 (CacheGen's quantization baseline): per (layer, K/V, token) absmax s over the C = H * D
  channels, q = round(x * 127 / s) as int8, plus s as float16 (rounded up).
- kivi (KIVI-style, asymmetric min/max): keys per channel over groups of `group` tokens,
  values per token over groups of `group` channels; q = round((x - min) / scale) in
  0 .. 2**bits - 1, packed little-endian; min and scale as float16. KIVI's full-precision
  window of recent tokens is left out: every token is quantized.
- zstd: zstd over the float16 bytes (lossless with respect to fp16).
"""

from __future__ import annotations

import struct

import numpy as np
import torch
import zstandard

from kvcast.codec import container
from kvcast.codec.container import CorruptChunk
from kvcast.codec.ladder import BaselineSpec
from kvcast.codec.quantize import fp16_scale_up
from kvcast.errors import InputError

_KIVI = struct.Struct("<BH")  # bits, group

CODEC_OF_KIND = {
    "fp16": container.CODEC_FP16,
    "int8": container.CODEC_INT8,
    "kivi": container.CODEC_KIVI,
    "zstd": container.CODEC_ZSTD,
}


def _fp16(x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float16)
    if not np.isfinite(h).all():
        raise InputError("KV values exceed the float16 range (|x| > 65504)")
    return h


def encode(x: np.ndarray, spec: BaselineSpec) -> tuple[int, list[tuple[int, bytes]]]:
    """x float32 [L, 2, T, H, D] -> (codec id, sections)."""
    n_layers, _, n_tokens = x.shape[:3]
    flat = x.reshape(n_layers, 2, n_tokens, -1)
    if spec.kind == "fp16":
        return container.CODEC_FP16, [(container.SEC_PAYLOAD, _fp16(x).astype("<f2").tobytes())]
    if spec.kind == "zstd":
        raw = _fp16(x).astype("<f2").tobytes()
        comp = zstandard.ZstdCompressor(level=spec.zstd_level, write_content_size=True).compress(
            raw
        )
        return container.CODEC_ZSTD, [(container.SEC_PAYLOAD, comp)]
    if spec.kind == "int8":
        s16 = fp16_scale_up(np.abs(flat).max(axis=-1))
        s = s16.astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1))
        q = np.clip(np.rint(flat * np.float32(127) / safe[..., None]), -127, 127).astype(np.int8)
        return container.CODEC_INT8, [
            (container.SEC_SCALES, s16.astype("<f2").tobytes()),
            (container.SEC_PAYLOAD, q.tobytes()),
        ]
    if spec.kind == "kivi":
        return container.CODEC_KIVI, _kivi_encode(flat, spec.bits, spec.group)
    raise InputError(f"unknown baseline kind {spec.kind!r}")


def _group_minmax(x: np.ndarray, axis: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max over groups of `group` along `axis` (last group may be shorter)."""
    n = x.shape[axis]
    starts = np.arange(0, n, group)
    return np.minimum.reduceat(x, starts, axis=axis), np.maximum.reduceat(x, starts, axis=axis)


def _kivi_params(lo: np.ndarray, hi: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 (min, scale): min rounded down, scale rounded up so every x maps into range."""
    lo16 = lo.astype(np.float16)
    down = lo16.astype(np.float32) > lo
    if down.any():
        lo16[down] = np.nextafter(lo16[down], np.float16(-np.inf))
    scale = (hi - lo16.astype(np.float32)) / np.float32(levels)
    sc16 = fp16_scale_up(scale)
    if not np.isfinite(lo16).all():
        raise InputError("KV values exceed the float16 range (|x| > 65504)")
    return lo16, sc16


def _kivi_q(x: np.ndarray, lo16: np.ndarray, sc16: np.ndarray, levels: int) -> np.ndarray:
    sc = sc16.astype(np.float32)
    safe = np.where(sc > 0, sc, np.float32(1))
    q = np.rint((x - lo16.astype(np.float32)) / safe)
    return np.clip(q, 0, levels).astype(np.uint8)


def _pack_bits(q: np.ndarray, bits: int) -> bytes:
    per = 8 // bits
    flat = q.reshape(-1)
    pad = (-len(flat)) % per
    if pad:
        flat = np.concatenate([flat, np.zeros(pad, dtype=np.uint8)])
    lanes = flat.reshape(-1, per).astype(np.uint16)
    out = np.zeros(len(lanes), dtype=np.uint16)
    for i in range(per):
        out |= lanes[:, i] << (bits * i)
    return out.astype(np.uint8).tobytes()


def _unpack_bits(raw: memoryview, bits: int, n: int) -> np.ndarray:
    per = 8 // bits
    b = np.frombuffer(raw, dtype=np.uint8)
    mask = (1 << bits) - 1
    out = np.stack([(b >> (bits * i)) & mask for i in range(per)], axis=1).reshape(-1)
    return out[:n]


def _kivi_encode(flat: np.ndarray, bits: int, group: int) -> list[tuple[int, bytes]]:
    levels = (1 << bits) - 1
    k, v = flat[:, 0], flat[:, 1]  # [L, T, C]
    k_lo, k_hi = _group_minmax(k, 1, group)  # [L, Tg, C]
    v_lo, v_hi = _group_minmax(v, 2, group)  # [L, T, Cg]
    k_lo16, k_sc16 = _kivi_params(k_lo, k_hi, levels)
    v_lo16, v_sc16 = _kivi_params(v_lo, v_hi, levels)
    t_owner = np.arange(k.shape[1]) // group
    c_owner = np.arange(v.shape[2]) // group
    qk = _kivi_q(k, k_lo16[:, t_owner], k_sc16[:, t_owner], levels)
    qv = _kivi_q(v, v_lo16[:, :, c_owner], v_sc16[:, :, c_owner], levels)
    side = b"".join(a.astype("<f2").tobytes() for a in (k_lo16, k_sc16, v_lo16, v_sc16))
    q = np.stack([qk, qv], axis=1)  # [L, 2, T, C]
    return [
        (container.SEC_PARAMS, _KIVI.pack(bits, group)),
        (container.SEC_SCALES, side),
        (container.SEC_PAYLOAD, _pack_bits(q, bits)),
    ]


def _section(
    head: container.ChunkHeader, data: bytes, kind: int, expect: int | None = None
) -> memoryview:
    raw = container.section_bytes(data, head.section(kind))
    if expect is not None and len(raw) != expect:
        raise CorruptChunk(
            f"{container.SEC_NAMES[kind]} section: {len(raw)} bytes, expected {expect}"
        )
    return raw


# the sections each baseline writes; any other section means the chunk is not what it claims
_SECTIONS = {
    container.CODEC_FP16: {container.SEC_PAYLOAD},
    container.CODEC_ZSTD: {container.SEC_PAYLOAD},
    container.CODEC_INT8: {container.SEC_SCALES, container.SEC_PAYLOAD},
    container.CODEC_KIVI: {container.SEC_PARAMS, container.SEC_SCALES, container.SEC_PAYLOAD},
}


def decode(head: container.ChunkHeader, data: bytes) -> torch.Tensor:
    """Decode a baseline chunk to float32 [L, 2, T, C] on the CPU."""
    expected = _SECTIONS.get(head.codec)
    if expected is not None:
        # the position section may travel with any codec (container.Position)
        stray = sorted({sec.kind for sec in head.sections} - expected - {container.SEC_POSITION})
        if stray:
            names = ", ".join(container.SEC_NAMES.get(k, f"section {k}") for k in stray)
            raise CorruptChunk(f"{head.codec_name} chunk has sections it does not use: {names}")
    n_layers, n_tokens = head.n_layers, head.n_tokens
    ch = head.n_kv_heads * head.head_dim
    n = n_layers * 2 * n_tokens * ch
    if head.codec == container.CODEC_FP16:
        raw = _section(head, data, container.SEC_PAYLOAD, 2 * n)
        x = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if not np.isfinite(x).all():
            raise CorruptChunk("payload: NaN or infinite fp16 value")
        return torch.from_numpy(x.reshape(n_layers, 2, n_tokens, ch))
    if head.codec == container.CODEC_ZSTD:
        raw = _section(head, data, container.SEC_PAYLOAD)
        try:
            size = zstandard.get_frame_parameters(bytes(raw[:18])).content_size
            if size != 2 * n:
                raise CorruptChunk(f"payload: zstd frame declares {size} bytes, expected {2 * n}")
            out = zstandard.ZstdDecompressor().decompress(bytes(raw), max_output_size=2 * n)
        except zstandard.ZstdError as exc:
            raise CorruptChunk(f"payload: not a valid zstd frame ({exc})") from exc
        if len(out) != 2 * n:
            raise CorruptChunk(f"payload: zstd frame holds {len(out)} bytes, expected {2 * n}")
        x = np.frombuffer(out, dtype="<f2").astype(np.float32)
        if not np.isfinite(x).all():
            raise CorruptChunk("payload: NaN or infinite fp16 value")
        return torch.from_numpy(x.reshape(n_layers, 2, n_tokens, ch))
    if head.codec == container.CODEC_INT8:
        s = np.frombuffer(
            _section(head, data, container.SEC_SCALES, 2 * n_layers * 2 * n_tokens), dtype="<f2"
        )
        if not (np.isfinite(s).all() and (s >= 0).all()):
            raise CorruptChunk("scales section: negative, NaN or infinite scale")
        q = np.frombuffer(_section(head, data, container.SEC_PAYLOAD, n), dtype=np.int8)
        if (q == -128).any():
            raise CorruptChunk("payload: int8 value -128 is outside -127..127")
        step = s.astype(np.float32) / np.float32(127)
        x = q.reshape(n_layers, 2, n_tokens, ch).astype(np.float32) * step.reshape(
            n_layers, 2, n_tokens, 1
        )
        return torch.from_numpy(x)
    if head.codec == container.CODEC_KIVI:
        return torch.from_numpy(_kivi_decode(head, data, n_layers, n_tokens, ch))
    raise CorruptChunk(f"codec id {head.codec} is not a baseline")


def _kivi_decode(
    head: container.ChunkHeader, data: bytes, n_layers: int, n_tokens: int, ch: int
) -> np.ndarray:
    bits, group = _KIVI.unpack(_section(head, data, container.SEC_PARAMS, _KIVI.size))
    if bits not in (2, 4, 8) or not 1 <= group <= 4096:
        raise CorruptChunk(f"params section: KIVI bits {bits} / group {group} out of range")
    levels = (1 << bits) - 1
    tg, cg = -(-n_tokens // group), -(-ch // group)
    nk, nv = n_layers * tg * ch, n_layers * n_tokens * cg
    side = np.frombuffer(
        _section(head, data, container.SEC_SCALES, 2 * (2 * nk + 2 * nv)), dtype="<f2"
    )
    side = side.astype(np.float32)
    if not np.isfinite(side).all():
        raise CorruptChunk("scales section: NaN or infinite min/scale")
    k_lo = side[:nk].reshape(n_layers, tg, ch)
    k_sc = side[nk : 2 * nk].reshape(n_layers, tg, ch)
    v_lo = side[2 * nk : 2 * nk + nv].reshape(n_layers, n_tokens, cg)
    v_sc = side[2 * nk + nv :].reshape(n_layers, n_tokens, cg)
    if (k_sc < 0).any() or (v_sc < 0).any():
        raise CorruptChunk("scales section: negative KIVI scale")
    n = n_layers * 2 * n_tokens * ch
    per = 8 // bits
    q = _unpack_bits(_section(head, data, container.SEC_PAYLOAD, -(-n // per)), bits, n)
    q = q.reshape(n_layers, 2, n_tokens, ch).astype(np.float32)
    if (q > levels).any():  # cannot happen for packed widths, kept as a guard
        raise CorruptChunk("payload: KIVI code out of range")
    t_owner = np.arange(n_tokens) // group
    c_owner = np.arange(ch) // group
    out = np.empty_like(q)
    out[:, 0] = q[:, 0] * k_sc[:, t_owner] + k_lo[:, t_owner]
    out[:, 1] = q[:, 1] * v_sc[:, :, c_owner] + v_lo[:, :, c_owner]
    return out
