"""SYNTHETIC KV caches with statistics fitted from a real cache, for shapes no CPU can prefill.

What is fitted, per (layer, K/V, kv_head, channel) of a real cache: the mean, the standard
deviation and the lag-1 token-to-token correlation rho (the locality CacheGen's delta coding
exploits). Position 0 is left out of the fit: it is the attention sink and unlike the rest.

What is generated: per channel an AR(1) Gaussian process
``x_t = mean + std * z_t``, ``z_t = rho * z_(t-1) + sqrt(1 - rho^2) * e_t`` with e_t ~ N(0, 1),
so each channel keeps its scale and its neighbour correlation. Not modelled: correlation
across channels or heads, heavy tails, the attention sink, RoPE's position pattern. rho is
bounded to [-0.99, 0.99] so the process stays stationary.

A target shape other than the fitted one (e.g. Llama-3.1-70B: 80 layers x 8 KV heads x 128
from SmolLM2's 30 x 3 x 64) takes its statistics by relative position: target layer l uses the
source layer at the same relative depth, head h uses source head h mod H_src, channel d uses the
source channel at the same relative position (so rotate-half RoPE pairs stay pairs).

Tokens are produced chunk by chunk (`SyntheticGenerator.chunks`): a Llama-70B-shaped
100K-token cache (65 GB in fp32) never has to be in memory at once; `kvcast kv capture`
(`kvcast.kv.sources.capture_to_file`) writes the chunks to the file as they come. The noise is drawn in fixed
blocks of 64 tokens seeded from (seed, block), so the output does not depend on the chunk size.
Everything made here has ``synthetic=True`` and a model id starting with ``synthetic:``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import torch

from kvcast.errors import InputError
from kvcast.kv.cache import KVCache, KVMeta, dtype_name

# name -> (layers, kv_heads, head_dim); public configs of these models
PRESETS: dict[str, tuple[int, int, int]] = {
    "Llama-3.1-70B": (80, 8, 128),
    "Llama-3.1-8B": (32, 8, 128),
    "Llama-2-7B": (32, 32, 128),
    "Mistral-7B": (32, 8, 128),
    "Qwen2.5-7B": (28, 4, 128),
    "SmolLM2-135M": (30, 3, 64),
}
RHO_BOUND = 0.99
NOISE_BLOCK = 64
MIN_FIT_TOKENS = 16


@dataclass
class FittedStats:
    """Per (layer, K/V, kv_head, channel) statistics of a real cache; each [L, 2, H, D]."""

    mean: torch.Tensor
    std: torch.Tensor
    rho: torch.Tensor
    fitted_from: str  # label of the real cache
    fit_tokens: int


def fit(cache: KVCache, *, skip: int = 1, allow_synthetic: bool = False) -> FittedStats:
    """Fit mean, std and lag-1 correlation per channel from a real cache (tokens >= `skip`).

    `allow_synthetic` is for checking the generator (re-fitting what it made), never for
    making synthetic data from synthetic data."""
    if cache.meta.synthetic and not allow_synthetic:
        raise InputError(f"{cache.meta.label()}: fit synthetic statistics from a real cache only")
    x = cache.kv[:, :, skip:].double()  # [L, 2, T, H, D]
    n = x.shape[2]
    if n < MIN_FIT_TOKENS:
        raise InputError(
            f"{cache.meta.label()}: {cache.n_tokens} tokens are too few to fit from "
            f"(need at least {MIN_FIT_TOKENS + skip})"
        )
    mean = x.mean(dim=2)
    c = x - mean[:, :, None]
    var = c.pow(2).mean(dim=2)
    cov1 = (c[:, :, 1:] * c[:, :, :-1]).mean(dim=2)
    rho = torch.where(var > 0, cov1 / var.clamp_min(1e-300), torch.zeros_like(var))
    return FittedStats(
        mean=mean.float(),
        std=var.sqrt().float(),
        rho=rho.clamp(-RHO_BOUND, RHO_BOUND).float(),
        fitted_from=cache.meta.label(),
        fit_tokens=n,
    )


def parse_shape(spec: str) -> tuple[str, tuple[int, int, int]]:
    """A preset name (case-insensitive) or ``LxHxD`` -> (display name, (layers, heads, dim))."""
    for name, shape in PRESETS.items():
        if spec.lower() == name.lower():
            return name, shape
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", spec.strip().lower())
    if m:
        shape = tuple(int(g) for g in m.groups())
        if min(shape) > 0:
            return spec.lower(), shape  # type: ignore[return-value]
    raise InputError(
        f"synthetic shape {spec!r}: expected a preset ({', '.join(PRESETS)}) or "
        "LAYERSxKVHEADSxHEADDIM such as 80x8x128"
    )


class SyntheticGenerator:
    """Draws SYNTHETIC caches of a target shape from `FittedStats` (see the module docstring)."""

    def __init__(
        self,
        stats: FittedStats,
        shape: tuple[int, int, int],
        *,
        name: str,
        seed: int = 0,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        self.n_layers, self.n_kv_heads, self.head_dim = shape
        self.name, self.seed, self.dtype, self.stats = name, seed, dtype, stats
        L_src, _, H_src, D_src = stats.mean.shape
        li = ((torch.arange(self.n_layers) + 0.5) * L_src / self.n_layers).long()
        hi = torch.arange(self.n_kv_heads) % H_src
        di = ((torch.arange(self.head_dim) + 0.5) * D_src / self.head_dim).long()

        def pick(t: torch.Tensor) -> torch.Tensor:  # [L_src, 2, H_src, D_src] -> [N] flattened
            return t[li][:, :, hi][:, :, :, di].reshape(-1).contiguous()

        self._mean, self._std, self._rho = (
            pick(t).numpy() for t in (stats.mean, stats.std, stats.rho)
        )
        self._innov = np.sqrt(1 - self._rho.astype(np.float64) ** 2).astype(np.float32)

    @property
    def model_id(self) -> str:
        return f"synthetic:{self.name}"

    def meta(self, n_tokens: int, extra: dict[str, str] | None = None) -> KVMeta:
        info = {
            "synthetic": "SYNTHETIC: generated, not a model's activations",
            "generator": "AR(1) Gaussian per (layer, K/V, head, channel)",
            "fitted_from": self.stats.fitted_from,
            "fit_tokens": str(self.stats.fit_tokens),
            "seed": str(self.seed),
        }
        return KVMeta(
            model_id=self.model_id,
            source="synthetic",
            dtype=dtype_name(self.dtype),
            n_layers=self.n_layers,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            token_ids=[],
            synthetic=True,
            extra={**info, **(extra or {})},
        )

    def _noise(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, block])
        return rng.standard_normal((NOISE_BLOCK, self._mean.size), dtype=np.float32)

    def chunks(self, n_tokens: int, chunk_tokens: int = 1500) -> Iterator[KVCache]:
        """Consecutive chunks of at most `chunk_tokens` covering tokens 0..n_tokens-1."""
        if n_tokens <= 0 or chunk_tokens <= 0:
            raise InputError(
                f"synthetic: tokens ({n_tokens}) and chunk size ({chunk_tokens}) must be > 0"
            )
        z = np.random.default_rng([self.seed]).standard_normal(self._mean.size, dtype=np.float32)
        blocks = self.n_layers * 2  # (layer, K/V) blocks, each H*D channels
        hd = self.n_kv_heads * self.head_dim
        noise, noise_block = None, -1
        for start in range(0, n_tokens, chunk_tokens):
            count = min(chunk_tokens, n_tokens - start)
            out = np.empty(blocks * count * hd, dtype=np.float32)  # [L*2, T, H*D]
            done = 0
            while done < count:  # runs of tokens that share one noise block
                t = start + done
                if t // NOISE_BLOCK != noise_block:
                    noise_block = t // NOISE_BLOCK
                    noise = self._noise(noise_block)
                off = t % NOISE_BLOCK
                run = min(count - done, NOISE_BLOCK - off)
                _ar1_run(
                    z,
                    self._rho,
                    self._innov,
                    noise[off : off + run],
                    self._mean,  # type: ignore[index]
                    self._std,
                    out,
                    t,
                    done,
                    count,
                    hd,
                )
                done += run
            kv = torch.from_numpy(out).view(self.n_layers, 2, count, self.n_kv_heads, self.head_dim)
            yield KVCache(kv=kv.to(self.dtype), meta=self.meta(count, {"first_token": str(start)}))

    def stream_chunk_tokens(self, n_tokens: int, max_elements: int = 1 << 24) -> int:
        """Tokens per chunk when streaming `n_tokens` to a file: one chunk of at most
        `max_elements` (64 MiB in float32) and at least one token."""
        return max(1, min(n_tokens, max_elements // self._mean.size))

    def stream_peak_bytes(self, chunk_tokens: int, out_dtype: torch.dtype | None = None) -> int:
        """Estimated memory of streaming chunks of `chunk_tokens` to a file: the float32 chunk,
        its `dtype` copy (and an `out_dtype` cast), the noise block, the summary's float64
        blocks (`KVStats`) and the interpreter with torch and numba (~0.5 GiB)."""
        n = chunk_tokens * self._mean.size
        cast = 0 if out_dtype in (None, self.dtype) else torch.finfo(out_dtype).bits // 8
        per_chunk = n * (4 + torch.finfo(self.dtype).bits // 8 + cast)
        return per_chunk + NOISE_BLOCK * self._mean.size * 4 + 4 * 8 * (1 << 22) + (1 << 29)

    def check_stream_fits(
        self,
        n_tokens: int,
        chunk_tokens: int,
        *,
        out_dtype: torch.dtype | None = None,
        path: os.PathLike | str | None = None,
    ) -> None:
        """InputError with the estimate when streaming would not fit in half the machine's RAM,
        or (given the output `path`) the file would not fit on its disk."""
        need = self.stream_peak_bytes(chunk_tokens, out_dtype)
        avail = _physical_memory()
        if avail and need > avail // 2:
            raise InputError(
                f"{self.model_id}: streaming {chunk_tokens} tokens per chunk needs "
                f"~{need / 2**30:.1f} GiB in memory (this machine has {avail / 2**30:.1f} GiB)"
            )
        if path is not None:
            size = n_tokens * self._mean.size * torch.finfo(out_dtype or self.dtype).bits // 8
            folder = Path(path).resolve().parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            free = shutil.disk_usage(folder).free
            if size > free:
                raise InputError(
                    f"{self.model_id}: {n_tokens} tokens make a {size / 1e9:.1f} GB file; "
                    f"{folder} has {free / 1e9:.1f} GB free"
                )

    def generate(self, n_tokens: int) -> KVCache:
        """The whole cache at once; refuses sizes that would not fit in half the machine's RAM."""
        need = n_tokens * self._mean.size * (4 + torch.finfo(self.dtype).bits // 8)
        avail = _physical_memory()
        if avail and need > avail // 2:
            raise InputError(
                f"{self.model_id}: {n_tokens} tokens need ~{need / 2**30:.1f} GiB in memory "
                f"(this machine has {avail / 2**30:.1f} GiB); use SyntheticGenerator.chunks() "
                "to stream it, or fewer tokens"
            )
        parts = [c.kv for c in self.chunks(n_tokens, chunk_tokens=max(1, min(n_tokens, 4096)))]
        return KVCache(kv=torch.cat(parts, dim=2), meta=self.meta(n_tokens))


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@numba.njit(cache=True, nogil=True)
def _ar1_run(z, rho, innov, noise, mean, std, out, t_abs, i0, count, hd):  # type: ignore[no-untyped-def]
    """Advance the AR(1) state over `noise.shape[0]` tokens, writing mean + std * z into `out`
    laid out [L*2, count, H*D] at token rows i0...; token 0 of the cache keeps z as drawn."""
    n_tok = noise.shape[0]
    blocks = z.shape[0] // hd
    for b in range(blocks):
        base = b * hd
        for i in range(n_tok):
            row = (b * count + i0 + i) * hd
            first = t_abs + i == 0
            for c in range(hd):
                n = base + c
                if not first:
                    z[n] = rho[n] * z[n] + innov[n] * noise[i, n]
                out[row + c] = mean[n] + std[n] * z[n]
