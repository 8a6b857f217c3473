"""Probability-table layout of a level: one table per (layer, K/V, row kind, channel).

Row kind 0 = regular tokens (deltas when anchor/delta is on), kind 1 = anchor tokens (only
with anchor/delta). Tables are laid end to end in the order (layer, K/V, kind, channel);
table j has `sizes[j]` = bins - 1 symbols. The same layout indexes the counts of a model
profile and the tables carried inside a chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard

from kvcast.codec import entropy
from kvcast.codec.container import CorruptChunk
from kvcast.codec.quantize import anchor_rows


@dataclass(frozen=True)
class TableLayout:
    """Tables of one level for one model shape; groups[kv] > 0 means anchor rows for K or V."""

    bins: np.ndarray  # int64 [L, 2]
    channels: int
    groups: tuple[int, int]  # anchor group size for K and for V; 0: no anchor/delta
    anchor_bins: int

    def kinds(self, kv: int) -> int:
        return 2 if self.groups[kv] > 0 else 1

    def _bases(self) -> np.ndarray:
        per = np.array([self.kinds(0), self.kinds(1)], dtype=np.int64)
        n = np.tile(per, self.bins.shape[0]) * self.channels  # tables per (l, kv), (l, kv) order
        base = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(n, out=base[1:])
        return base

    def first_table(self, layer: int, kv: int, kind: int) -> int:
        return int(self._bases()[layer * 2 + kv]) + kind * self.channels

    def table_bases(self) -> tuple[np.ndarray, np.ndarray]:
        """(regular, anchor) first-table index per (layer, kv), flattened in (l, kv) order."""
        base = self._bases()[:-1]
        anc = base.copy()
        for kv in range(2):
            if self.groups[kv] > 0:
                anc[kv::2] += self.channels
        return base, anc

    def sizes(self) -> np.ndarray:
        """Alphabet size of every table, int64 [n_tables]."""
        out = []
        for layer in range(self.bins.shape[0]):
            for kv in range(2):
                out.append(np.full(self.channels, self.bins[layer, kv] - 1, dtype=np.int64))
                if self.groups[kv] > 0:
                    out.append(np.full(self.channels, self.anchor_bins - 1, dtype=np.int64))
        return np.concatenate(out)

    @property
    def n_tables(self) -> int:
        return int(self._bases()[-1])


def count_symbols(sym: np.ndarray, layout: TableLayout) -> np.ndarray:
    """Histogram of symbols [L, 2, T, C] per table, laid end to end (int64)."""
    n_layers, _, n_tokens, n_ch = sym.shape
    sizes = layout.sizes()
    offs = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offs[1:])
    counts = np.zeros(int(offs[-1]), dtype=np.int64)
    chan = np.arange(n_ch, dtype=np.int64)
    for kv in range(2):
        anchors = anchor_rows(n_tokens, layout.groups[kv])
        for layer in range(n_layers):
            for kind, rows in ((0, ~anchors), (1, anchors)):
                if kind == 1 and layout.groups[kv] == 0:
                    continue
                block = sym[layer, kv, rows]
                if block.size == 0:
                    continue
                t0 = layout.first_table(layer, kv, kind)
                n = int(sizes[t0])
                idx = chan[None, :] * n + block.astype(np.int64)
                counts[offs[t0] : offs[t0] + n_ch * n] += np.bincount(
                    idx.reshape(-1), minlength=n_ch * n
                )
    return counts


def freqs_from_counts(counts: np.ndarray, sizes: np.ndarray, prob_bits: int) -> np.ndarray:
    """Quantized frequencies of every table (flat, same layout as counts)."""
    out = np.empty_like(counts)
    offs = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offs[1:])
    # tables come in runs of equal size: quantize each run as a batch
    i = 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        n = int(sizes[i])
        rows = counts[offs[i] : offs[j]].reshape(j - i, n)
        out[offs[i] : offs[j]] = entropy.quantize_counts(rows, prob_bits).reshape(-1)
        i = j
    return out


def pack_chunk_tables(freqs: np.ndarray) -> bytes:
    """Tables carried in a chunk: (freq - 1) as uint16 little-endian, zstd-compressed."""
    raw = (freqs - 1).astype("<u2").tobytes()
    return zstandard.ZstdCompressor(level=19).compress(raw)


def unpack_chunk_tables(blob: bytes | memoryview, sizes: np.ndarray, prob_bits: int) -> np.ndarray:
    """Inverse of pack_chunk_tables, checking sizes and that every table sums to 2**prob_bits."""
    expected = int(sizes.sum()) * 2
    try:
        dctx = zstandard.ZstdDecompressor()
        params = zstandard.get_frame_parameters(bytes(blob[:18]))
        if params.content_size != expected:
            raise CorruptChunk(
                f"tables section: declares {params.content_size} bytes, expected {expected}"
            )
        raw = dctx.decompress(bytes(blob), max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise CorruptChunk(f"tables section: not a valid zstd frame ({exc})") from exc
    if len(raw) != expected:
        raise CorruptChunk(f"tables section: {len(raw)} bytes of tables, expected {expected}")
    freqs = np.frombuffer(raw, dtype="<u2").astype(np.int64) + 1
    offs = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offs[1:])
    sums = np.add.reduceat(freqs, offs[:-1]) if len(sizes) else np.zeros(0, dtype=np.int64)
    if (sums != (1 << prob_bits)).any():
        bad = int(np.flatnonzero(sums != (1 << prob_bits))[0])
        raise CorruptChunk(
            f"tables section: table {bad} sums to {int(sums[bad])}, expected {1 << prob_bits}"
        )
    return freqs
