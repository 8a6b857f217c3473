"""Host side of the GPU decoder: check a chunk, upload it, launch the kernels, check the result.

Three steps, so that timing can separate them:

- `prepare(data, model_tables)` (CPU): parse and check the container with the CPU decoder's
  own `kvcast.codec.codec.prepare_cachegen`, derive the tables and the stream plan, and lay out the
  per-stream arguments of the kernel.
- `upload(prep, device)`: copy the payload, tables and per-stream arguments to the device.
- `run(dev, dtype)`: the rANS kernel (uint8 symbols) then the dequantization kernel (the
  output tensor [L, 2, T, H, D] in `dtype`, K multiplied back by the chunk's key gains where it
  carries them, and the exact (sink) tokens written as sent), all on the device; `check(dev)` reads the
  per-stream status back and raises `CorruptChunk` as the CPU decoder would.

`decode_chunk(data, ...)` does all of it; `entropy_decode` is the hook
`kvcast.codec.codec.set_device_entropy_decoder` takes (symbols only; the codec then
dequantizes with torch on the device).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from kvcast.codec import codec, container
from kvcast.codec.container import CorruptChunk
from kvcast.codec.model_tables import ModelTables
from kvcast.codec.quantize import row_centres
from kvcast.codec.transforms import Transforms, inverse_transform

# lanes per program of the rANS kernel: with 16 lanes a stream, 2 streams fill one warp
TILE_LANES = 32
# elements one program of the dequantization kernel writes
DEQUANT_TILE = 4096

_STREAM_FIELDS = ("begin", "end", "sym_off", "n_sym", "first_row", "group", "reg_base", "reg_n",
                  "anc_base", "anc_n")  # fmt: skip


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fast_interpreter() -> None:
    """Turn off the interpreter's per-operation integer-overflow checks (3x faster).

    The kernels rely on unsigned 32-bit wrap-around nowhere, and a GPU build never runs these
    checks (they are a debug option there), so this changes no result.
    """
    try:
        from triton.runtime import interpreter

        builder = interpreter.interpreter_builder
        builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)
    except (ImportError, AttributeError, TypeError):  # another Triton: keep its defaults
        pass


def check_device(device: str | torch.device) -> torch.device:
    """The device kernels run on: CUDA, or the CPU under Triton's interpreter."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if interpreting():
            raise RuntimeError("TRITON_INTERPRET=1 runs kernels on the CPU: use device='cpu'")
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA GPU")
        return dev
    if dev.type == "cpu" and interpreting():
        _fast_interpreter()
        return dev
    raise RuntimeError(
        f"the GPU decoder runs on 'cuda' (or on 'cpu' under TRITON_INTERPRET=1), not {dev}"
    )


@dataclass
class StreamArgs:
    """Per-stream kernel arguments (numpy, one entry per stream) and the launch constants."""

    begin: np.ndarray  # int64
    end: np.ndarray  # int64
    sym_off: np.ndarray  # int64
    n_sym: np.ndarray  # int32
    first_row: np.ndarray  # int32
    group: np.ndarray  # int32
    reg_base: np.ndarray  # int32: index in cum of the stream's channel-0 regular table
    reg_n: np.ndarray  # int32: its alphabet size
    anc_base: np.ndarray  # int32: same for anchor rows
    anc_n: np.ndarray  # int32
    row_len: int
    lanes: int
    prob_bits: int
    search_steps: int


def stream_args(
    offsets: np.ndarray,
    plan: codec.StreamPlan,
    cum: np.ndarray,
    start: np.ndarray,
    sizes: np.ndarray,
    prob_bits: int,
    lanes: int,
) -> StreamArgs:
    """Kernel arguments from the codec's stream plan; checks the table layout the kernel assumes.

    The kernel finds channel c's table at base + c * (n + 1): the C tables of one (layer, K/V,
    row kind) have equal size and lie end to end in `cum` (entropy.build_tables). Checked here.
    """
    ch = plan.row_len
    reg_base, reg_n = start[plan.tab_reg], sizes[plan.tab_reg]
    anc_base, anc_n = start[plan.tab_anc], sizes[plan.tab_anc]
    firsts = np.unique(np.concatenate([plan.tab_reg, plan.tab_anc[plan.group > 0]]))
    idx = firsts[:, None] + np.arange(ch)[None, :]
    if idx.max(initial=0) >= len(sizes):
        raise CorruptChunk("stream plan names a table past the end of the tables")
    n0 = sizes[firsts][:, None]
    want = start[firsts][:, None] + np.arange(ch)[None, :] * (n0 + 1)
    if not ((sizes[idx] == n0).all() and (start[idx] == want).all()):
        raise RuntimeError("internal error: tables of one row kind are not laid end to end")
    used = np.concatenate([reg_n, anc_n[plan.group > 0]])
    steps = max(1, math.ceil(math.log2(int(used.max()))))
    return StreamArgs(
        begin=offsets[:-1].astype(np.int64),
        end=offsets[1:].astype(np.int64),
        sym_off=plan.sym_off.astype(np.int64),
        n_sym=plan.n_sym.astype(np.int32),
        first_row=plan.first_row.astype(np.int32),
        group=plan.group.astype(np.int32),
        reg_base=reg_base.astype(np.int32),
        reg_n=reg_n.astype(np.int32),
        anc_base=anc_base.astype(np.int32),
        anc_n=anc_n.astype(np.int32),
        row_len=int(ch),
        lanes=int(lanes),
        prob_bits=int(prob_bits),
        search_steps=steps,
    )


def device_tables(cum: np.ndarray, prob_bits: int) -> np.ndarray:
    """Cumulative frequencies as the kernel reads them: uint16 while they fit (prob_bits <= 15,
    half the cache footprint of int32: the table loads are on the decoder's critical path)."""
    return cum.astype(np.uint16 if prob_bits <= 15 else np.int32)


@dataclass
class Prepared:
    """A checked CacheGen chunk, ready to upload (everything host-side, numpy)."""

    head: container.ChunkHeader
    params: codec.CachegenParams
    payload: np.ndarray  # uint8
    cum: np.ndarray  # uint16 (prob_bits <= 15) or int32: device_tables
    args: StreamArgs
    step: np.ndarray  # float32 [L * 2, T]: float32(scale) / MAX, as quantize.dequantize
    maxv: np.ndarray  # float32 [L * 2, T]
    groups: np.ndarray  # int32 [L * 2]
    gains: np.ndarray  # float32 [L * 2, C]: key_gain_rows (r on K rows, 1.0 elsewhere)
    n_symbols: int
    exact: np.ndarray | None = None  # float16 [L, 2, n, C]: the chunk's first n tokens as sent
    transforms: Transforms | None = None  # the model tables' KLT bases (FLAG_TRANSFORM)
    # what the CPU decoder (entropy.decode_streams) takes, for checks and comparisons
    offsets: np.ndarray | None = None
    plan: codec.StreamPlan | None = None
    tables: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def prepare(data: bytes, model_tables: ModelTables | None = None) -> Prepared:
    """Parse and check a CacheGen chunk with `codec.prepare_cachegen` (the CPU decoder's own
    checks), then lay out the kernels' arguments."""
    head = container.parse(data)
    if head.codec != container.CODEC_CACHEGEN:
        raise ValueError(f"not a CacheGen chunk (codec {head.codec_name}): use codec.decode_chunk")
    c = codec.prepare_cachegen(head, data, model_tables)
    params, plan, offsets, payload, scales = c.params, c.plan, c.offsets, c.payload, c.scales
    (cum, start, sizes), n_layers, n_tokens = c.tables, head.n_layers, head.n_tokens
    args = stream_args(offsets, plan, cum, start, sizes, params.prob_bits, params.lanes)
    maxv = row_centres(params.bins, n_tokens, params.groups, params.anchor_bins).astype(np.float32)
    step = scales.astype(np.float32) / maxv  # IEEE float32 division, as dequantize does
    return Prepared(
        head=head,
        params=params,
        payload=payload,
        cum=device_tables(cum, params.prob_bits),
        args=args,
        step=np.ascontiguousarray(step.reshape(n_layers * 2, n_tokens)),
        maxv=np.ascontiguousarray(maxv.reshape(n_layers * 2, n_tokens)),
        groups=np.tile(np.array(params.groups, dtype=np.int32), n_layers),
        gains=key_gain_rows(c.gains, n_layers, head.n_kv_heads * head.head_dim),
        n_symbols=head.n_elements,
        exact=c.exact,
        transforms=c.transforms,
        offsets=offsets,
        plan=plan,
        tables=(cum, start, sizes),
    )


def key_gain_rows(gains: np.ndarray | None, n_layers: int, channels: int) -> np.ndarray:
    """float32 [L * 2, C]: the dequantization kernel's multiplier of every (layer, K/V, channel).

    K rows get float32(r) of the chunk's key gains section (float16 [L, C], FLAG_KEY_GAINS), the
    number `quantize.dequantize` multiplies K by; V rows, and every row of a chunk without gains,
    get exactly 1.0 (an exact IEEE multiply: those outputs keep their bits).
    """
    rows = np.ones((n_layers, 2, channels), dtype=np.float32)
    if gains is not None:
        if gains.shape != (n_layers, channels):
            raise RuntimeError(f"internal error: key gains {gains.shape}, chunk has "
                               f"{(n_layers, channels)}")  # fmt: skip
        rows[:, 0] = gains.astype(np.float32)
    return rows.reshape(n_layers * 2, channels)


@dataclass
class OnDevice:
    """A prepared chunk's tensors on the device, plus the buffers the kernels write."""

    prep: Prepared
    device: torch.device
    payload: torch.Tensor
    cum: torch.Tensor
    streams: dict[str, torch.Tensor]
    step: torch.Tensor
    maxv: torch.Tensor
    groups: torch.Tensor
    gains: torch.Tensor  # float32 [L * 2, C]
    exact: torch.Tensor | None  # float32 [L, 2, n, C]: rows the dequantization overwrites
    symbols: torch.Tensor  # uint8 [n_symbols], written by the rANS kernel
    status: torch.Tensor  # int32 [n_streams]
    rounds: torch.Tensor  # int32 [programs] (program_rounds)
    tile_lanes: int


def upload(
    prep: Prepared, device: str | torch.device = "cuda", *, tile_lanes: int = TILE_LANES
) -> OnDevice:
    """Copy a prepared chunk to the device (payload, tables, per-stream arguments, steps).

    `tile_lanes`: lanes one program of the rANS kernel decodes (streams x lanes per stream).
    """
    dev = check_device(device)
    _, per = tile_shape(prep.args.lanes, tile_lanes)

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev, non_blocking=True)

    payload = prep.payload if len(prep.payload) else np.zeros(1, np.uint8)
    streams = {name: put(getattr(prep.args, name)) for name in _STREAM_FIELDS}
    return OnDevice(
        prep=prep,
        device=dev,
        payload=put(payload.copy()),
        cum=put(prep.cum),
        streams=streams,
        step=put(prep.step),
        maxv=put(prep.maxv),
        groups=put(prep.groups),
        gains=put(prep.gains),
        exact=None if prep.exact is None else put(prep.exact.astype(np.float32)),
        symbols=torch.empty(prep.n_symbols, dtype=torch.uint8, device=dev),
        status=torch.empty(len(prep.args.n_sym), dtype=torch.int32, device=dev),
        rounds=put(program_rounds(prep.args.n_sym, prep.args.lanes, per)),
        tile_lanes=tile_lanes,
    )


def run_entropy(dev: OnDevice) -> None:
    """Launch the rANS kernel: all streams, all lanes; fills dev.symbols and dev.status."""
    from kvcast.codec.gpu.kernels import rans_decode_kernel  # deferred: imports Triton

    a, s = dev.prep.args, dev.streams
    lanes_p2, per = tile_shape(a.lanes, dev.tile_lanes)
    n_streams = len(a.n_sym)
    rans_decode_kernel[(len(dev.rounds),)](
        dev.payload, s["begin"], s["end"], s["sym_off"], s["n_sym"], s["first_row"], s["group"],
        s["reg_base"], s["reg_n"], s["anc_base"], s["anc_n"], dev.rounds, dev.cum, dev.symbols,
        dev.status, n_streams, a.row_len, a.lanes, PROB_BITS=a.prob_bits, STREAMS=per,
        LANES=lanes_p2, SEARCH_STEPS=a.search_steps, num_warps=max(1, per * lanes_p2 // 32),
    )  # fmt: skip


def tile_shape(lanes: int, tile_lanes: int) -> tuple[int, int]:
    """(lanes rounded up to a power of two, streams per program) of the rANS kernel's tile."""
    lanes_p2 = 1 << max(0, (lanes - 1).bit_length())
    return lanes_p2, max(1, tile_lanes // lanes_p2)


def program_rounds(n_sym: np.ndarray, lanes: int, per: int) -> np.ndarray:
    """int32 [programs]: rounds of the longest of each program's `per` streams."""
    rounds = -(-n_sym.astype(np.int64) // lanes)
    n_prog = -(-len(rounds) // per)
    pad = np.zeros(n_prog * per, dtype=np.int64)
    pad[: len(rounds)] = rounds
    return pad.reshape(n_prog, per).max(axis=1).astype(np.int32)


def run_dequant(
    dev: OnDevice, dtype: torch.dtype = torch.float16, *, tile_elems: int = DEQUANT_TILE
) -> torch.Tensor:
    """Launch the dequantization kernel on dev.symbols: the chunk [L, 2, T, H, D] in `dtype`."""
    from kvcast.codec.gpu.kernels import dequant_kernel  # deferred: imports Triton

    head = dev.prep.head
    ch = head.n_kv_heads * head.head_dim
    rows = head.n_layers * 2 * head.n_tokens
    if dev.prep.transforms is not None:  # KLT levels: the exact integer inverse, in torch
        x = inverse_transform(
            dev.symbols.view(head.n_layers, 2, head.n_tokens, ch),
            dev.step.view(head.n_layers, 2, head.n_tokens),
            dev.prep.params.bins // 2 - 1,
            dev.prep.transforms,
        )
        if dev.exact is not None:
            x[:, :, : dev.exact.shape[2]] = dev.exact
        return x.to(dtype).view(head.shape)
    out = torch.empty(head.shape, dtype=dtype, device=dev.device)
    block = min(1024, 1 << max(0, (ch - 1).bit_length()))
    per = max(1, tile_elems // block)
    dequant_kernel[(-(-rows // per), -(-ch // block))](
        dev.symbols, dev.step, dev.maxv, dev.groups, dev.gains, out, rows, head.n_tokens, ch,
        ROWS=per, BLOCK=block, OUT_BF16=dtype == torch.bfloat16, num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    if dev.exact is not None:  # the sink tokens as sent (FLAG_EXACT), cast like the CPU path
        n = dev.exact.shape[2]
        out.view(head.n_layers, 2, head.n_tokens, ch)[:, :, :n] = dev.exact.to(dtype)
    return out


def run(dev: OnDevice, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Both kernels, queued on the current stream (no host synchronization)."""
    run_entropy(dev)
    return run_dequant(dev, dtype)


def check(dev: OnDevice) -> None:
    """Raise CorruptChunk for the first stream whose status is not OK (synchronizes)."""
    codec.raise_for_status(dev.status.cpu().numpy())


def decode_chunk(
    data: bytes,
    *,
    model_tables: ModelTables | None = None,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Decode a chunk on the GPU into [L, 2, T, H, D] of `dtype` on `device`.

    CacheGen chunks decode entirely on the device (bit-identical to
    `kvcast.codec.decode_chunk(..., device="cpu")`); baselines go through the codec's own
    decoder and are moved to the device.
    """
    head = container.parse(data, verify_crc=False)
    if head.codec != container.CODEC_CACHEGEN:
        return codec.decode_chunk(data, model_tables=model_tables, device=device, dtype=dtype)
    dev = upload(prepare(data, model_tables), device)
    out = run(dev, dtype)
    check(dev)
    return out


def entropy_decode(
    payload: np.ndarray,
    offsets: np.ndarray,
    plan: codec.StreamPlan,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
    params: codec.CachegenParams,
    n_symbols: int,
    device: torch.device,
) -> torch.Tensor:
    """The codec's device-entropy-decoder hook: uint8 symbols [n_symbols] on `device`."""
    cum, start, sizes = tables
    args = stream_args(offsets, plan, cum, start, sizes, params.prob_bits, params.lanes)
    prep = Prepared(head=None, params=params, payload=payload, cum=device_tables(cum, params.prob_bits),  # type: ignore[arg-type]
                    args=args, step=np.zeros(0, np.float32), maxv=np.zeros(0, np.float32),
                    groups=np.zeros(0, np.int32), gains=np.zeros((0, 0), np.float32),
                    n_symbols=n_symbols)  # fmt: skip
    dev = upload(prep, device)
    run_entropy(dev)
    check(dev)
    return dev.symbols
