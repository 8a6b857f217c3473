"""Per-model KLT bases: quantize K and V in coordinates where their channels are uncorrelated.

Why: a layer's 192 (H * D) K or V channels are strongly correlated, so after a rotation into
their principal axes (the Karhunen-Loeve transform) most of the energy sits in a few
coordinates and the many small ones quantize to almost nothing: on SmolLM2 the same
reconstruction error costs 0.3-0.5 bits/element less (docs/quality.md, "KLT levels"). Keys are
rotated in the query-weighted space (each channel times the model's mean query gain), so the
rotation keeps the attention-logit error small, not the raw key error.

The bases are a property of the model, fitted once on real caches and stored in the model
profile (`kvcast.codec.model_tables`), whose id every chunk coded with them carries.

Decoding is exact integer arithmetic up to one rounding, so every device gives the same bits:
the inverse transform is stored as integers `dec` (int16) with a float32 scale per output
channel; the decoder computes acc = (sym - MAX) @ dec, where every product and partial sum is
an integer, then x = (float32(acc) * step) * dec_scale in float32. `fit_klt` bounds |dec| by
(2**24 - 1) // (127 * C) (at most 32767), so |acc| <= 127 * max|dec| * C < 2**24 and a float32
matmul (BLAS, cuBLAS, even TF32) is exact in any summation order; a profile with larger
entries is decoded in float64 (exact below 2**53).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kvcast.errors import InputError

DEC_MAX = 32767  # int16 range of the stored inverse
MAX_CHANNELS = 1 << 20  # keeps |acc| <= 127 * 32767 * C below 2**53 (the float64 path)
SYM_MAX = 127  # |sym - MAX| <= MAX <= 127 (bins <= 256)
FLOAT32_EXACT = 1 << 24  # integers below this are exact in float32


def dec_limit(channels: int) -> int:
    """Largest |dec| for which the float32 inverse of a C-channel layer is exact."""
    return max(1, min(DEC_MAX, (FLOAT32_EXACT - 1) // (SYM_MAX * channels)))


@dataclass(frozen=True)
class Transforms:
    """KLT bases of one model: the encoder's rotation and the decoder's exact inverse."""

    enc: np.ndarray  # float32 [L, 2, C, C]: y = x @ enc[l, kv]
    dec: np.ndarray  # int16 [L, 2, C, C]: x = (float32(y @ dec) * step) * dec_scale
    dec_scale: np.ndarray  # float32 [L, 2, C], > 0
    key_gains: bool  # whether K was rotated in the query-weighted space

    @property
    def float32_exact(self) -> bool:
        """Whether (sym - MAX) @ dec stays below 2**24, so float32 computes it exactly."""
        return int(np.abs(self.dec).max(initial=0)) * SYM_MAX * self.shape[1] < FLOAT32_EXACT

    @property
    def shape(self) -> tuple[int, int]:
        """(n_layers, channels)."""
        return self.enc.shape[0], self.enc.shape[2]

    def check(self) -> None:
        """InputError unless the arrays have the shapes, types and ranges decoding relies on."""
        n_layers, c = self.shape
        ok = (
            self.enc.shape == (n_layers, 2, c, c)
            and self.dec.shape == (n_layers, 2, c, c)
            and self.dec_scale.shape == (n_layers, 2, c)
            and self.enc.dtype == np.float32
            and self.dec.dtype == np.int16
            and self.dec_scale.dtype == np.float32
            and c <= MAX_CHANNELS
        )
        if not ok:
            raise InputError(
                "transforms: expected enc float32 [L, 2, C, C], dec int16 [L, 2, C, C] and "
                f"dec_scale float32 [L, 2, C]; got {self.enc.dtype}{list(self.enc.shape)}, "
                f"{self.dec.dtype}{list(self.dec.shape)}, {self.dec_scale.dtype}{list(self.dec_scale.shape)}"
            )
        if not (np.isfinite(self.enc).all() and np.isfinite(self.dec_scale).all()):
            raise InputError("transforms: NaN or infinite value in enc or dec_scale")
        if (self.dec_scale <= 0).any() or (self.dec == -32768).any():
            raise InputError("transforms: dec_scale must be > 0 and dec within -32767..32767")

    def encode(self, x: np.ndarray) -> np.ndarray:
        """x float32 [L, 2, T, C] -> coordinates y [L, 2, T, C] (the encoder's side; any rounding)."""
        return np.matmul(x, self.enc).astype(np.float32, copy=False)


def _sign_fixed(u: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns) with their largest-magnitude entry positive: a reproducible basis."""
    idx = np.abs(u).argmax(axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1
    return u * signs


def fit_klt(
    caches: list[np.ndarray], key_gains: list[np.ndarray | None], *, skip_tokens: int = 1
) -> Transforms:
    """Fit KLT bases from real caches, each [L, 2, T, H, D] (the project's KV layout).

    `key_gains[i]` is cache i's `KVCache.key_gains` (float32 [L, C]) or None; keys are rotated in
    the space weighted by their mean when every cache has them. The first `skip_tokens` tokens
    of each cache (the attention sink, an outlier the levels send exactly) are left out of the
    second moments.
    """
    if not caches:
        raise InputError("fit_klt: no KV caches given")
    if caches[0].ndim != 5:
        raise InputError(f"fit_klt: expected KV [L, 2, T, H, D], got {list(caches[0].shape)}")
    n_layers, _, _, n_heads, head_dim = caches[0].shape
    c = n_heads * head_dim
    have = [g is not None for g in key_gains]
    weighted = all(have) and len(key_gains) == len(caches)
    gains = np.ones((n_layers, c))
    if weighted:
        gains = np.mean([np.asarray(g, dtype=np.float64) for g in key_gains], axis=0)
        if gains.shape != (n_layers, c) or not (gains > 0).all():
            raise InputError(f"fit_klt: key gains must be positive [L, C] = [{n_layers}, {c}]")
    moments = np.zeros((n_layers, 2, c, c))
    for i, kv in enumerate(caches):
        if kv.ndim != 5 or kv.shape[:2] != (n_layers, 2) or kv.shape[3:] != (n_heads, head_dim):
            raise InputError(
                f"fit_klt: cache {i} has shape {list(kv.shape)}, expected "
                f"[{n_layers}, 2, T, {n_heads}, {head_dim}]"
            )
        x = np.asarray(kv[:, :, skip_tokens:], dtype=np.float64).reshape(n_layers, 2, -1, c)
        x[:, 0] *= gains[:, None, :]
        # einsum's plain loop sums in a fixed order: the same moments whatever the thread
        # count (a BLAS matmul may not), so a profile's figures can be reproduced
        moments += np.einsum("lktc,lktd->lkcd", x, x)
    enc = np.zeros((n_layers, 2, c, c), dtype=np.float32)
    dec = np.zeros((n_layers, 2, c, c), dtype=np.int16)
    dec_scale = np.zeros((n_layers, 2, c), dtype=np.float32)
    for layer in range(n_layers):
        for kv in range(2):
            _, u = np.linalg.eigh(moments[layer, kv])
            u = _sign_fixed(u[:, ::-1])  # strongest axis first
            g = gains[layer] if kv == 0 else np.ones(c)
            enc[layer, kv] = (g[:, None] * u).astype(np.float32)
            inverse = u.T / g[None, :]  # x = y @ inverse
            limit = dec_limit(c)
            scale = np.abs(inverse).max(axis=0) / limit
            scale[scale == 0] = 1.0
            dec_scale[layer, kv] = scale.astype(np.float32)
            dec[layer, kv] = np.rint(inverse / dec_scale[layer, kv].astype(np.float64)).clip(
                -limit, limit
            )
    out = Transforms(enc, dec, dec_scale, weighted)
    out.check()
    return out


def dequantize_transformed(
    sym: torch.Tensor, scales: torch.Tensor, bins: np.ndarray, tr: Transforms
) -> torch.Tensor:
    """Symbols [L, 2, T, C] (uint8, any device) + float16 scales [L, 2, T] -> float32 [L, 2, T, C].

    Runs on the symbols' device, bit-identical everywhere (see the module docstring).
    """
    maxv = np.asarray(bins, dtype=np.int64) // 2 - 1  # [L, 2]
    step = (
        scales.to(device=sym.device, dtype=torch.float32)
        / torch.from_numpy(maxv.astype(np.float32)).to(sym.device)[..., None]
    )
    return inverse_transform(sym, step, maxv, tr)


def inverse_transform(
    sym: torch.Tensor, step: torch.Tensor, maxv: np.ndarray, tr: Transforms
) -> torch.Tensor:
    """x = (float32((sym - MAX) @ dec) * step) * dec_scale for every (layer, K/V), on sym's
    device (float32 where exact, else float64; see the module docstring).

    `step` float32 [L, 2, T] (= float32(scale) / MAX), `maxv` int [L, 2]. One matmul per
    (layer, K/V): on a CPU core that is faster than one batched call and needs no [L, 2, T, C]
    temporaries.
    """
    device = sym.device
    dt = torch.float32 if tr.float32_exact else torch.float64
    dec = torch.from_numpy(tr.dec).to(device=device, dtype=dt)
    dec_scale = torch.from_numpy(tr.dec_scale).to(device)
    n_layers, _, n_tokens, c = sym.shape
    out = torch.empty((n_layers, 2, n_tokens, c), dtype=torch.float32, device=device)
    for layer in range(n_layers):
        for kv in range(2):
            y = sym[layer, kv].to(dt) - float(maxv[layer][kv])
            acc = y @ dec[layer, kv]  # exact: integers below 2**24 (float32) or 2**53
            out[layer, kv] = (acc.to(torch.float32) * step[layer, kv, :, None]) * dec_scale[
                layer, kv
            ]
    return out
