"""CacheGen's quantization with the paper's anchor/delta option (docs/format.md, "Quantization").

- One scale per (layer, K/V, token): s = absmax over the token's C = H * D channels, stored as
  float16 rounded *up* so |x| <= s holds after rounding.
- `bins` per (layer, K/V): MAX = bins // 2 - 1, symbol = round(x / step) + MAX with
  step = float32(s) / MAX, symbols 0 .. 2 * MAX (the released code's rule).
- Anchor/delta (paper): tokens in groups of `group`; the first token of each group (the anchor)
  is quantized with `anchor_bins`, every other token as the delta against the *reconstructed*
  anchor, so errors do not build up and every delta decodes independently.

Dequantization is the same float32 arithmetic on every device (one multiply, then one add for
deltas), so CPU and GPU decoders give bit-identical tensors.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from kvcast.errors import InputError


def max_level(bins: np.ndarray | int) -> np.ndarray:
    """MAX = bins // 2 - 1: symbols run 0 .. 2 * MAX, centre MAX."""
    return np.asarray(bins, dtype=np.int64) // 2 - 1


def fp16_scale_up(s: np.ndarray) -> np.ndarray:
    """Round non-negative float32 scales up to the next float16 (never below s)."""
    h = s.astype(np.float16)
    low = h.astype(np.float32) < s
    if low.any():
        h[low] = np.nextafter(h[low], np.float16(np.inf))
    if not np.isfinite(h).all():
        raise InputError("KV values exceed the float16 range (|x| > 65504); cannot store scales")
    return h


def anchor_rows(n_tokens: int, group: int) -> np.ndarray:
    """Boolean [T]: True for anchor tokens (t % group == 0); all False when group is 0."""
    rows = np.zeros(n_tokens, dtype=bool)
    if group > 0:
        rows[::group] = True
    return rows


@numba.njit(cache=True, parallel=True)
def _absmax_rows(x):  # pragma: no cover - compiled; x float32 [R, C] -> [R]
    out = np.empty(x.shape[0], dtype=np.float32)
    for r in prange(x.shape[0]):
        m = np.float32(0)
        for c in range(x.shape[1]):
            v = abs(x[r, c])
            if v > m:
                m = v
        out[r] = m
    return out


@numba.njit(cache=True, parallel=True)
def _symbols_rows(x, step, maxv, out):  # pragma: no cover - compiled
    """out[r, c] = clip(rint(x / step), -MAX, MAX) + MAX; rows with step 0 get MAX."""
    for r in prange(x.shape[0]):
        st = step[r]
        m = maxv[r]
        if st > 0:
            for c in range(x.shape[1]):
                q = np.int64(np.rint(x[r, c] / st))
                if q > m:
                    q = m
                elif q < -m:
                    q = -m
                out[r, c] = q + m
        else:
            for c in range(x.shape[1]):
                out[r, c] = m


@numba.njit(cache=True, parallel=True)
def _dequant_rows(sym, maxv, step, out):  # pragma: no cover - compiled
    """out[r, c] = (float32(sym) - MAX) * step, in float32 like the torch path."""
    for r in prange(sym.shape[0]):
        m = maxv[r]
        st = step[r]
        for c in range(sym.shape[1]):
            out[r, c] = (np.float32(sym[r, c]) - m) * st


def _quantize_rows(x: np.ndarray, maxv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize rows of x [..., C] with per-row MAX (shape [...]); (sym, scale16, step)."""
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    s16 = fp16_scale_up(_absmax_rows(x2)).reshape(lead)
    step = s16.astype(np.float32) / maxv.astype(np.float32)
    sym = np.empty(x2.shape, dtype=np.uint8)
    _symbols_rows(x2, step.reshape(-1), maxv.reshape(-1).astype(np.int64), sym)
    return sym.reshape(x.shape), s16, step


def quantize(
    x: np.ndarray, bins: np.ndarray, *, groups: tuple[int, int] = (0, 0), anchor_bins: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """x [L, 2, T, C] float32 -> (symbols uint8 [L, 2, T, C], scales float16 [L, 2, T]).

    `bins` is int [L, 2]; groups[kv] is the anchor group size for K / V, 0 = no anchor/delta
    (the released behaviour).
    """
    if max_level(bins).min() < 1 or (any(g > 0 for g in groups) and max_level(anchor_bins) < 1):
        raise InputError(
            f"bins {np.unique(bins).tolist()} / anchor_bins {anchor_bins}: every bins value must "
            "be at least 4 (MAX = bins // 2 - 1 >= 1; bins 3 would quantize with a step of s / 0)"
        )
    sym = np.empty(x.shape, dtype=np.uint8)
    s16 = np.empty(x.shape[:3], dtype=np.float16)
    for kv in range(2):
        sym[:, kv], s16[:, kv] = _quantize_kv(x[:, kv], bins[:, kv], groups[kv], anchor_bins)
    return sym, s16


def _quantize_kv(
    x: np.ndarray, bins: np.ndarray, group: int, anchor_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """One of K or V: x [L, T, C], bins [L]."""
    n_layers, n_tokens, _ = x.shape
    maxv = np.broadcast_to(max_level(bins)[:, None], (n_layers, n_tokens)).copy()
    if group <= 0:
        sym, s16, _ = _quantize_rows(x, maxv)
        return sym, s16
    anchors = anchor_rows(n_tokens, group)
    maxv[:, anchors] = max_level(anchor_bins)
    sym = np.empty(x.shape, dtype=np.uint8)
    s16 = np.empty(x.shape[:2], dtype=np.float16)
    a_sym, a_s16, a_step = _quantize_rows(x[:, anchors], maxv[:, anchors])
    sym[:, anchors] = a_sym
    s16[:, anchors] = a_s16
    # reconstructed anchors, exactly as the decoder computes them
    a_hat = (a_sym.astype(np.float32) - maxv[:, anchors][..., None].astype(np.float32)) * a_step[
        ..., None
    ]
    owner = np.arange(n_tokens) // group  # index of each token's anchor among the anchors
    rest = ~anchors
    d = x[:, rest] - a_hat[:, owner[rest]]
    d_sym, d_s16, _ = _quantize_rows(d, maxv[:, rest])
    sym[:, rest] = d_sym
    s16[:, rest] = d_s16
    return sym, s16


def row_centres(
    bins: np.ndarray, n_tokens: int, groups: tuple[int, int], anchor_bins: int
) -> np.ndarray:
    """MAX of every (layer, K/V, token) row, int64 [L, 2, T]."""
    maxv = np.broadcast_to(max_level(bins)[:, :, None], (bins.shape[0], 2, n_tokens)).copy()
    for kv in range(2):
        if groups[kv] > 0:
            maxv[:, kv, anchor_rows(n_tokens, groups[kv])] = max_level(anchor_bins)
    return maxv


def dequantize(
    sym: torch.Tensor,
    scales: torch.Tensor,
    bins: np.ndarray,
    *,
    groups: tuple[int, int] = (0, 0),
    anchor_bins: int = 256,
    torch_path: bool = False,
    key_gains: torch.Tensor | None = None,
) -> torch.Tensor:
    """symbols [L, 2, T, C] (uint8, any device) + float16 scales [L, 2, T] -> float32 [L, 2, T, C].

    Runs on the symbols' device. x = (sym - MAX) * step with step = float32(s) / MAX, then
    deltas get their reconstructed anchor added; with `key_gains` (float16 [L, C], the chunk's
    r) every K value is then multiplied by float32(r) of its channel. Same operations on every device: on the CPU a
    fused numba pass, elsewhere (or with torch_path=True, used to test that both agree) torch.
    """
    device = sym.device
    n_tokens = sym.shape[2]
    maxv_np = row_centres(bins, n_tokens, groups, anchor_bins)
    if (
        device.type == "cpu" and not torch_path
    ):  # one fused pass (numba); same float32 operations as below
        step_np = scales.numpy().astype(np.float32) / maxv_np.astype(np.float32)
        out = np.empty(tuple(sym.shape), dtype=np.float32)
        c = sym.shape[-1]
        _dequant_rows(sym.numpy().reshape(-1, c), maxv_np.reshape(-1).astype(np.float32), step_np.reshape(-1),
                      out.reshape(-1, c))  # fmt: skip
        x = torch.from_numpy(out)
    else:
        maxv = torch.from_numpy(maxv_np.astype(np.float32)).to(device)
        step = scales.to(device=device, dtype=torch.float32) / maxv
        x = sym.to(torch.float32)
        x.sub_(maxv[..., None]).mul_(step[..., None])
    for kv, group in enumerate(groups):
        if group <= 0:
            continue
        xk = x[:, kv]
        full = (n_tokens // group) * group
        if full:
            g = xk[:, :full].unflatten(1, (full // group, group))  # view [L, ng, G, C]
            g[:, :, 1:] += g[:, :, :1]
        if full + 1 < n_tokens:  # a shorter last group
            xk[:, full + 1 :] += xk[:, full : full + 1]
    if key_gains is not None:
        x[:, 0].mul_(key_gains.to(device=device, dtype=torch.float32)[:, None, :])
    return x
