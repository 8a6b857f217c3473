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
    CacheGen's delta coding relies on. Computed token range by token range (`KVStats`), as
    `kvcast kv info` does on a file that does not fit in memory.
    """
    stats = KVStats(cache.meta)
    step = max(1, KVStats.BLOCK_ELEMENTS // max(1, cache.elements_per_token))
    for t0 in range(0, cache.n_tokens, step):
        stats.add(cache.kv[:, :, t0 : t0 + step])
    return summary_lines(
        cache.meta, cache.n_tokens, cache.kv.element_size(), cache.key_gains, stats
    )


def summary_lines(
    meta: KVMeta,
    n_tokens: int,
    element_size: int,
    key_gains: np.ndarray | None,
    stats: KVStats,
) -> list[str]:
    """`summary`'s lines from a cache's facts and its `KVStats` (fed every token in order)."""
    m = meta
    elements_per_token = m.n_layers * 2 * m.n_kv_heads * m.head_dim
    nbytes = n_tokens * elements_per_token * element_size
    shape = [m.n_layers, 2, n_tokens, m.n_kv_heads, m.head_dim]
    lines = [
        f"model:        {m.label()}",
        f"source:       {m.source}"
        + ("  (SYNTHETIC: generated, not a model's activations)" if m.synthetic else ""),
        f"shape:        {shape}  [layers, K/V, tokens, kv_heads, head_dim]",
        f"dtype:        {m.dtype}",
        f"tokens:       {n_tokens}",
        f"size:         {nbytes:,} B ({nbytes / n_tokens:,.0f} B/token; "
        f"{elements_per_token * 2:,} B/token in fp16)",
    ]
    if m.token_ids:
        head = ", ".join(str(t) for t in m.token_ids[:8])
        lines.append(f"token ids:    [{head}{', ...' if len(m.token_ids) > 8 else ''}]")
    if key_gains is None:
        lines.append("key gains:    none (k_gain: query levels cannot encode this cache)")
    else:
        g = key_gains
        mean = g.mean(1)
        lines.append(
            f"key gains:    {list(g.shape)} [layers, kv_heads * head_dim], "
            f"{float(g.min()):.3g} .. {float(g.max()):.3g}, layer means "
            f"{float(mean.min()):.3g} .. {float(mean.max()):.3g}"
        )
    for key in sorted(m.extra):
        lines.append(f"{key + ':':<14}{m.extra[key]}")
    if stats.n_tokens != n_tokens:
        raise ValueError(f"KVStats saw {stats.n_tokens} tokens of {n_tokens}")
    lines += stats.lines()
    return lines


class KVStats:
    """`summary`'s statistics accumulated over consecutive token ranges (float64 sums per
    (layer, K/V, channel), each shifted by the channel's first value so that a constant
    channel has variance exactly 0); memory: a few arrays of L * 2 * H * D, plus one range
    in float64 at a time (`BLOCK_ELEMENTS` at most)."""

    BLOCK_ELEMENTS = 1 << 22

    def __init__(self, meta: KVMeta) -> None:
        shape = (meta.n_layers, 2, meta.n_kv_heads * meta.head_dim)
        z = lambda: np.zeros(shape)  # noqa: E731
        self.n_tokens = 0
        self._x_ref = self._y_ref = self._y_first = self._y_last = None
        self._sx, self._sxx, self._amax = z(), z(), z()  # all tokens, shifted by token 0
        self._sy, self._syy, self._pyy = z(), z(), z()  # tokens >= 1, shifted by token 1
        self._sd, self._sdd = z(), z()  # neighbour differences of tokens >= 1

    def add(self, kv: torch.Tensor) -> None:
        """The next token range [L, 2, t, H, D] (any float dtype)."""
        L, _, n, H, D = kv.shape
        step = max(1, self.BLOCK_ELEMENTS // max(1, L * 2 * H * D))
        for i in range(0, n, step):
            self._add(kv[:, :, i : i + step].to(torch.float64).numpy().reshape(L, 2, -1, H * D))

    def _add(self, x: np.ndarray) -> None:
        if self._x_ref is None:
            self._x_ref = x[:, :, 0].copy()
        xs = x - self._x_ref[:, :, None]
        self._sx += xs.sum(2)
        self._sxx += np.einsum("lktc,lktc->lkc", xs, xs)
        np.maximum(self._amax, np.abs(x).max(2), out=self._amax)
        y = x[:, :, 1:] if self.n_tokens == 0 else x
        self.n_tokens += x.shape[2]
        if y.shape[2] == 0:
            return
        if self._y_ref is None:
            self._y_ref = y[:, :, 0].copy()
            self._y_first = np.zeros_like(self._y_ref)
        ys = y - self._y_ref[:, :, None]
        self._sy += ys.sum(2)
        self._syy += np.einsum("lktc,lktc->lkc", ys, ys)
        if self._y_last is not None:  # the pair across the boundary with the previous range
            self._pyy += self._y_last * ys[:, :, 0]
            d = y[:, :, 0] - self._y_last_raw
            self._sd += d
            self._sdd += d * d
        self._pyy += np.einsum("lktc,lktc->lkc", ys[:, :, 1:], ys[:, :, :-1])
        d = np.diff(y, axis=2)
        self._sd += d.sum(2)
        self._sdd += np.einsum("lktc,lktc->lkc", d, d)
        self._y_last, self._y_last_raw = ys[:, :, -1].copy(), y[:, :, -1].copy()

    def lines(self) -> list[str]:
        """The K and V lines of `summary` (std, absmax, mean; neighbour-token correlation)."""
        n = self.n_tokens
        lines = []
        if n == 0:
            return lines
        for idx, name in ((0, "K"), (1, "V")):
            m_c = self._sx[:, idx] / n  # per channel, shifted
            m2_c = self._sxx[:, idx] - n * m_c**2  # sum of squared deviations per channel
            mean_c = m_c + self._x_ref[:, idx]
            per_layer = m2_c.shape[1] * n
            layer_mean = mean_c.mean(1)
            m2_layer = m2_c.sum(1) + n * ((mean_c - layer_mean[:, None]) ** 2).sum(1)
            std = np.sqrt(np.maximum(m2_layer, 0) / per_layer)
            amax = self._amax[:, idx].max(1)
            lines.append(
                f"{name} std/layer:  {std.min():.3g} .. {std.max():.3g}   "
                f"absmax/layer: {amax.min():.3g} .. {amax.max():.3g}   "
                f"mean: {float(layer_mean.mean()):.3g}"
            )
            if n > 3:
                ny = n - 1
                my = self._sy[:, idx] / ny
                var = np.maximum(self._syy[:, idx] / ny - my**2, 0.0)
                pairs = (
                    self._pyy[:, idx]
                    - my * (self._sy[:, idx] - self._y_last[:, idx])
                    - my * (self._sy[:, idx] - self._y_first[:, idx])
                    + (ny - 1) * my**2
                )
                rho = (pairs / (ny - 1)) / np.maximum(var, 1e-12)
                count = var.size * ny
                all_mean = (self._sy[:, idx] + ny * self._y_ref[:, idx]).sum() / count
                dev = (my + self._y_ref[:, idx]) - all_mean
                y_std = np.sqrt((var.sum() * ny + ny * (dev**2).sum()) / count)
                nd = var.size * (ny - 1)
                d_mean = self._sd[:, idx].sum() / nd
                d_std = np.sqrt(max(self._sdd[:, idx].sum() / nd - d_mean**2, 0.0))
                ratio = d_std / max(y_std, 1e-12)
                lines.append(
                    f"{name} neighbour-token correlation: {float(rho[var > 0].mean()):.3f} "
                    f"(mean over channels; delta std / value std {float(ratio):.3f})"
                )
        return lines
