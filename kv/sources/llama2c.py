"""llama2.c checkpoints (e.g. karpathy's stories260K) through kvcast's own pure-torch forward pass.

Formats (legacy llama2.c "v0", as written by karpathy/llama2.c):
- checkpoint: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len), then float32 arrays tok_emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
  rms_final, freq_cis_real, freq_cis_imag (and wcls when vocab_size < 0, i.e. unshared);
- tokenizer (``tok512.bin``): int32 max_token_length, then per vocab entry float32 score,
  int32 length, bytes.

The forward pass is Llama: RMSNorm (eps 1e-5), RoPE on **adjacent pairs** (2j, 2j+1) with
theta 10000 (not Hugging Face's rotate-half), GQA, SwiGLU, logits through the shared embedding.
Cached keys are post-RoPE, as in every other source. Greedy decoding from BOS + "Once upon a
time" reproduces the continuation karpathy documents for stories260K (tested).
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kvcast.errors import InputError
from kvcast.kv.sources.base import LoadedModel

BOS_ID = 1
EOS_ID = 2
_HEADER = struct.Struct("<7i")


@dataclass(frozen=True)
class Llama2cConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def read_checkpoint(path: Path) -> tuple[Llama2cConfig, dict[str, torch.Tensor]]:
    """Config and weights of a llama2.c v0 checkpoint; every size is checked against the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such llama2.c checkpoint")
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise InputError(f"{path}: {len(data)} bytes is too short for a llama2.c checkpoint")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = _HEADER.unpack_from(data)
    if min(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len) <= 0 or (
        dim % n_heads or n_heads % n_kv or (dim // n_heads) % 2
    ):
        raise InputError(
            f"{path}: not a llama2.c checkpoint (header dim={dim} hidden={hidden} "
            f"layers={n_layers} heads={n_heads} kv_heads={n_kv} vocab={vocab} seq_len={seq_len})"
        )
    cfg = Llama2cConfig(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len, vocab > 0)
    hd, kv_dim, L = cfg.head_dim, n_kv * (dim // n_heads), n_layers
    shapes = [
        ("tok_emb", (cfg.vocab_size, dim)),
        ("rms_att", (L, dim)),
        ("wq", (L, dim, dim)),
        ("wk", (L, kv_dim, dim)),
        ("wv", (L, kv_dim, dim)),
        ("wo", (L, dim, dim)),
        ("rms_ffn", (L, dim)),
        ("w1", (L, hidden, dim)),
        ("w2", (L, dim, hidden)),
        ("w3", (L, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (seq_len, hd // 2)),
        ("freq_cis_imag", (seq_len, hd // 2)),
    ]
    if not cfg.shared_classifier:
        shapes.append(("wcls", (cfg.vocab_size, dim)))
    n_floats = sum(int(np.prod(s)) for _, s in shapes)
    expected = _HEADER.size + 4 * n_floats
    if len(data) != expected:
        raise InputError(
            f"{path}: {len(data):,} bytes, but its header (dim={dim}, layers={n_layers}, "
            f"vocab={vocab}) implies {expected:,}; truncated or not a llama2.c v0 checkpoint"
        )
    flat = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=_HEADER.size).copy())
    weights, pos = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        weights[name] = flat[pos : pos + n].view(shape)
        pos += n
    if not bool(torch.isfinite(flat).all()):
        raise InputError(f"{path}: checkpoint holds non-finite weights")
    return cfg, weights


class Llama2cTokenizer:
    """llama2.c's BPE tokenizer (run.c `encode`/`decode`): dummy prefix, byte fallback, merges
    by highest score (leftmost on ties), applied with a heap so long texts stay fast."""

    def __init__(self, path: Path, vocab_size: int) -> None:
        if not path.is_file():
            raise InputError(f"{path}: no such llama2.c tokenizer file (e.g. tok512.bin)")
        data = path.read_bytes()
        pieces: list[bytes] = []
        scores: list[float] = []
        try:
            (self.max_token_length,) = struct.unpack_from("<i", data, 0)
            pos = 4
            for _ in range(vocab_size):
                score, n = struct.unpack_from("<fi", data, pos)
                pos += 8
                if n < 0 or pos + n > len(data):
                    raise struct.error(f"entry length {n} at byte {pos - 4}")
                pieces.append(data[pos : pos + n])
                scores.append(score)
                pos += n
        except struct.error as exc:
            raise InputError(
                f"{path}: not a llama2.c tokenizer for a {vocab_size}-token vocabulary ({exc})"
            ) from exc
        if pos != len(data):
            raise InputError(
                f"{path}: {len(data) - pos} bytes left after {vocab_size} entries; this tokenizer "
                "does not belong to the checkpoint's vocabulary"
            )
        self.pieces, self.scores = pieces, scores
        self.vocab: dict[bytes, int] = {}
        for i, p in enumerate(pieces):
            self.vocab.setdefault(p, i)
        self.space_id = self.vocab.get(b" ")

    def encode(self, text: str) -> list[int]:
        """Ids of `text` (no BOS), with the dummy-prefix space run.c adds to non-empty text."""
        if not text:
            return []
        ids: list[int] = [] if self.space_id is None else [self.space_id]
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.vocab:
                ids.append(self.vocab[b])
            else:
                ids.extend(byte + 3 for byte in b)
        return self._merge(ids)

    def _merge(self, ids: list[int]) -> list[int]:
        n = len(ids)
        toks = [self.pieces[i] for i in ids]
        cur = list(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap: list[tuple[float, int, bytes, bytes]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if j < n:
                merged = self.vocab.get(toks[i] + toks[j])
                if merged is not None:
                    heapq.heappush(heap, (-self.scores[merged], i, toks[i], toks[j]))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, left, right = heapq.heappop(heap)
            j = nxt[i] if alive[i] else n
            if j >= n or toks[i] != left or toks[j] != right:
                continue  # stale entry
            toks[i] = left + right
            cur[i] = self.vocab[toks[i]]
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        return [cur[i] for i in range(n) if alive[i]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`: BOS/EOS dropped, byte tokens joined, the dummy-prefix space removed."""
        out = bytearray()
        first = True
        for i in ids:
            if i in (BOS_ID, EOS_ID):
                first = True
                continue
            piece = self.pieces[i]
            if piece.startswith(b"<0x") and piece.endswith(b">") and len(piece) == 6:
                piece = bytes([int(piece[3:5], 16)])
            elif first and piece.startswith(b" "):
                piece = piece[1:]
            first = False
            out += piece
        return out.decode("utf-8", errors="replace")


class Llama2cModel(LoadedModel):
    """A llama2.c checkpoint run with kvcast's pure-torch Llama forward pass."""

    source = "llama2c"
    prefill_chunk = 512
    rope_pairs = "interleaved"

    def __init__(self, checkpoint: Path, tokenizer: Path | None = None) -> None:
        checkpoint = Path(checkpoint)
        self.cfg, self.w = read_checkpoint(checkpoint)
        tok_path = Path(tokenizer) if tokenizer else checkpoint.with_name("tok512.bin")
        if tokenizer is None and not tok_path.is_file():
            raise InputError(
                f"{checkpoint}: no tokenizer beside it ({tok_path.name} expected); pass --tokenizer"
            )
        self.tokenizer = Llama2cTokenizer(tok_path, self.cfg.vocab_size)
        self.model_id = checkpoint.stem
        self.n_layers = self.cfg.n_layers
        self.n_kv_heads = self.cfg.n_kv_heads
        self.n_heads = self.cfg.n_heads
        self.head_dim = self.cfg.head_dim
        self.vocab_size = self.cfg.vocab_size
        self.max_context = self.cfg.seq_len
        self.bos_id: int | None = BOS_ID
        hd = self.head_dim
        self._inv_freq = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotate adjacent pairs (2j, 2j+1) of x [T, heads, hd] by pos * theta^(-2j/hd)."""
        ang = pos.to(torch.float64)[:, None] * self._inv_freq[None, :]  # [T, hd/2]
        cos = ang.cos().to(x.dtype)[:, None, :]
        sin = ang.sin().to(x.dtype)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def _prefill(
        self, ids: torch.Tensor, past_kv: torch.Tensor | None, logits_to_keep: int, dropped: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, w = self.cfg, self.w
        T = ids.numel()
        T0 = 0 if past_kv is None else past_kv.shape[2]
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        index = torch.arange(T0, T0 + T)
        pos = index + dropped
        # query i (cache slot T0 + i) sees cache slots 0 .. T0 + i
        mask = torch.arange(T0 + T)[None, :] <= index[:, None]
        x = w["tok_emb"][ids]
        layers = []
        for layer in range(cfg.n_layers):
            xb = _rmsnorm(x, w["rms_att"][layer])
            q = self._rope((xb @ w["wq"][layer].T).view(T, nh, hd), pos)
            if self._queries is not None:
                self._queries.add(layer, q)
            k = self._rope((xb @ w["wk"][layer].T).view(T, nkv, hd), pos)
            v = (xb @ w["wv"][layer].T).view(T, nkv, hd)
            if past_kv is not None:
                k = torch.cat([past_kv[layer, 0], k], dim=0)
                v = torch.cat([past_kv[layer, 1], v], dim=0)
            layers.append(torch.stack([k, v]))
            att = F.scaled_dot_product_attention(
                q.transpose(0, 1),
                k.transpose(0, 1).repeat_interleave(nh // nkv, dim=0),
                v.transpose(0, 1).repeat_interleave(nh // nkv, dim=0),
                attn_mask=mask,
            )  # [nh, T, hd]
            x = x + att.transpose(0, 1).reshape(T, nh * hd) @ w["wo"][layer].T
            xb = _rmsnorm(x, w["rms_ffn"][layer])
            x = x + (F.silu(xb @ w["w1"][layer].T) * (xb @ w["w3"][layer].T)) @ w["w2"][layer].T
        if logits_to_keep > 0:
            x = x[-logits_to_keep:]
        x = _rmsnorm(x, w["rms_final"])
        logits = x @ (w["tok_emb"] if cfg.shared_classifier else w["wcls"]).T
        return logits, torch.stack(layers)


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
