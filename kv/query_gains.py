"""Key gains: how much each key channel matters to attention, measured from the model's queries.

An error e in channel d of a cached key moves the attention logit of a query q by q_d * e /
sqrt(D), so over many queries it costs in proportion to E[q_d^2]. Levels with `k_gain: query`
multiply key channel d by g_d = sqrt(E[q_d^2]) before quantizing and divide after decoding, so
the quantization error lands where queries do not look (docs/format.md, "Key gains").

E[q_d^2] is taken over the queries the sender's prefill computed for the context (all tokens,
all query heads sharing the KV head). RoPE rotates the channel pairs (d, d') of a head by a
position-dependent angle, so the energy of a pair is shared between its two channels: both get
the pair's mean. Gains are normalised to mean 1 per layer and floored at `FLOOR` (a channel no
query reads still gets a finite weight).
"""

from __future__ import annotations

import numpy as np
import torch

from kvcast.errors import InputError

FLOOR = 1e-3  # smallest gain, relative to the layer's mean gain of 1
ROPE_PAIRS = ("half", "interleaved")  # (d, d + D/2) as transformers' rotate_half; (2j, 2j + 1)


class QueryEnergy:
    """Running sums of squared queries per (layer, query head, channel) over prefilled tokens."""

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, rope_pairs: str) -> None:
        if rope_pairs not in ROPE_PAIRS:
            raise InputError(f"rope_pairs must be one of {ROPE_PAIRS}, got {rope_pairs!r}")
        self.sum_sq = torch.zeros(n_layers, n_heads, head_dim, dtype=torch.float64)
        self.tokens = torch.zeros(n_layers, dtype=torch.int64)
        self.rope_pairs = rope_pairs

    def add(self, layer: int, q: torch.Tensor) -> None:
        """Queries of one layer, [T, n_heads * head_dim] or [T, n_heads, head_dim]."""
        q = q.detach().reshape(-1, *self.sum_sq.shape[1:]).to(torch.float64)
        self.sum_sq[layer] += q.pow(2).sum(0)
        self.tokens[layer] += q.shape[0]

    @property
    def complete(self) -> bool:
        """Whether every layer saw queries (a model without query hooks records none)."""
        return bool((self.tokens > 0).all())

    def key_gains(self, n_kv_heads: int) -> np.ndarray:
        """float32 [L, n_kv_heads * head_dim]: g per key channel (see the module docstring)."""
        if (self.tokens == 0).any():
            raise InputError("no queries were recorded for some layers: prefill something first")
        n_layers, n_heads, head_dim = self.sum_sq.shape
        if n_heads % n_kv_heads:
            raise InputError(f"{n_heads} query heads do not group into {n_kv_heads} KV heads")
        mean_sq = self.sum_sq / self.tokens[:, None, None]
        energy = mean_sq.reshape(n_layers, n_kv_heads, n_heads // n_kv_heads, head_dim).mean(2)
        energy = _pair_mean(energy, self.rope_pairs)
        g = energy.sqrt().reshape(n_layers, n_kv_heads * head_dim)
        g = g / g.mean(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        return g.clamp_min(FLOOR).to(torch.float32).numpy()


def _pair_mean(energy: torch.Tensor, rope_pairs: str) -> torch.Tensor:
    """Both channels of each RoPE pair get the pair's mean energy ([..., head_dim])."""
    d = energy.shape[-1]
    if d % 2:
        raise InputError(f"head_dim {d} is odd: RoPE needs channel pairs")
    if rope_pairs == "half":
        m = (energy[..., : d // 2] + energy[..., d // 2 :]) / 2
        return torch.cat([m, m], dim=-1)
    m = (energy[..., 0::2] + energy[..., 1::2]) / 2
    return m.repeat_interleave(2, dim=-1)
