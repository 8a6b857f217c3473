"""encode_chunk / decode_chunk / chunk_info: one KV chunk <-> bytes (docs/format.md).

A chunk is one tensor [L, 2, T, H, D] (all layers, K and V, T tokens). CacheGen levels go
through quantize -> per-(layer, K/V, token block) rANS streams -> container; baselines
(fp16, int8, kivi, zstd) go through `baselines` into the same container.

Streams: one per (layer, K/V, block of `block_tokens` tokens) covering all C = H * D channels
in (token, channel) order, so a chunk decodes in parallel over L * 2 * ceil(T / block) streams
(numba prange here; GPU warps in a later issue).

Device decode: every decoder starts from `prepare_cachegen` (all checks of a CacheGen chunk).
Entropy decoding runs on the device where a decoder is registered for it
(`set_device_entropy_decoder`; for "cuda" the shipped Triton kernel, `kvcast.codec.gpu.decode`,
is looked up on first use where it can run), else on the CPU (numba); dequantization and
the anchor/delta sum run on `device` through torch. Bins are 4..256 (MAX >= 1) everywhere.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from kvcast.codec import baselines, container, entropy
from kvcast.codec.container import CorruptChunk
from kvcast.codec.entropy_tables import (
    TableLayout,
    count_symbols,
    freqs_from_counts,
    pack_chunk_tables,
    unpack_chunk_tables,
)
from kvcast.codec.ladder import MAX_BINS, MIN_BINS, BaselineSpec, Ladder, LevelSpec, load_ladder
from kvcast.codec.model_tables import ModelTables, ModelTablesMismatch
from kvcast.codec.quantize import dequantize, quantize
from kvcast.codec.transforms import Transforms, dequantize_transformed
from kvcast.errors import InputError
from kvcast.key_gains import check_key_gains

FLAG_DELTA_K = 1
FLAG_CHUNK_TABLES = 2
FLAG_DELTA_V = 4
FLAG_KEY_GAINS = 8  # K was quantized as K / r per channel; the chunk carries r (float16 [L, C])
FLAG_EXACT = 16  # the first n tokens travel as float16 (the attention sink), section SEC_EXACT
FLAG_TRANSFORM = 32  # quantized in the KLT bases of the model tables the header names
FLAGS_ALL = (
    FLAG_DELTA_K | FLAG_CHUNK_TABLES | FLAG_DELTA_V | FLAG_KEY_GAINS | FLAG_EXACT | FLAG_TRANSFORM
)
MAX_EXACT = 64
# flags, group_k, group_v, anchor_bins, prob_bits, lanes, block_tokens; then bins u16 [L, 2]
_PARAMS = struct.Struct("<BBBHBBH")
_EXACT_HEAD = struct.Struct("<H")  # exact tokens section: n, then float16 [L, 2, n, C]

_LADDER: Ladder | None = None


def default_ladder() -> Ladder:
    global _LADDER
    if _LADDER is None:
        _LADDER = load_ladder()
    return _LADDER


@dataclass
class EncodeStats:
    """Figures about one encoded chunk (filled when `stats` is passed to encode)."""

    n_elements: int = 0
    total_bytes: int = 0
    payload_bytes: int = 0  # entropy-coded streams (or the data section of a baseline)
    side_bytes: dict[str, int] = field(default_factory=dict)  # header, scales, tables, index, ...
    ideal_payload_bits: float = 0.0  # code length of the symbols under the coder's integer model
    empirical_entropy_bits: float = 0.0  # symbols under their own per-chunk, per-table histogram
    n_streams: int = 0


@dataclass(frozen=True)
class StreamPlan:
    """How a chunk's symbols [L, 2, T, C] are cut into streams (stream order: l, kv, block)."""

    sym_off: np.ndarray
    n_sym: np.ndarray
    first_row: np.ndarray
    tab_reg: np.ndarray
    tab_anc: np.ndarray
    group: np.ndarray
    row_len: int

    def kernel_args(self) -> tuple:
        """(sym_off, n_sym, row_len, first_row, group, tab_reg, tab_anc): the stream arguments
        of entropy.encode_streams / decode_streams / ideal_bits, in their order."""
        return (self.sym_off, self.n_sym, self.row_len, self.first_row, self.group,
                self.tab_reg, self.tab_anc)  # fmt: skip


def stream_plan(layout: TableLayout, n_tokens: int, block: int) -> StreamPlan:
    """Streams in order (layer, K/V, token block), each covering all channels of its tokens."""
    n_layers = layout.bins.shape[0]
    ch = layout.channels
    n_blocks = -(-n_tokens // block)
    lk = np.arange(n_layers * 2, dtype=np.int64)
    b = np.arange(n_blocks, dtype=np.int64)
    t0 = np.broadcast_to(b * block, (len(lk), n_blocks)).reshape(-1)
    t1 = np.minimum(t0 + block, n_tokens)
    lkr = np.repeat(lk, n_blocks)
    reg, anc = layout.table_bases()
    groups = np.array(layout.groups, dtype=np.int64)
    return StreamPlan(
        sym_off=(lkr * n_tokens + t0) * ch,
        n_sym=(t1 - t0) * ch,
        first_row=t0.copy(),
        tab_reg=reg[lkr],
        tab_anc=anc[lkr],
        group=groups[lkr % 2],
        row_len=ch,
    )


def _as_numpy(kv: torch.Tensor | np.ndarray) -> tuple[np.ndarray, str]:
    if isinstance(kv, torch.Tensor):
        dtype = str(kv.dtype).removeprefix("torch.")
        if dtype not in container.DTYPE_IDS:
            raise InputError(
                f"KV dtype {dtype} not supported; expected float32, float16 or bfloat16"
            )
        arr = kv.detach().to("cpu", torch.float32).numpy()
    elif isinstance(kv, np.ndarray):
        dtype = str(kv.dtype)
        if dtype not in ("float32", "float16"):
            raise InputError(f"KV dtype {dtype} not supported; expected float32 or float16")
        arr = kv.astype(np.float32, copy=False)
    else:
        raise InputError(f"KV must be a torch.Tensor or numpy array, got {type(kv).__name__}")
    if arr.ndim != 5 or arr.shape[1] != 2:
        raise InputError(f"KV chunk must have shape [L, 2, T, H, D], got {tuple(arr.shape)}")
    if min(arr.shape) < 1:
        raise InputError(f"KV chunk has an empty dimension: {tuple(arr.shape)}")
    try:
        container.check_shape(arr.shape[0], arr.shape[2], arr.shape[3], arr.shape[4])
    except CorruptChunk as exc:
        raise InputError(
            f"KV chunk shape {tuple(arr.shape)} is beyond the container's limits: {exc}"
        ) from exc
    if not np.isfinite(arr).all():
        raise InputError("KV chunk contains NaN or infinite values")
    return np.ascontiguousarray(arr), dtype


def encode_chunk(
    kv: torch.Tensor | np.ndarray,
    level: str,
    *,
    model_tables: ModelTables | None = None,
    ladder: Ladder | None = None,
    stats: EncodeStats | None = None,
    key_gains: np.ndarray | None = None,
    context_start: bool = False,
) -> bytes:
    """Encode one chunk [L, 2, T, H, D] at a ladder level or baseline; returns the container bytes.

    `key_gains` (float32 [L, H * D], `KVCache.key_gains`) is needed by levels with
    `k_gain: query` and ignored by the others. `context_start`: the chunk's first token is the
    context's first (the attention sink); levels with `sink_tokens: N` then keep its first N
    tokens in float16.
    """
    ladder = ladder or default_ladder()
    spec = ladder.get(level)
    x, dtype = _as_numpy(kv)
    want = stats is not None
    stats = stats if stats is not None else EncodeStats()
    stats.n_elements = x.size
    if isinstance(spec, BaselineSpec):
        codec_id, sections = baselines.encode(x, spec)
        data = container.pack(codec=codec_id, dtype=dtype, flags=0, shape=x.shape, profile_id=None,
                              level=spec.name, sections=sections)  # fmt: skip
        _fill_sizes(stats, data)
        return data
    n_exact = min(spec.sink_tokens, x.shape[2]) if context_start else 0
    return _encode_cachegen(x, dtype, spec, model_tables, stats, want, key_gains, n_exact)


def _encode_cachegen(
    x5: np.ndarray,
    dtype: str,
    spec: LevelSpec,
    prof: ModelTables | None,
    stats: EncodeStats,
    want: bool,
    key_gains: np.ndarray | None,
    n_exact: int,
) -> bytes:
    n_layers, _, n_tokens, n_heads, head_dim = x5.shape
    x = x5.reshape(n_layers, 2, n_tokens, n_heads * head_dim)
    exact16 = gains16 = None
    if n_exact:  # sent as float16; quantized as zeros (scale 0: every symbol MAX, ~free)
        exact16 = x[:, :, :n_exact].astype(np.float16)
        if not np.isfinite(exact16).all():
            raise InputError("KV values exceed the float16 range (|x| > 65504) in the sink tokens")
    if spec.key_gains:
        gains16 = key_gain_multipliers(key_gains, n_layers, n_heads * head_dim, spec.name)
    if spec.needs_model_tables:
        if prof is None:
            raise InputError(
                f"level {spec.name!r} codes with offline model tables: pass model_tables= "
                "(fit one with `kvcast codec fit-tables`"
                + (" --transforms)" if spec.transform != "none" else ")")
            )
        prof.check_shape(n_layers, n_heads, head_dim)
    if exact16 is not None or gains16 is not None:
        x = x.copy()  # the caller's array stays as it is; one copy for both changes below
        if exact16 is not None:
            x[:, :, :n_exact] = 0
        if gains16 is not None:
            x[:, 0] /= gains16.astype(np.float32)[:, None, :]  # the decoder multiplies back
    if spec.transform != "none":
        assert prof is not None  # checked above
        x = prof.transforms_for(spec.name).encode(x)  # zeroed sink rows stay zero
    anchor_bins = spec.anchor_bins if spec.delta else 0
    layout = TableLayout(spec.bins(n_layers), n_heads * head_dim, spec.groups, anchor_bins)
    sym, scales = quantize(x, layout.bins, groups=spec.groups, anchor_bins=anchor_bins)
    sizes = layout.sizes()
    counts = count_symbols(sym, layout) if (want or spec.tables == "chunk") else None
    sections: list[tuple[int, bytes]] = []
    flags = (FLAG_DELTA_K if spec.delta_k else 0) | (FLAG_DELTA_V if spec.delta_v else 0)
    flags |= FLAG_KEY_GAINS if gains16 is not None else 0
    flags |= FLAG_EXACT if exact16 is not None else 0
    flags |= FLAG_TRANSFORM if spec.transform != "none" else 0
    profile_id = prof.id if (prof is not None and spec.needs_model_tables) else None
    if spec.tables == "profile":
        assert prof is not None  # checked above
        cum, start, _ = prof.tables_for(spec)
    else:
        flags |= FLAG_CHUNK_TABLES
        freqs = freqs_from_counts(counts, sizes, spec.prob_bits)
        cum, start = entropy.build_tables(freqs, sizes)
    plan = stream_plan(layout, n_tokens, spec.block_tokens)
    flat = sym.reshape(-1)
    buf, begin, nbytes, bad = entropy.encode_streams(
        flat, *plan.kernel_args(), cum, start, sizes, spec.prob_bits, spec.lanes
    )
    if bad.any():
        raise RuntimeError(
            "internal error: a symbol fell outside its table"
        )  # quantize bounds symbols
    payload = np.concatenate(
        [buf[b : b + n] for b, n in zip(begin.tolist(), nbytes.tolist(), strict=True)]
    )
    params = _PARAMS.pack(flags, *spec.groups, anchor_bins, spec.prob_bits, spec.lanes,
                          spec.block_tokens) + layout.bins.astype("<u2").tobytes()  # fmt: skip
    sections.append((container.SEC_PARAMS, params))
    sections.append((container.SEC_SCALES, scales.astype("<f2").tobytes()))
    if gains16 is not None:
        sections.append((container.SEC_GAINS, gains16.astype("<f2").tobytes()))
    if exact16 is not None:
        sections.append(
            (container.SEC_EXACT, _EXACT_HEAD.pack(n_exact) + exact16.astype("<f2").tobytes())
        )
    if flags & FLAG_CHUNK_TABLES:
        sections.append((container.SEC_TABLES, pack_chunk_tables(freqs)))
    sections.append((container.SEC_INDEX, nbytes.astype("<u4").tobytes()))
    sections.append((container.SEC_PAYLOAD, payload.tobytes()))
    data = container.pack(codec=container.CODEC_CACHEGEN, dtype=dtype, flags=flags, shape=x5.shape,
                          profile_id=profile_id, level=spec.name, sections=sections)  # fmt: skip
    _fill_sizes(stats, data)
    stats.n_streams = len(nbytes)
    if want:  # two more passes over the symbols: only when figures are asked for
        stats.ideal_payload_bits = float(
            entropy.ideal_bits(flat, *plan.kernel_args(), cum, start, spec.prob_bits)
        )
        stats.empirical_entropy_bits = _entropy_bits(counts, sizes)
    return data


def key_gain_multipliers(
    key_gains: np.ndarray | None, n_layers: int, channels: int, level: str
) -> np.ndarray:
    """float16 [L, C]: r = 1 / g per key channel, what the chunk carries and the decoder
    multiplies by; the encoder divides K by float32(r), so both sides use the same number."""
    if key_gains is None:
        raise InputError(
            f"level {level!r} weights keys by the model's query energy (k_gain: query): pass "
            "key_gains= (KVCache.key_gains, recorded when a real model prefills the context; "
            "synthetic caches have none)"
        )
    g = check_key_gains(key_gains, n_layers, channels, what=f"level {level!r}")
    with np.errstate(over="ignore"):  # an overflow to inf is the error raised below
        r16 = (np.float32(1) / g).astype(np.float16)
    if not (np.isfinite(r16).all() and (r16 > 0).all()):
        raise InputError(f"level {level!r}: key gains outside float16's range once inverted")
    return r16


def _entropy_bits(counts: np.ndarray, sizes: np.ndarray) -> float:
    """Sum over tables of n * H(histogram): the per-chunk empirical entropy of the symbols."""
    offs = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offs[1:])
    tot = np.add.reduceat(counts, offs[:-1]).astype(np.float64)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    c = counts.astype(np.float64)
    p = np.where(c > 0, c / np.maximum(tot[owner], 1), 1.0)
    return float(-(c * np.log2(p)).sum())


def _fill_sizes(stats: EncodeStats, data: bytes) -> None:
    head = container.parse(data, verify_crc=False)
    stats.total_bytes = len(data)
    sizes = head.section_sizes()
    payload_name = "payload"
    stats.payload_bytes = sizes.pop(payload_name, 0)
    stats.side_bytes = sizes


@dataclass(frozen=True)
class CachegenParams:
    flags: int
    groups: tuple[int, int]
    anchor_bins: int
    prob_bits: int
    lanes: int
    block_tokens: int
    bins: np.ndarray  # [L, 2]

    @property
    def delta(self) -> bool:
        return bool(self.flags & (FLAG_DELTA_K | FLAG_DELTA_V))

    @property
    def chunk_tables(self) -> bool:
        return bool(self.flags & FLAG_CHUNK_TABLES)

    @property
    def transform(self) -> bool:
        return bool(self.flags & FLAG_TRANSFORM)


def _parse_params(head: container.ChunkHeader, data: bytes) -> CachegenParams:
    raw = container.section_bytes(data, head.section(container.SEC_PARAMS))
    expect = _PARAMS.size + 4 * head.n_layers
    if len(raw) != expect:
        raise CorruptChunk(
            f"params section: {len(raw)} bytes, expected {expect} for {head.n_layers} layers"
        )
    flags, group_k, group_v, anchor_bins, prob_bits, lanes, block = _PARAMS.unpack_from(raw, 0)
    bins = (
        np.frombuffer(raw[_PARAMS.size :], dtype="<u2").astype(np.int64).reshape(head.n_layers, 2)
    )
    if flags & ~FLAGS_ALL or flags != head.flags:
        raise CorruptChunk(
            f"params section: flags {flags} invalid or differ from the header's {head.flags}"
        )
    for name, bit, group in (("K", FLAG_DELTA_K, group_k), ("V", FLAG_DELTA_V, group_v)):
        if bool(flags & bit) != (group > 0) or not (group == 0 or 2 <= group <= 255):
            raise CorruptChunk(
                f"params section: {name} anchor group {group} does not match its flag"
            )
    if flags & FLAG_KEY_GAINS and flags & FLAG_DELTA_K:
        raise CorruptChunk("params section: key gains cannot be combined with deltas on K")
    if flags & FLAG_EXACT and flags & (FLAG_DELTA_K | FLAG_DELTA_V):
        raise CorruptChunk("params section: exact tokens cannot be combined with deltas")
    if flags & FLAG_TRANSFORM and flags & (FLAG_DELTA_K | FLAG_DELTA_V | FLAG_KEY_GAINS):
        raise CorruptChunk(
            "params section: a KLT transform cannot be combined with deltas or key gains"
        )
    delta = bool(flags & (FLAG_DELTA_K | FLAG_DELTA_V))
    if delta != (anchor_bins > 0) or not (anchor_bins == 0 or MIN_BINS <= anchor_bins <= MAX_BINS):
        raise CorruptChunk(f"params section: anchor_bins {anchor_bins} invalid")
    if not 10 <= prob_bits <= 16 or not 1 <= lanes <= 64 or not 1 <= block <= 4096:
        raise CorruptChunk(
            f"params section: prob_bits {prob_bits}, lanes {lanes} or block {block} out of range"
        )
    if bins.min() < MIN_BINS or bins.max() > MAX_BINS:  # bins 3: MAX 0, a step of s / 0
        raise CorruptChunk(f"params section: bins outside {MIN_BINS}..{MAX_BINS}")
    return CachegenParams(flags, (group_k, group_v), anchor_bins, prob_bits, lanes, block, bins)


def chunk_info(data: bytes) -> container.ChunkHeader:
    """Parse and check a chunk's header, section table and CRCs (no decoding)."""
    head = container.parse(data)
    container.read_position(data, head)
    if head.codec == container.CODEC_CACHEGEN:
        params = _parse_params(head, data)
        _parse_gains(head, data, params)
        _parse_exact(head, data, params)
    return head


# A device entropy decoder: (payload uint8 tensor on device, stream offsets, plan, tables,
# params, n_symbols) -> uint8 symbols on device. None: decode on CPU.
DeviceEntropyDecoder = Callable[..., torch.Tensor]
_DEVICE_DECODERS: dict[str, DeviceEntropyDecoder] = {}


def set_device_entropy_decoder(device_type: str, fn: DeviceEntropyDecoder | None) -> None:
    """Register (or clear) an entropy decoder that runs on `device_type` (e.g. "cuda")."""
    if fn is None:
        _DEVICE_DECODERS.pop(device_type, None)
    else:
        _DEVICE_DECODERS[device_type] = fn


def device_entropy_decoder(device_type: str) -> DeviceEntropyDecoder | None:
    """The entropy decoder set for `device_type`, else the one kvcast ships for it; None: decode
    on the CPU.

    Shipped: "cuda" -> the Triton rANS kernel (`kvcast.codec.gpu.decode.entropy_decode`), where
    `kvcast.codec.gpu.available()` says it runs (CUDA GPU and Triton present). Where it does not,
    `decode_chunk` falls back to the CPU entropy decoder (numba) with dequantization by torch on
    the device: the same tensor bit for bit, only slower.
    """
    fn = _DEVICE_DECODERS.get(device_type)
    if fn is None:
        fn = _shipped_device_decoder(device_type)
        if fn is not None:
            _DEVICE_DECODERS[device_type] = fn
    return fn


def _shipped_device_decoder(device_type: str) -> DeviceEntropyDecoder | None:
    if device_type != "cuda":
        return None
    from kvcast.codec.gpu import available  # deferred: only a CUDA decode probes for a GPU

    if not available()[0]:
        return None
    from kvcast.codec.gpu.decode import entropy_decode  # deferred: imports Triton

    return entropy_decode


def decode_chunk(
    data: bytes,
    *,
    model_tables: ModelTables | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Decode a chunk to a tensor [L, 2, T, H, D] of `dtype` on `device`.

    CacheGen chunks on "cuda" entropy-decode with the GPU kernel (`device_entropy_decoder`
    imports and registers `kvcast.codec.gpu` on first use); without Triton or a CUDA GPU the
    entropy decoding falls back to the CPU and only dequantization runs on the device.
    Baselines decode on the CPU and are moved to the device.
    """
    head = container.parse(data)
    container.read_position(data, head)  # checked even though decoding does not need it
    if head.codec != container.CODEC_CACHEGEN:
        x = baselines.decode(head, data)
    else:
        x = _decode_cachegen(head, data, model_tables, torch.device(device))
    return x.reshape(head.shape).to(device=device, dtype=dtype)


def cachegen_tables(
    head: container.ChunkHeader, data: bytes, params: CachegenParams, prof: ModelTables | None
) -> tuple[TableLayout, np.ndarray, np.ndarray, np.ndarray]:
    """(layout, cum, start, sizes) for decoding; checks the model tables against the chunk."""
    layout = TableLayout(
        params.bins, head.n_kv_heads * head.head_dim, params.groups, params.anchor_bins
    )
    sizes = layout.sizes()
    tables_sec = head.section(container.SEC_TABLES, required=False)
    if params.transform or not params.chunk_tables:
        _check_profile(head, prof)
    elif any(head.profile_id):
        raise CorruptChunk("chunk carries its tables but also names model tables")
    if params.chunk_tables:
        if tables_sec is None:
            raise CorruptChunk("chunk says it carries its tables but has no tables section")
        freqs = unpack_chunk_tables(
            container.section_bytes(data, tables_sec), sizes, params.prob_bits
        )
        cum, start = entropy.build_tables(freqs, sizes)
        return layout, cum, start, sizes
    if tables_sec is not None:
        raise CorruptChunk("chunk has a tables section but says it uses model tables")
    assert prof is not None  # _check_profile
    return (layout, *_profile_tables_for_params(prof, params, head.level))


def _check_profile(head: container.ChunkHeader, prof: ModelTables | None) -> None:
    """The model tables a chunk names (offline tables or KLT bases) is the one given."""
    if not any(head.profile_id):
        raise CorruptChunk("chunk uses model tables but its profile id is empty")
    if prof is None:
        raise ModelTablesMismatch(
            f"chunk (level {head.level!r}) was coded with model tables {head.profile_id.hex()}; "
            "pass model_tables= to decode it"
        )
    if prof.id != head.profile_id:
        raise ModelTablesMismatch(
            f"chunk was coded with model tables {head.profile_id.hex()}, "
            f"but model tables {prof.id_hex} ({prof.model_id}) was given"
        )
    prof.check_shape(head.n_layers, head.n_kv_heads, head.head_dim, what="chunk")


def _profile_tables_for_params(prof: ModelTables, params: CachegenParams, level: str):
    """(cum, start, sizes) of the profile's tables whose bins/anchor settings equal the chunk's."""
    if prof.prob_bits != params.prob_bits:
        raise ModelTablesMismatch(
            f"chunk uses prob_bits={params.prob_bits}, model tables {prof.id_hex} have {prof.prob_bits}"
        )
    for sig, info in prof.meta.items():
        if (
            np.array_equal(np.asarray(info["bins"]), params.bins)
            and tuple(info["groups"]) == params.groups
            and info["anchor_bins"] == params.anchor_bins
            and info.get("transform", "none") == ("klt" if params.transform else "none")
        ):
            if sig not in prof._tables:
                layout = TableLayout(params.bins, prof.channels, params.groups, params.anchor_bins)
                sizes = layout.sizes()
                freqs = freqs_from_counts(prof.counts[sig], sizes, prof.prob_bits)
                cum, start = entropy.build_tables(freqs, sizes)
                prof._tables[sig] = (cum, start, sizes)
            return prof._tables[sig]
    raise CorruptChunk(
        f"model tables {prof.id_hex} have no tables for this chunk's bins (level {level!r})"
    )


@dataclass(frozen=True)
class CachegenChunk:
    """A CacheGen chunk parsed and checked on the host: what every entropy decoder starts from.

    Built by `prepare_cachegen`, shared by the CPU decoder here and the GPU decoder
    (`kvcast.codec.gpu.decode.prepare`), so both accept and reject exactly the same chunks.
    """

    head: container.ChunkHeader
    params: CachegenParams
    scales: np.ndarray  # float16 [L, 2, T], finite and >= 0
    gains: np.ndarray | None  # float16 [L, C] key multipliers r (FLAG_KEY_GAINS), finite, > 0
    layout: TableLayout
    tables: tuple[np.ndarray, np.ndarray, np.ndarray]  # (cum, start, sizes)
    plan: StreamPlan
    payload: np.ndarray  # uint8, all streams end to end
    offsets: np.ndarray  # int64 [n_streams + 1]: stream i is payload[offsets[i]:offsets[i + 1]]
    exact: np.ndarray | None = None  # float16 [L, 2, n, C]: the first n tokens (FLAG_EXACT)
    transforms: Transforms | None = None  # the model tables' KLT bases (FLAG_TRANSFORM)

    @property
    def n_symbols(self) -> int:
        return self.head.n_elements


def prepare_cachegen(
    head: container.ChunkHeader, data: bytes, prof: ModelTables | None
) -> CachegenChunk:
    """Check a CacheGen chunk's params, scales, tables and stream index (`head` from
    `container.parse(data)`); raises CorruptChunk / ModelTablesMismatch on the first problem."""
    if head.codec != container.CODEC_CACHEGEN:
        raise InputError(f"not a CacheGen chunk (codec {head.codec_name}): use decode_chunk")
    params = _parse_params(head, data)
    n_layers, n_tokens = head.n_layers, head.n_tokens
    scales_raw = container.section_bytes(data, head.section(container.SEC_SCALES))
    if len(scales_raw) != 2 * n_layers * 2 * n_tokens:
        raise CorruptChunk(
            f"scales section: {len(scales_raw)} bytes, expected {4 * n_layers * n_tokens}"
        )
    scales = np.frombuffer(scales_raw, dtype="<f2").reshape(n_layers, 2, n_tokens)
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise CorruptChunk("scales section: negative, NaN or infinite scale")
    gains = _parse_gains(head, data, params)
    exact = _parse_exact(head, data, params)
    layout, cum, start, sizes = cachegen_tables(head, data, params, prof)
    plan = stream_plan(layout, n_tokens, params.block_tokens)
    n_streams = len(plan.n_sym)
    index = container.section_bytes(data, head.section(container.SEC_INDEX))
    if len(index) != 4 * n_streams:
        raise CorruptChunk(
            f"stream index: {len(index)} bytes, expected {4 * n_streams} for {n_streams} streams"
        )
    lengths = np.frombuffer(index, dtype="<u4").astype(np.int64)
    payload = np.frombuffer(
        container.section_bytes(data, head.section(container.SEC_PAYLOAD)), dtype=np.uint8
    )
    lo, hi = 4 * params.lanes, 2 * plan.n_sym + 4 * params.lanes
    badlen = (lengths < lo) | (lengths > hi)
    if badlen.any():
        i = int(np.flatnonzero(badlen)[0])
        raise CorruptChunk(f"stream {i}: length {int(lengths[i])} outside {lo}..{int(hi[i])}")
    offsets = np.zeros(n_streams + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] != len(payload):
        raise CorruptChunk(
            f"stream lengths add up to {int(offsets[-1])} bytes, payload has {len(payload)}"
        )
    transforms = prof.transforms_for(head.level) if params.transform and prof else None
    return CachegenChunk(
        head, params, scales, gains, layout, (cum, start, sizes), plan, payload, offsets, exact,
        transforms,
    )  # fmt: skip


def _flagged_section(
    head: container.ChunkHeader, data: bytes, params: CachegenParams, kind: int, flag: int
) -> bytes | memoryview | None:
    """The bytes of an optional section that must be present exactly when `flag` is set."""
    sec = head.section(kind, required=False)
    name = container.SEC_NAMES[kind]
    if not params.flags & flag:
        if sec is not None:
            raise CorruptChunk(f"chunk has a {name} section but its flags do not say so")
        return None
    if sec is None:
        raise CorruptChunk(f"chunk says it carries {name} but has no {name} section")
    return container.section_bytes(data, sec)


def _parse_exact(
    head: container.ChunkHeader, data: bytes, params: CachegenParams
) -> np.ndarray | None:
    """The exact tokens section, present exactly when FLAG_EXACT is set."""
    raw = _flagged_section(head, data, params, container.SEC_EXACT, FLAG_EXACT)
    if raw is None:
        return None
    if len(raw) < _EXACT_HEAD.size:
        raise CorruptChunk(f"exact tokens section: {len(raw)} bytes, too short")
    (n,) = _EXACT_HEAD.unpack_from(raw, 0)
    if not 1 <= n <= min(MAX_EXACT, head.n_tokens):
        raise CorruptChunk(
            f"exact tokens section: {n} tokens, expected 1..{min(MAX_EXACT, head.n_tokens)}"
        )
    channels = head.n_kv_heads * head.head_dim
    expect = _EXACT_HEAD.size + 2 * head.n_layers * 2 * n * channels
    if len(raw) != expect:
        raise CorruptChunk(f"exact tokens section: {len(raw)} bytes, expected {expect}")
    exact = np.frombuffer(raw[_EXACT_HEAD.size :], dtype="<f2").reshape(
        head.n_layers, 2, n, channels
    )
    if not np.isfinite(exact).all():
        raise CorruptChunk("exact tokens section: NaN or infinite value")
    return exact


def _parse_gains(
    head: container.ChunkHeader, data: bytes, params: CachegenParams
) -> np.ndarray | None:
    """The key gains section, present exactly when FLAG_KEY_GAINS is set."""
    raw = _flagged_section(head, data, params, container.SEC_GAINS, FLAG_KEY_GAINS)
    if raw is None:
        return None
    channels = head.n_kv_heads * head.head_dim
    if len(raw) != 2 * head.n_layers * channels:
        raise CorruptChunk(
            f"key gains section: {len(raw)} bytes, expected {2 * head.n_layers * channels}"
        )
    gains = np.frombuffer(raw, dtype="<f2").reshape(head.n_layers, channels)
    if not (np.isfinite(gains).all() and (gains > 0).all()):
        raise CorruptChunk("key gains section: a gain is zero, negative, NaN or infinite")
    return gains


def entropy_decode_cpu(
    payload: np.ndarray,
    offsets: np.ndarray,
    plan: StreamPlan,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
    params: CachegenParams,
    n_symbols: int,
) -> tuple[np.ndarray, np.ndarray]:
    """All streams on the CPU (numba), the arguments of a device entropy decoder less the
    device: (uint8 symbols [n_symbols], int64 status per stream, 0 = OK)."""
    cum, start, sizes = tables
    sym = np.zeros(n_symbols, dtype=np.uint8)
    status = np.zeros(len(plan.n_sym), dtype=np.int64)
    entropy.decode_streams(
        payload, offsets, *plan.kernel_args(), cum, start, sizes, params.prob_bits, params.lanes,
        entropy.build_lut(cum, start, sizes, params.prob_bits), sym, status,
    )  # fmt: skip
    return sym, status


def raise_for_status(status: np.ndarray) -> None:
    """CorruptChunk naming the first stream whose decoder status is not OK."""
    if status.any():
        i = int(np.flatnonzero(status)[0])
        raise CorruptChunk(f"stream {i}: {entropy.STATUS_TEXT.get(int(status[i]), 'decode error')}")


def dequantize_chunk(c: CachegenChunk, sym: torch.Tensor) -> torch.Tensor:
    """float32 [L, 2, T, C] on the symbols' device from the chunk's symbols [L, 2, T, C]
    (without its exact tokens): in the KLT bases' exact arithmetic or the plain per-row one."""
    scales = torch.from_numpy(c.scales.copy())
    if c.transforms is not None:
        return dequantize_transformed(sym, scales, c.params.bins, c.transforms)
    return dequantize(
        sym,
        scales,
        c.params.bins,
        groups=c.params.groups,
        anchor_bins=c.params.anchor_bins,
        key_gains=None if c.gains is None else torch.from_numpy(c.gains.copy()),
    )


def _decode_cachegen(
    head: container.ChunkHeader, data: bytes, prof: ModelTables | None, device: torch.device
) -> torch.Tensor:
    c = prepare_cachegen(head, data, prof)
    params = c.params
    dev_decoder = device_entropy_decoder(device.type)
    if dev_decoder is not None:
        sym_t = dev_decoder(c.payload, c.offsets, c.plan, c.tables, params, c.n_symbols, device)
    else:
        sym, status = entropy_decode_cpu(
            c.payload, c.offsets, c.plan, c.tables, params, c.n_symbols
        )
        raise_for_status(status)
        sym_t = torch.from_numpy(sym).to(device)
    sym_t = sym_t.reshape(head.n_layers, 2, head.n_tokens, head.n_kv_heads * head.head_dim)
    x = dequantize_chunk(c, sym_t)
    if c.exact is not None:  # the sink tokens, as sent
        x[:, :, : c.exact.shape[2]] = torch.from_numpy(c.exact.astype(np.float32)).to(device)
    return x
