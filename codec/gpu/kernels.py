"""Triton kernels of the GPU decoder: interleaved rANS (docs/format.md §4) and dequantization.

`rans_decode_kernel`: one program per stream, one tensor element per rANS lane, so all streams
*and* all lanes of a chunk decode in parallel (L * 2 * ceil(T / block) programs x `lanes`
lanes). A round decodes symbols r * lanes .. r * lanes + lanes - 1 (one per lane). How many
bytes a lane reads (0, 1 or 2) follows from its own state, so the lanes find their read
offsets with an exclusive prefix sum (`tl.cumsum`, warp shuffles on a GPU) and read in
parallel. The tables of a stream's regular (anchor) rows are `C` tables of equal size laid end
to end, so a lane finds its table from the stream's base and its channel alone; the symbol is a
fixed-depth binary search (binary lifting) that keeps the cumulative frequencies at both ends,
so the decode step needs no further loads. Integer arithmetic only: the same symbols and error codes as
`kvcast.codec.entropy.decode_streams`.

`dequant_kernel`: float32 ``(sym - MAX) * step`` per element, plus the anchor's value on
delta rows, times the row's key gain multiplier of its channel (float32(r) on K rows of chunks
with key gains, exactly 1.0 elsewhere: x * 1.0 == x in IEEE, so chunks without gains keep their
bits), then one cast to the output dtype: the exact operations (and order) of
`kvcast.codec.quantize.dequantize`. Launched with ``enable_fp_fusion=False`` so no multiply-add
is contracted into an FMA (which would round once instead of twice).

Both kernels run unchanged under Triton's interpreter (TRITON_INTERPRET=1), which is how the
tests prove bit-identity on machines without a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

RANS_L = tl.constexpr(1 << 23)
# status codes: the same numbers as kvcast.codec.entropy
OK = tl.constexpr(0)
ERR_TRUNCATED = tl.constexpr(1)
ERR_TRAILING = tl.constexpr(2)
ERR_FINAL_STATE = tl.constexpr(3)
ERR_BAD_STATE = tl.constexpr(4)


@triton.jit
def rans_decode_kernel(
    data_ptr,  # uint8 [payload bytes]: all streams back to back
    begin_ptr,  # int64 [S] first byte of each stream
    end_ptr,  # int64 [S] one past its last byte
    sym_off_ptr,  # int64 [S] where its symbols go in out
    n_sym_ptr,  # int32 [S]
    first_row_ptr,  # int32 [S] token of its first row
    group_ptr,  # int32 [S] anchor group (0: no anchor rows)
    reg_base_ptr,  # int32 [S] index in cum of channel 0's table, regular rows
    reg_n_ptr,  # int32 [S] alphabet size of those tables
    anc_base_ptr,  # int32 [S] same for anchor rows
    anc_n_ptr,  # int32 [S]
    rounds_ptr,  # int32 [programs] rounds of the longest stream of each program
    cum_ptr,  # uint16 or int32 cumulative frequencies, tables end to end (n + 1 entries each)
    out_ptr,  # uint8 [symbols]
    status_ptr,  # int32 [S]
    n_streams,
    row_len,  # channels per row (C)
    lanes,  # rANS lanes per stream
    PROB_BITS: tl.constexpr,
    STREAMS: tl.constexpr,  # streams per program (rows of the tile)
    LANES: tl.constexpr,  # next power of two >= lanes (columns of the tile)
    SEARCH_STEPS: tl.constexpr,  # ceil(log2(largest alphabet))
):
    pid = tl.program_id(0)
    sid = pid * STREAMS + tl.arange(0, STREAMS)  # [STREAMS]
    live = sid < n_streams
    begin = tl.load(begin_ptr + sid, mask=live, other=0)[:, None]
    end = tl.load(end_ptr + sid, mask=live, other=0)[:, None]
    sym_off = tl.load(sym_off_ptr + sid, mask=live, other=0)[:, None]
    n_sym = tl.load(n_sym_ptr + sid, mask=live, other=0)[:, None]
    first_row = tl.load(first_row_ptr + sid, mask=live, other=0)[:, None]
    group = tl.load(group_ptr + sid, mask=live, other=0)[:, None]
    reg_base = tl.load(reg_base_ptr + sid, mask=live, other=0)[:, None]
    reg_n = tl.load(reg_n_ptr + sid, mask=live, other=2)[:, None]
    anc_base = tl.load(anc_base_ptr + sid, mask=live, other=0)[:, None]
    anc_n = tl.load(anc_n_ptr + sid, mask=live, other=2)[:, None]
    n_rounds = tl.load(rounds_ptr + pid)
    lane = tl.arange(0, LANES)[None, :]  # [1, LANES]
    active = (lane < lanes) & live[:, None]  # [STREAMS, LANES]
    mask = (1 << PROB_BITS) - 1
    gdiv = tl.maximum(group, 1)

    # initial states: u32 little-endian at begin + 4 * lane
    short = (end - begin) < 4 * lanes  # [STREAMS, 1]
    p0 = begin + 4 * lane
    ok0 = active & (p0 + 3 < end)
    b0 = tl.load(data_ptr + p0, mask=ok0, other=0).to(tl.uint32)
    b1 = tl.load(data_ptr + p0 + 1, mask=ok0, other=0).to(tl.uint32)
    b2 = tl.load(data_ptr + p0 + 2, mask=ok0, other=0).to(tl.uint32)
    b3 = tl.load(data_ptr + p0 + 3, mask=ok0, other=0).to(tl.uint32)
    x = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    x = tl.where(active, x, RANS_L)
    n_bad = tl.sum(((x < RANS_L) | (x >= (RANS_L << 8))).to(tl.int32), axis=1)[:, None]
    err = tl.where(short, ERR_TRUNCATED, tl.where(n_bad > 0, ERR_BAD_STATE, OK))  # [STREAMS, 1]

    pos = begin + 4 * lanes  # [STREAMS, 1]
    # symbol i = r * lanes + lane is channel col = i % C of row i // C; col and the row's
    # position in its anchor group (rmod) advance by fixed steps each round (no division)
    col = lane % row_len + tl.zeros([STREAMS, LANES], tl.int32)
    rmod = (first_row + lane // row_len) % gdiv
    dcol = lanes % row_len
    drow = (lanes // row_len) % gdiv
    i = lane + tl.zeros([STREAMS, LANES], tl.int32)
    # a round decodes symbol r * lanes + lane of every stream; a stream that failed stops
    # (its lanes are masked), the others go on
    for _r in range(0, n_rounds):
        valid = active & (i < n_sym) & (err == OK)
        anchor = (group > 0) & (rmod == 0)
        n = tl.where(anchor, anc_n, reg_n)
        tb = tl.where(anchor, anc_base, reg_base) + col * (n + 1)
        slot = (x & mask).to(tl.int32)
        # the symbol lo with cum[lo] <= slot < cum[lo + 1], by binary lifting: try lo + 2^k for
        # k = SEARCH_STEPS - 1 .. 0 (2^SEARCH_STEPS >= n); the last accepted probe is cum[lo],
        # the last rejected one cum[lo + 1] (probes past the table count as M: rejected)
        lo = tl.zeros([STREAMS, LANES], tl.int32)
        c_lo = tl.zeros([STREAMS, LANES], tl.int32)
        c_hi = tl.full([STREAMS, LANES], 1 << PROB_BITS, tl.int32)
        for k in tl.static_range(SEARCH_STEPS):
            cand = lo + (1 << (SEARCH_STEPS - 1 - k))
            v = tl.load(cum_ptr + tb + cand, mask=valid & (cand <= n), other=1 << PROB_BITS)
            v = v.to(tl.int32)
            up = v <= slot
            lo = tl.where(up, cand, lo)
            c_lo = tl.where(up, v, c_lo)
            c_hi = tl.where(up, c_hi, v)
        f = (c_hi - c_lo).to(tl.uint32)
        xn = f * (x >> PROB_BITS) + slot.to(tl.uint32) - c_lo.to(tl.uint32)
        xn = tl.where(valid, xn, x)
        # renormalize: 1 byte if x < L, a second one if x < 2**15 (then x << 8 < L still)
        need1 = valid & (xn < RANS_L)
        need2 = valid & (xn < (RANS_L >> 8))
        cnt = need1.to(tl.int32) + need2.to(tl.int32)
        incl = tl.cumsum(cnt, axis=1)
        total = tl.sum(cnt, axis=1)[:, None]
        trunc = pos + total > end  # [STREAMS, 1]
        q = pos + (incl - cnt)
        y0 = tl.load(data_ptr + q, mask=need1 & ~trunc, other=0).to(tl.uint32)
        y1 = tl.load(data_ptr + q + 1, mask=need2 & ~trunc, other=0).to(tl.uint32)
        xn = tl.where(need1, (xn << 8) | y0, xn)
        xn = tl.where(need2, (xn << 8) | y1, xn)
        x = tl.where(trunc, x, xn)
        tl.store(out_ptr + sym_off + i, lo.to(tl.uint8), mask=valid & ~trunc)
        err = tl.where((err == OK) & trunc, ERR_TRUNCATED, err)
        pos = tl.where(trunc, pos, pos + total)
        i += lanes
        col += dcol
        wrap = col >= row_len
        col = tl.where(wrap, col - row_len, col)
        rmod += drow + wrap.to(tl.int32)
        rmod = tl.where(rmod >= gdiv, rmod - gdiv, rmod)
    n_off = tl.sum(((x != RANS_L) & active).to(tl.int32), axis=1)[:, None]
    err = tl.where((err == OK) & (pos != end), ERR_TRAILING, err)
    err = tl.where((err == OK) & (n_off > 0), ERR_FINAL_STATE, err)
    tl.store(status_ptr + sid[:, None], err, mask=live[:, None])


@triton.jit
def dequant_kernel(
    sym_ptr,  # uint8 [L * 2 * T, C]
    step_ptr,  # float32 [L * 2 * T] = float32(scale) / MAX, computed as dequantize does
    maxv_ptr,  # float32 [L * 2 * T] MAX of each row
    group_ptr,  # int32 [L * 2] anchor group of the row's K/V (0: none)
    gain_ptr,  # float32 [L * 2, C] multiplier per (layer, K/V) and channel: r on K, 1.0 on V
    out_ptr,  # output dtype [L * 2 * T, C]
    n_rows,
    n_tokens,
    row_len,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    OUT_BF16: tl.constexpr,
):
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (layer, K/V, token) flattened
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    rm = row < n_rows
    m = rm[:, None] & (col < row_len)[None, :]
    lk = row // n_tokens
    t = row % n_tokens
    mx = tl.load(maxv_ptr + row, mask=rm, other=1.0)[:, None]
    st = tl.load(step_ptr + row, mask=rm, other=0.0)[:, None]
    offs = row.to(tl.int64)[:, None] * row_len + col[None, :]
    sym = tl.load(sym_ptr + offs, mask=m, other=0)
    val = (sym.to(tl.float32) - mx) * st
    # delta rows: add the reconstructed anchor (the group's first token) of the same channel
    group = tl.load(group_ptr + lk, mask=rm, other=0)
    back = tl.where(group > 0, t % tl.maximum(group, 1), 0)
    has = rm & (back > 0)
    arow = row - back
    amx = tl.load(maxv_ptr + arow, mask=has, other=1.0)[:, None]
    ast = tl.load(step_ptr + arow, mask=has, other=0.0)[:, None]
    aoffs = arow.to(tl.int64)[:, None] * row_len + col[None, :]
    am = m & has[:, None]
    asym = tl.load(sym_ptr + aoffs, mask=am, other=0)
    aval = (asym.to(tl.float32) - amx) * ast
    val = tl.where(am, val + aval, val)
    # key gains (FLAG_KEY_GAINS): after the anchor sum, as quantize.dequantize does
    goffs = lk.to(tl.int64)[:, None] * row_len + col[None, :]
    val = val * tl.load(gain_ptr + goffs, mask=m, other=1.0)
    if OUT_BF16:
        # round to nearest even by hand: the same bits on a GPU and in the interpreter
        bits = val.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        res = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        res = val.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, res, mask=m)
