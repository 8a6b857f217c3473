"""The runnable-model interface every real KV source implements (see `kvcast.kv.sources`).

One class, so that capture, the quality measurement and the profiler treat SmolLM2 (through
transformers) and stories260K (through kvcast's own forward pass) alike: tokenize, run the model
on new tokens on top of an existing cache in the contract layout, read back logits and the cache.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from kvcast.errors import InputError
from kvcast.kv.cache import KVCache, KVMeta, dtype_name
from kvcast.kv.query_gains import QueryEnergy


class LoadedModel(ABC):
    """A real causal LM ready to run; subclasses set the attributes and implement `_prefill`."""

    model_id: str  # e.g. "SmolLM2-135M-Instruct"
    source: str  # KVMeta.source of the caches it produces
    n_layers: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int  # tokens: cache + new tokens may not exceed it
    kv_dtype: torch.dtype = torch.float32
    prefill_chunk: int = 1024  # capture runs long inputs in pieces of this many tokens
    n_heads: int  # query heads
    rope_pairs: str = "half"  # channel pairs RoPE rotates together (kvcast.kv.query_gains)
    _queries: QueryEnergy | None = None  # set while `recording_queries` is active

    # -- text ---------------------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as the model's own tokenizer gives them (no chat template)."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""

    # -- running ------------------------------------------------------------------------------
    @abstractmethod
    def _prefill(
        self, ids: torch.Tensor, past_kv: torch.Tensor | None, logits_to_keep: int, dropped: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked inputs: ids [T] int64; past_kv [L, 2, T0, H, D] or None; the new tokens'
        positions start at T0 + dropped."""

    def prefill(
        self,
        token_ids: Sequence[int] | torch.Tensor,
        past_kv: torch.Tensor | None = None,
        *,
        logits_to_keep: int = 0,
        dropped: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model on `token_ids` after the tokens cached in `past_kv`.

        Returns ``(logits [T, vocab] float32, kv [L, 2, T0 + T, H, D])``: the logits of each new
        token (only the last `logits_to_keep` rows when it is > 0) and the whole cache after
        them. `past_kv` may be any float dtype (e.g. a decoded fp16 chunk); it is cast to the
        model's dtype. Positions continue from T0, as if the model had prefilled everything;
        `dropped` > 0 says the cache once held that many more tokens (an H2O-reduced cache,
        `kvcast.kv.h2o`): positions continue from T0 + dropped, where the full context ended.
        """
        ids = self._check_ids(token_ids)
        if dropped < 0:
            raise InputError(f"{self.model_id}: dropped must be >= 0, got {dropped}")
        if past_kv is not None:
            past_kv = self._check_past(past_kv)
        self._check_fits(
            ids.numel() + dropped + (0 if past_kv is None else past_kv.shape[2]), " (cache + new)"
        )
        with torch.inference_mode():
            return self._prefill(ids, past_kv, logits_to_keep, dropped)

    def _check_fits(self, tokens: int, what: str = "") -> None:
        """Refuse `tokens` positions beyond the model's context (what they are: `what`)."""
        if tokens > self.max_context:
            raise InputError(
                f"{self.model_id}: {tokens} tokens{what} exceed the model's context of "
                f"{self.max_context} tokens"
            )

    @contextmanager
    def recording_queries(self) -> Iterator[QueryEnergy]:
        """Within the block, every prefill adds its queries' energy to the yielded record
        (what `capture` uses for the key gains of `k_gain: query` levels)."""
        rec = QueryEnergy(self.n_layers, self.n_heads, self.head_dim, self.rope_pairs)
        self._queries = rec
        undo = self._watch_queries()
        try:
            yield rec
        finally:
            self._queries = None
            undo()

    def _watch_queries(self):  # noqa: ANN202 - returns the callable that stops watching
        """Start feeding `self._queries` from prefills; models that compute queries in their
        own forward pass call `self._queries.add` there and need nothing here."""
        return lambda: None

    def forward(
        self, token_ids: Sequence[int] | torch.Tensor, past_kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [T, vocab] of `token_ids` after `past_kv` (contract name for `prefill`)."""
        return self.prefill(token_ids, past_kv)[0]

    def greedy(
        self,
        token_ids: Sequence[int],
        n_new: int,
        past_kv: torch.Tensor | None = None,
        *,
        dropped: int = 0,
    ) -> list[int]:
        """`n_new` argmax-decoded token ids continuing `token_ids` (after `past_kv`; `dropped`
        as in `prefill`)."""
        out: list[int] = []
        logits, kv = self.prefill(token_ids, past_kv, logits_to_keep=1, dropped=dropped)
        for _ in range(n_new):
            nxt = int(logits[-1].argmax())
            out.append(nxt)
            if len(out) == n_new:
                break
            logits, kv = self.prefill([nxt], kv, logits_to_keep=1, dropped=dropped)
        return out

    def capture(self, token_ids: Sequence[int], *, extra: dict[str, str] | None = None) -> KVCache:
        """The KV cache of `token_ids`, prefilled in pieces of `prefill_chunk` tokens."""
        ids = list(token_ids)
        if not ids:
            raise InputError(f"{self.model_id}: nothing to capture (0 tokens)")
        self._check_fits(len(ids))
        kv: torch.Tensor | None = None
        with self.recording_queries() as queries:
            for start in range(0, len(ids), self.prefill_chunk):
                _, kv = self.prefill(ids[start : start + self.prefill_chunk], kv, logits_to_keep=1)
        assert kv is not None
        meta = self.kv_meta(ids, dtype_name(kv.dtype), extra or {})
        gains = queries.key_gains(self.n_kv_heads) if queries.complete else None
        return KVCache(kv=kv, meta=meta, key_gains=gains)

    def kv_meta(self, ids: list[int], dtype: str, extra: dict[str, str]) -> KVMeta:
        return KVMeta(
            model_id=self.model_id,
            source=self.source,
            dtype=dtype,
            n_layers=self.n_layers,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            token_ids=list(ids),
            synthetic=False,
            extra=dict(extra),
        )

    def attention_received(self, token_ids: Sequence[int], piece: int = 256) -> torch.Tensor:
        """Accumulated attention each token receives, per layer and KV head: ``[L, T, H]``, the
        softmax weights of every query of `token_ids` (all query heads of a KV head's group)
        summed per key (H2O's score, `kvcast.kv.h2o`). Models that cannot expose their
        attention weights raise."""
        raise InputError(f"{self.model_id}: this model source cannot report attention weights")

    # -- checks -------------------------------------------------------------------------------
    def _check_ids(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, dtype=torch.int64).reshape(-1)
        if ids.numel() == 0:
            raise InputError(f"{self.model_id}: prefill needs at least one token")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise InputError(
                f"{self.model_id}: token id {lo if lo < 0 else hi} is outside the vocabulary "
                f"0..{self.vocab_size - 1}"
            )
        return ids

    def _check_past(self, past_kv: torch.Tensor) -> torch.Tensor:
        want = (self.n_layers, 2, self.n_kv_heads, self.head_dim)
        shape = tuple(past_kv.shape)
        if past_kv.dim() != 5 or (shape[0], shape[1], shape[3], shape[4]) != want:
            raise InputError(
                f"{self.model_id}: past_kv has shape {shape}; expected "
                f"[{want[0]}, 2, tokens, {want[2]}, {want[3]}]"
            )
        if not past_kv.is_floating_point():
            raise InputError(
                f"{self.model_id}: past_kv must be a float tensor, got {past_kv.dtype}"
            )
        return past_kv.to(self.kv_dtype)
