"""A KV cache in kvcast's one layout, with the model facts needed to interpret it.

Every source (a real model's prefill, a llama2.c checkpoint, a safetensors file, the synthetic
generator) returns a `KVCache`; the codec, the quality work and the profiler consume it. The
layout is fixed so those never have to know where a cache came from:
``kv[layer, 0 = K | 1 = V, token, kv_head, head_dim]``, keys after RoPE (what the model caches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kvcast.errors import InputError
from kvcast.key_gains import check_key_gains

SOURCES = ("transformers", "llama2c", "gguf", "safetensors", "synthetic")


@dataclass
class KVMeta:
    """Where a cache came from and how to read its axes."""

    model_id: str  # e.g. "SmolLM2-135M-Instruct", "stories260K", "synthetic:Llama-3.1-70B"
    source: str  # "transformers" | "llama2c" | "gguf" | "safetensors" | "synthetic"
    dtype: str  # torch dtype name of the stored tensor, e.g. "float32"
    n_layers: int
    n_kv_heads: int
    head_dim: int
    token_ids: list[int]  # empty for synthetic caches
    synthetic: bool  # True for anything generated; printed wherever it appears
    extra: dict[str, str] = field(default_factory=dict)  # context name, text source, ...

    def label(self) -> str:
        """The model id, marked SYNTHETIC where it is; use this wherever a cache is named."""
        return f"{self.model_id} [SYNTHETIC]" if self.synthetic else self.model_id


@dataclass
class KVCache:
    """One tensor ``[layers, 2 (K, V), tokens, kv_heads, head_dim]`` plus its `KVMeta`."""

    kv: torch.Tensor
    meta: KVMeta
    # float32 [L, kv_heads * head_dim]: the key gains of `k_gain: query` levels, recorded from
    # the model's queries when it prefilled the context (kvcast.kv.query_gains); None for
    # caches whose queries were not seen (synthetic, or an architecture without query hooks)
    key_gains: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_layout(self.kv, self.meta, what=self.meta.label())
        if self.key_gains is not None:
            m = self.meta
            self.key_gains = check_key_gains(
                self.key_gains, m.n_layers, m.n_kv_heads * m.head_dim, what=m.label()
            )

    @property
    def n_tokens(self) -> int:
        return int(self.kv.shape[2])

    @property
    def elements_per_token(self) -> int:
        """KV elements one token adds to the cache (both K and V, all layers and heads)."""
        m = self.meta
        return m.n_layers * 2 * m.n_kv_heads * m.head_dim

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def slice_tokens(self, start: int, stop: int) -> KVCache:
        """Tokens ``start:stop`` as a new cache (a chunk); token ids follow along."""
        if not 0 <= start < stop <= self.n_tokens:
            raise InputError(
                f"{self.meta.label()}: token range {start}:{stop} is outside 0:{self.n_tokens}"
            )
        ids = self.meta.token_ids[start:stop] if self.meta.token_ids else []
        meta = KVMeta(**{**self.meta.__dict__, "token_ids": ids, "extra": dict(self.meta.extra)})
        return KVCache(
            kv=self.kv[:, :, start:stop].contiguous(), meta=meta, key_gains=self.key_gains
        )

    def to_dtype(self, dtype: torch.dtype) -> KVCache:
        meta = KVMeta(**{**self.meta.__dict__, "dtype": dtype_name(dtype)})
        return KVCache(kv=self.kv.to(dtype), meta=meta, key_gains=self.key_gains)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"`` (the name stored in `KVMeta.dtype`)."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str, *, what: str = "dtype") -> torch.dtype:
    """The floating torch dtype called `name` ("float16", "bfloat16", "float32")."""
    allowed = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if name not in allowed:
        raise InputError(f"{what}: unknown dtype {name!r}; expected one of {', '.join(allowed)}")
    return allowed[name]


def check_layout(kv: torch.Tensor, meta: KVMeta, *, what: str) -> None:
    """Raise `InputError` (naming `what`) unless `kv` has the layout `meta` describes."""
    if meta.source not in SOURCES:
        raise InputError(f"{what}: unknown source {meta.source!r}; expected one of {SOURCES}")
    if kv.dim() != 5 or kv.shape[1] != 2:
        raise InputError(
            f"{what}: KV tensor has shape {tuple(kv.shape)}; "
            "expected [layers, 2, tokens, kv_heads, head_dim]"
        )
    expected = (meta.n_layers, 2, kv.shape[2], meta.n_kv_heads, meta.head_dim)
    if tuple(kv.shape) != expected:
        raise InputError(
            f"{what}: KV tensor shape {tuple(kv.shape)} does not match its metadata {expected}"
        )
    if dtype_name(kv.dtype) != meta.dtype:
        raise InputError(f"{what}: tensor dtype {kv.dtype} does not match metadata {meta.dtype}")
    if meta.token_ids and len(meta.token_ids) != kv.shape[2]:
        raise InputError(f"{what}: {len(meta.token_ids)} token ids for {kv.shape[2]} cached tokens")
    if meta.synthetic and meta.token_ids:
        raise InputError(f"{what}: a synthetic cache has no token ids")


def summary(cache: KVCache) -> list[str]:
    """Human-readable lines describing a cache: shape, size, per-layer statistics, locality.

    "Neighbour-token correlation" is the lag-1 correlation over tokens of each (layer, head,
    channel), averaged; with the ratio of the std of neighbour differences to the std of the
    values (below sqrt(2) = 1.41 means neighbours are alike) it measures the token locality
    CacheGen's delta coding relies on.
    """
    m = cache.meta
    kv = cache.kv.float()
    lines = [
        f"model:        {m.label()}",
        f"source:       {m.source}"
        + ("  (SYNTHETIC: generated, not a model's activations)" if m.synthetic else ""),
        f"shape:        {list(cache.kv.shape)}  [layers, K/V, tokens, kv_heads, head_dim]",
        f"dtype:        {m.dtype}",
        f"tokens:       {cache.n_tokens}",
        f"size:         {cache.nbytes:,} B ({cache.nbytes / cache.n_tokens:,.0f} B/token; "
        f"{cache.elements_per_token * 2:,} B/token in fp16)",
    ]
    if m.token_ids:
        head = ", ".join(str(t) for t in m.token_ids[:8])
        lines.append(f"token ids:    [{head}{', ...' if len(m.token_ids) > 8 else ''}]")
    if cache.key_gains is None:
        lines.append("key gains:    none (k_gain: query levels cannot encode this cache)")
    else:
        g = cache.key_gains
        mean = g.mean(1)
        lines.append(
            f"key gains:    {list(g.shape)} [layers, kv_heads * head_dim], "
            f"{float(g.min()):.3g} .. {float(g.max()):.3g}, layer means "
            f"{float(mean.min()):.3g} .. {float(mean.max()):.3g}"
        )
    for key in sorted(m.extra):
        lines.append(f"{key + ':':<14}{m.extra[key]}")
    for idx, name in ((0, "K"), (1, "V")):
        x = kv[:, idx]  # [L, T, H, D]
        std = x.std(dim=(1, 2, 3), correction=0)
        amax = x.abs().amax(dim=(1, 2, 3))
        lines.append(
            f"{name} std/layer:  {std.min():.3g} .. {std.max():.3g}   "
            f"absmax/layer: {amax.min():.3g} .. {amax.max():.3g}   mean: {x.mean():.3g}"
        )
        if cache.n_tokens > 3:
            y = x[:, 1:]  # skip token 0 (the attention sink)
            c = y - y.mean(dim=1, keepdim=True)
            var = c.pow(2).mean(dim=1)
            rho = (c[:, 1:] * c[:, :-1]).mean(dim=1) / var.clamp_min(1e-12)
            ratio = (y[:, 1:] - y[:, :-1]).std(correction=0) / y.std(correction=0).clamp_min(1e-12)
            lines.append(
                f"{name} neighbour-token correlation: {float(rho[var > 0].mean()):.3f} "
                f"(mean over channels; delta std / value std {float(ratio):.3f})"
            )
    return lines
