"""Key gains, the contract between a KV source and the codec: float32 [layers, kv_heads *
head_dim], one weight per key channel, finite and > 0 (kvcast.kv.query_gains measures them from
a model's queries; levels with `k_gain: query` in kvcast.codec use them)."""

from __future__ import annotations

import numpy as np

from kvcast.errors import InputError


def check_key_gains(gains: np.ndarray, n_layers: int, channels: int, *, what: str) -> np.ndarray:
    """float32 [L, C] gains, all finite and > 0, or an InputError naming `what`."""
    g = np.asarray(gains, dtype=np.float32)
    if g.shape != (n_layers, channels):
        raise InputError(f"{what}: key gains of shape {g.shape}, expected {(n_layers, channels)}")
    if not (np.isfinite(g).all() and (g > 0).all()):
        raise InputError(f"{what}: key gains must be finite and > 0")
    return g
