"""kvcast's entropy coder: interleaved rANS with static per-channel frequency tables.

Why our own coder: the GPU decoder of a later issue must be bit-identical to this one, so the
coder is small, integer-only and fully specified in docs/format.md ("Entropy coder").

- State: 32 bits, kept in [L, 256*L) with L = 2**23; renormalization moves whole bytes.
- Probability precision: `prob_bits` (default 15): every table sums to 2**prob_bits and every
  symbol of the alphabet has frequency >= 1, so every symbol can be coded.
- A *stream* is a run of symbols coded independently of every other stream. Inside a stream,
  `lanes` rANS states are interleaved: symbol i of the stream belongs to lane i % lanes. All
  lanes share one byte buffer. Lanes give instruction-level parallelism on a CPU and map onto
  GPU warp lanes (the bytes a lane reads follow from its state alone, so a warp finds its read
  offsets with a prefix sum).
- Stream bytes: the lanes' final encoder states (lanes x uint32, little-endian), then the
  renormalization bytes in decoding order.

The symbol-to-model mapping is given by the caller as one table index per (token, channel)
position; see `kvcast.codec.codec` for how chunks are cut into streams.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

RANS_L = 1 << 23  # lower bound of the normalized state interval
STATE_BYTES = 4

# Decoder status codes (per stream); anything but OK means the stream is corrupt.
OK = 0
ERR_TRUNCATED = 1  # a renormalization read ran past the end of the stream
ERR_TRAILING = 2  # bytes left over after the last symbol
ERR_FINAL_STATE = 3  # a lane did not end in the encoder's initial state
ERR_BAD_STATE = 4  # an initial state outside [L, 256 L)

STATUS_TEXT = {
    ERR_TRUNCATED: "stream ends before its last symbol",
    ERR_TRAILING: "stream has bytes after its last symbol",
    ERR_FINAL_STATE: "stream does not decode to the encoder's start state",
    ERR_BAD_STATE: "stream starts with a state outside the valid range",
}


def quantize_counts(counts: np.ndarray, prob_bits: int) -> np.ndarray:
    """Frequencies (int64, same shape) summing to 2**prob_bits along the last axis, each >= 1.

    Integer-only and deterministic: f = 1 + floor(c * (M - n) / N), then the remainder goes to
    the symbols with the largest fractional parts (ties: lowest symbol). An all-zero row gets a
    flat distribution. Works on a batch of rows of equal alphabet size n.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.shape[-1]
    m = 1 << prob_bits
    if n < 1 or n > m:
        raise ValueError(f"alphabet of {n} symbols does not fit prob_bits={prob_bits}")
    rows = counts.reshape(-1, n)
    total = rows.sum(axis=1, keepdims=True)
    flat = total[:, 0] == 0
    rows = np.where(flat[:, None], 1, rows)
    total = rows.sum(axis=1, keepdims=True)
    spare = m - n
    scaled = rows * spare  # c * (M - n) < 2**63 for any realistic count
    base = scaled // total
    frac = scaled - base * total
    freqs = 1 + base
    missing = m - freqs.sum(axis=1)
    # rank symbols by fractional part (descending), ties by index (stable sort on -frac)
    order = np.argsort(-frac, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(n)[None, :].repeat(len(rows), 0), axis=1)
    freqs += ranks < missing[:, None]
    return freqs.reshape(counts.shape)


def build_tables(freqs_flat: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cum, start): cumulative frequencies of every table laid end to end.

    `freqs_flat` holds the tables one after another, table j having `sizes[j]` symbols; `cum`
    holds, per table, sizes[j] + 1 entries (cum[0] = 0, cum[n] = M); table j starts at
    `start[j]` in `cum`.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    fstart = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=fstart[1:])
    start = fstart[:-1] + np.arange(len(sizes), dtype=np.int64)
    cum = np.zeros(int(fstart[-1]) + len(sizes), dtype=np.int64)
    _fill_cum(np.asarray(freqs_flat, dtype=np.int64), fstart, start, cum)
    return cum, start


@numba.njit(cache=True)
def _fill_cum(freqs, fstart, start, cum):  # pragma: no cover - compiled
    for j in range(len(start)):
        acc = 0
        o = start[j]
        cum[o] = 0
        for i in range(fstart[j], fstart[j + 1]):
            acc += freqs[i]
            o += 1
            cum[o] = acc


@numba.njit(cache=True, inline="always")
def _table(i, row_len, first_row, group, tab_reg, tab_anc):  # pragma: no cover - compiled
    """Table index of symbol i of a stream: per channel, anchor rows use their own tables."""
    row = first_row + i // row_len
    col = i % row_len
    if group > 0 and row % group == 0:
        return tab_anc + col
    return tab_reg + col


@numba.njit(cache=True, parallel=True)
def encode_streams(
    symbols,  # uint8 [total] all symbols; stream s is symbols[sym_off[s]: sym_off[s] + n_sym[s]]
    sym_off,  # int64 [n_streams]
    n_sym,  # int64 [n_streams]
    row_len,  # symbols per row (channels); symbol i is row i // row_len, channel i % row_len
    first_row,  # int64 [n_streams] row (token) number of the stream's first row
    group,  # int64 [n_streams]: rows r with r % group == 0 use the anchor tables; 0: none
    tab_reg,  # int64 [n_streams] table of channel 0 for regular rows (channel c: + c)
    tab_anc,  # int64 [n_streams] same for anchor rows
    cum,  # int64 cumulative frequencies (build_tables)
    start,  # int64 table start in cum
    sizes,  # int64 alphabet size per table
    prob_bits,
    lanes,
):  # pragma: no cover - compiled
    """Encode every stream; returns (buffer, begin [n_streams], n_bytes [n_streams], bad [n_streams]).

    Stream s occupies buffer[begin[s]: begin[s] + n_bytes[s]]. bad[s] = 1 when a symbol is
    outside its table's alphabet (nothing useful is written then).
    """
    n_streams = n_sym.shape[0]
    cap_off = np.zeros(n_streams + 1, dtype=np.int64)
    for s in range(n_streams):
        # worst case: 2 bytes per symbol (prob_bits <= 16) plus the lane states
        cap_off[s + 1] = cap_off[s] + 2 * n_sym[s] + 4 * lanes
    out = np.empty(cap_off[n_streams], dtype=np.uint8)
    begin = np.zeros(n_streams, dtype=np.int64)
    nbytes = np.zeros(n_streams, dtype=np.int64)
    bad = np.zeros(n_streams, dtype=np.int64)
    shift = 23 - prob_bits + 8  # x_max = ((L >> prob_bits) << 8) * f
    for s in prange(n_streams):
        state = np.full(lanes, RANS_L, dtype=np.int64)
        pos = cap_off[s + 1]
        base = sym_off[s]
        n_rows = n_sym[s] // row_len
        for r in range(n_rows - 1, -1, -1):
            row = first_row[s] + r
            tbase = tab_anc[s] if (group[s] > 0 and row % group[s] == 0) else tab_reg[s]
            lane = (r * row_len + row_len - 1) % lanes
            for col in range(row_len - 1, -1, -1):
                t = tbase + col
                sym = np.int64(symbols[base + r * row_len + col])
                if sym >= sizes[t]:
                    bad[s] = 1
                    break
                o = start[t] + sym
                c = cum[o]
                f = cum[o + 1] - c
                x = state[lane]
                x_max = f << shift
                while x >= x_max:
                    pos -= 1
                    out[pos] = x & 0xFF
                    x >>= 8
                x = ((x // f) << prob_bits) + (x % f) + c
                state[lane] = x
                lane -= 1
                if lane < 0:
                    lane = lanes - 1
            if bad[s]:
                break
        pos -= 4 * lanes
        for lane in range(lanes):
            x = state[lane]
            p = pos + 4 * lane
            out[p] = x & 0xFF
            out[p + 1] = (x >> 8) & 0xFF
            out[p + 2] = (x >> 16) & 0xFF
            out[p + 3] = (x >> 24) & 0xFF
        begin[s] = pos
        nbytes[s] = cap_off[s + 1] - pos
    return out, begin, nbytes, bad


LUT_BITS = 8  # slot-to-symbol lookup: 256 buckets per table, then a short linear search


@numba.njit(cache=True, parallel=True)
def build_lut(cum, start, sizes, prob_bits):  # pragma: no cover - compiled
    """lut[t, b]: the symbol whose interval holds slot b << (prob_bits - LUT_BITS) in table t.

    Only speeds up the decoder's symbol search; the decoded symbols are the same without it.
    """
    n_tab = sizes.shape[0]
    shift = prob_bits - LUT_BITS
    lut = np.zeros((n_tab, 1 << LUT_BITS), dtype=np.uint8)
    for t in prange(n_tab):
        tb = start[t]
        sym = 0
        for b in range(1 << LUT_BITS):
            slot = b << shift
            while cum[tb + sym + 1] <= slot:
                sym += 1
            lut[t, b] = sym
    return lut


@numba.njit(cache=True, parallel=True)
def decode_streams(
    data,  # uint8 [total] all streams back to back
    offsets,  # int64 [n_streams + 1] byte offset of each stream (checked by the caller)
    sym_off,  # int64 [n_streams] where the stream's symbols go in `out`
    n_sym,
    row_len,
    first_row,
    group,
    tab_reg,
    tab_anc,
    cum,
    start,
    sizes,
    prob_bits,
    lanes,
    lut,  # uint8 [n_tables, 2**LUT_BITS] from build_lut
    out,  # uint8 [total symbols] decoded symbols
    status,  # int64 [n_streams] OK or an error code
):  # pragma: no cover - compiled
    mask = (1 << prob_bits) - 1
    lshift = prob_bits - LUT_BITS
    n_streams = n_sym.shape[0]
    for s in prange(n_streams):
        begin = offsets[s]
        end = offsets[s + 1]
        if end - begin < 4 * lanes:
            status[s] = ERR_TRUNCATED
            continue
        state = np.empty(lanes, dtype=np.int64)
        err = OK
        for lane in range(lanes):
            p = begin + 4 * lane
            x = (
                np.int64(data[p])
                | (np.int64(data[p + 1]) << 8)
                | (np.int64(data[p + 2]) << 16)
                | (np.int64(data[p + 3]) << 24)
            )
            if x < RANS_L or x >= (RANS_L << 8):
                err = ERR_BAD_STATE
            state[lane] = x
        if err != OK:
            status[s] = err
            continue
        pos = begin + 4 * lanes
        obase = sym_off[s]
        n_rows = n_sym[s] // row_len
        lane = 0
        i = obase
        for r in range(n_rows):
            row = first_row[s] + r
            tbase = tab_anc[s] if (group[s] > 0 and row % group[s] == 0) else tab_reg[s]
            for col in range(row_len):
                t = tbase + col
                x = state[lane]
                slot = x & mask
                tb = start[t]
                lo = np.int64(lut[t, slot >> lshift])  # then find cum[tb+lo] <= slot < cum[tb+lo+1]
                while cum[tb + lo + 1] <= slot:
                    lo += 1
                c = cum[tb + lo]
                f = cum[tb + lo + 1] - c
                x = f * (x >> prob_bits) + slot - c
                while x < RANS_L:
                    if pos >= end:
                        err = ERR_TRUNCATED
                        break
                    x = (x << 8) | np.int64(data[pos])
                    pos += 1
                if err != OK:
                    break
                state[lane] = x
                out[i] = lo
                i += 1
                lane += 1
                if lane == lanes:
                    lane = 0
            if err != OK:
                break
        if err == OK and pos != end:
            err = ERR_TRAILING
        if err == OK:
            for lane in range(lanes):
                if state[lane] != RANS_L:
                    err = ERR_FINAL_STATE
        status[s] = err


@numba.njit(cache=True, parallel=True)
def ideal_bits(
    symbols, sym_off, n_sym, row_len, first_row, group, tab_reg, tab_anc, cum, start, prob_bits
):  # pragma: no cover - compiled
    """Ideal code length (bits) of all streams' symbols under the integer model the coder uses."""
    n_streams = n_sym.shape[0]
    acc = np.zeros(n_streams, dtype=np.float64)
    for s in prange(n_streams):
        tot = 0.0
        base = sym_off[s]
        for i in range(n_sym[s]):
            t = _table(i, row_len, first_row[s], group[s], tab_reg[s], tab_anc[s])
            o = start[t] + np.int64(symbols[base + i])
            tot += prob_bits - np.log2(cum[o + 1] - cum[o])
        acc[s] = tot
    return acc.sum()
