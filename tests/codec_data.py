"""Small KV tensors for codec tests: synthetic Laplace-like data with real-KV structure."""

from __future__ import annotations

import numpy as np


def synthetic_kv(
    n_layers: int = 4, n_tokens: int = 37, n_heads: int = 2, head_dim: int = 8, seed: int = 0
) -> np.ndarray:
    """float32 [L, 2, T, H, D]: per-channel offsets and scales, token-to-token correlation,
    a few outlier channels (like real K), so every code path sees realistic statistics."""
    rng = np.random.default_rng(seed)
    c = n_heads * head_dim
    offset = rng.normal(0, 2, size=(n_layers, 2, 1, c))
    scale = rng.uniform(0.3, 1.5, size=(n_layers, 2, 1, c))
    scale[:, 0, :, : max(1, c // 8)] *= 6  # outlier K channels
    noise = rng.laplace(0, 1, size=(n_layers, 2, n_tokens, c))
    # AR(1) along tokens
    for t in range(1, n_tokens):
        noise[:, :, t] = 0.6 * noise[:, :, t - 1] + 0.8 * noise[:, :, t]
    x = offset + scale * noise
    return x.reshape(n_layers, 2, n_tokens, n_heads, head_dim).astype(np.float32)
